"""Putting the kernel's page cache in a known state before a measurement."""

from __future__ import annotations

import os
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop(paths: list[Path] = ()) -> str:
    """Drop clean cached pages: everywhere when we may (root), else those of `paths`.

    Dropping everywhere also empties the emulator's own files from the cache, so a cold
    read really goes to the disk under the store. Returns the method used, for the record.
    """
    os.sync()
    if can_drop():
        DROP_CACHES.write_text("3\n")
        return "drop_caches"
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


def warm(paths: list[Path]) -> None:
    """Read every file once so that its pages are cached."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(4 * 2**20):
                pass
