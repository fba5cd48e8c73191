"""Local file helpers shared by downloads, uploads and output mounts.

Downloads and uploads reach files below their folder through opened folders, one
component at a time, and never follow a symbolic link on the way: a link planted in the
tree (before or during a transfer) cannot send a write outside DEST or a read outside SRC.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file must not hang the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 2**20


class InTheWay(OSError):
    """A symbolic link, or something that is not a folder, where a folder must be."""

    def __init__(self, where: str, is_link: bool):
        what = "is a symbolic link (links are never followed)" if is_link else "is not a folder"
        super().__init__(errno.ENOTDIR, f"{where} {what}")
        self.where, self.is_link = where, is_link


def md5_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").digest()


def md5_of_fd(fd: int) -> bytes:
    """MD5 of the whole file open at FD (whatever its offset, which is left alone)."""
    digest, offset = hashlib.md5(), 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.digest()


def fd_path(fd: int) -> Path:
    """A path naming the file open at FD itself. Storage clients take paths; this one
    cannot be redirected by a rename or a link planted after the file was opened."""
    return Path(f"/proc/self/fd/{fd}")


def open_top(folder: Path) -> int:
    """FOLDER (as the user named it, links in its own path followed) opened as the root
    below which nothing is followed."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_folder(top: int, parts: list[str], *, create: bool = False) -> int:
    """A new fd of the folder PARTS below the open folder TOP, following no link; missing
    folders are made if CREATE. Raises InTheWay naming the first component in the way."""
    fd = os.dup(top)
    try:
        for depth, name in enumerate(parts):
            child = _open_child(fd, name, create, "/".join(parts[: depth + 1]))
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child(fd: int, name: str, create: bool, where: str) -> int:
    try:
        try:
            return os.open(name, FOLDER_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):  # made by another worker meanwhile
            os.mkdir(name, 0o777, dir_fd=fd)
        return os.open(name, FOLDER_FLAGS, dir_fd=fd)
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        raise InTheWay(where, is_link) from None


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def some_names(names: list[str], shown: int = 5) -> str:
    """A few of NAMES for a one-line message, and how many more there are."""
    listed = ", ".join(sorted(names)[:shown])
    return f"{listed} and {len(names) - shown} more" if len(names) > shown else listed
