"""Local file helpers shared by downloads, uploads and output mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

PARTIAL_SUFFIX = ".amlfs-part"


def md5_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").digest()


def partial_name(target: Path) -> Path:
    """Where a file is written before it is checked and renamed to TARGET: hidden, beside
    it (the rename stays within one filesystem), and recognisably ours."""
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def some_names(names: list[str], shown: int = 5) -> str:
    """A few of NAMES for a one-line message, and how many more there are."""
    listed = ", ".join(sorted(names)[:shown])
    return f"{listed} and {len(names) - shown} more" if len(names) > shown else listed
