"""Locks the kernel releases when their holder dies: how amlfs tells a live daemon or
session from a dead one (a pid can be reused after a reboot; a lock cannot outlive its
process), and how it keeps two processes from owning one thing.

These are open file description locks (fcntl F_OFD_SETLK): they belong to one open of
the file, so a second open in the same process conflicts too, and they are not flock()
locks, which the check could only test by taking them. `held()` asks the kernel
(F_OFD_GETLK) without taking anything, so checking never makes a holder fail.

A lock file may be removed only by the process holding its lock; whoever takes a lock
checks afterwards that the file it locked is still the one at the path (see `hold`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from pathlib import Path


class _Flock(ctypes.Structure):
    """struct flock (fcntl(2)); ctypes lays it out as the C compiler does."""

    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


_WHOLE_FILE = bytes(_Flock(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))  # l_pid must be 0 for OFD


class Held:
    """A lock this process holds until `release()` or its end (the kernel releases it
    then, also on SIGKILL). Dropping the object does not release it."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def write(self, text: str) -> None:
        """Replace the file's content (who holds it, for those it keeps out)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self, remove: bool = True) -> None:
        """Release the lock; REMOVE: and the file first, while it is still held."""
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def hold(path: Path) -> Held | None:
    """Take PATH's lock (creating the file), or None if someone holds it. Never waits."""
    while True:
        # O_CLOEXEC: a child of the holder (fusermount3, a job) must not keep it alive.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _WHOLE_FILE)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        # The previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else can find. Try again with the new one.
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return Held(path, fd)
        os.close(fd)


def held(path: Path) -> bool:
    """Whether some process (this one included) holds PATH's lock; a missing file is not
    held. Takes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        answer = _Flock.from_buffer_copy(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _WHOLE_FILE))
    finally:
        os.close(fd)
    return answer.l_type != fcntl.F_UNLCK


def read(path: Path) -> str:
    """What the holder wrote into PATH ("" if nothing, or no file)."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""
