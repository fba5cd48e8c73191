"""Block files written past the kernel's page cache (O_DIRECT), where the disk allows it.

A block fetched for a reader is already in the page cache once, as pages of the mounted
file. Written through the page cache, it would be there a second time, as pages of its
block file: memory the kernel must find (evicting something else) and fill, for bytes
that are read again only once the mount's own pages are gone. Written with O_DIRECT, the
disk takes the bytes from a buffer of ours instead, reused from write to write, and the
page cache keeps one copy. A later read of the block file goes to the disk, as it would
once memory was needed elsewhere.

O_DIRECT wants the buffer's address, the file offset and the length aligned: the bytes
are copied into a page-aligned buffer, the aligned part written directly, and a short
tail (the end of a file's last block) through the page cache. A filesystem that refuses
O_DIRECT (tmpfs on older kernels, some network filesystems) gets every write through
the page cache, as before; that is noticed once and remembered. O_DIRECT is set on the
file once it is created (Linux creates the file before an open with O_DIRECT fails).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

ALIGN = 4096  # a multiple of every logical block size O_DIRECT asks alignment to
SPARE_BUFFERS = 4  # aligned buffers kept for the next writes (writers run at once)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none


class DirectFiles:
    """Creates files that hold given bytes, past the page cache where it can."""

    def __init__(self, *, direct: bool = True):
        self.direct = direct and bool(O_DIRECT)
        self._spare: list[mmap.mmap] = []
        self._largest = 0  # the largest buffer asked for: every buffer is made this size
        self._lock = threading.Lock()

    def create(self, path: str, data: bytes) -> None:
        """Create PATH (it must not exist: FileExistsError) holding DATA. On failure the
        file may be left, partly written; the caller removes it."""
        view = memoryview(data)
        fd = os.open(path, CREATE_FLAGS, 0o600)
        try:
            # O_DIRECT is asked for once the file is ours: a filesystem that refuses it
            # refuses it here, not in an open that would have created the file already.
            direct = self.direct and len(view) >= ALIGN and self._go_direct(fd, path)
            if direct:
                direct = self._write_aligned(fd, path, view)
            _write_all(fd, view[_aligned(len(view)) if direct else 0 :], direct=False)
        finally:
            os.close(fd)

    def _go_direct(self, fd: int, path: str) -> bool:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self._refused(path, error)
            return False
        return True

    def _write_aligned(self, fd: int, path: str, view: memoryview) -> bool:
        """The aligned head of VIEW written directly, then O_DIRECT cleared for the tail.
        False if the disk refused the direct write (nothing written; the whole is left to
        write through the page cache)."""
        head = _aligned(len(view))
        with self._buffer(head) as buffer:
            buffer[:head] = view[:head]
            try:
                _write_all(fd, memoryview(buffer)[:head], direct=True)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self._refused(path, error)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                head = 0
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
        return head > 0

    def _refused(self, path: str, error: OSError) -> None:
        if self.direct:
            log.info("the disk under %s refuses O_DIRECT (%s); block files are written "
                     "through the page cache", os.path.dirname(path), error)  # fmt: skip
        self.direct = False

    @contextlib.contextmanager
    def _buffer(self, size: int) -> Iterator[mmap.mmap]:
        """A page-aligned buffer of at least SIZE bytes, returned to the spares after.
        Every buffer is made as large as the largest asked for (a whole block), so that
        a spare fits any write; smaller ones are not kept."""
        with self._lock:
            self._largest = max(self._largest, size)
            buffer = self._spare.pop() if self._spare else None
        if buffer is None or len(buffer) < size:
            buffer = mmap.mmap(-1, self._largest)
        try:
            yield buffer
        finally:
            with self._lock:
                if len(self._spare) < SPARE_BUFFERS and len(buffer) >= self._largest:
                    self._spare.append(buffer)
            # A buffer not kept is unmapped once nothing points into it (a failed write's
            # traceback may still, so it is not closed here).


def _aligned(length: int) -> int:
    return length - length % ALIGN


def _write_all(fd: int, view: memoryview, *, direct: bool) -> None:
    """Every byte of VIEW to FD. Bounded: each write takes at least one byte or raises. A
    direct write that took a part that is not aligned leaves the rest to the page cache."""
    while view:
        written = os.write(fd, view)
        view = view[written:]
        if direct and view and written % ALIGN:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
            direct = False
