"""Local file operations that every layer may use: copies made in the kernel, and the
folder syncs that make a new or renamed name durable. Storage (local-folder datastores),
downloads and output mounts share them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

BUFFER = 4 * 2**20
# copy_file_range cannot copy between these (another filesystem on older kernels, a
# special file): the bytes go through a buffer instead.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def copy_prefix(source: int, dest: int, length: int) -> None:
    """The first LENGTH bytes of the file open at SOURCE into DEST, at the same offsets:
    in the kernel where it can (no trip through Python; a reflink where the filesystem
    shares extents), else through a buffer. OSError(EIO) if SOURCE is shorter."""
    done, in_kernel = 0, True
    while done < length:
        if in_kernel:
            try:
                copied = os.copy_file_range(source, dest, length - done, done, done)
            except OSError as error:
                if error.errno not in _NO_KERNEL_COPY:
                    raise
                in_kernel = False
                continue
        else:
            chunk = os.pread(source, min(BUFFER, length - done), done)
            copied = os.pwrite(dest, chunk, done) if chunk else 0
        if copied == 0:
            raise OSError(errno.EIO, f"the source has {done} bytes, not {length}")
        done += copied


def fsync_folder(folder: Path | str) -> None:
    """Make the names in FOLDER (created, renamed or removed) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
