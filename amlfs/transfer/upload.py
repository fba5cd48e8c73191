"""`amlfs upload`: a local folder to a datastore, optionally registered as a version.

Each file's MD5 is computed before it is sent and stored with it, so that an identical
file at the destination is recognised without downloading it, and so that the version
registered from the upload pins MD5s.

Files are listed and read through opened folders without following a link: a link is
refused unless asked for, and never followed out of the folder being uploaded, also when
it is planted between the listing and the read.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amlfs.errors import AmlfsError, StorageError, UserError
from amlfs.registry import paths
from amlfs.registry.models import NewVersion, PinnedFile
from amlfs.storage import Store
from amlfs.transfer.files import (
    READ_FLAGS,
    InTheWay,
    md5_of_fd,
    open_folder,
    open_top,
    some_names,
)
from amlfs.transfer.parallel import run_parallel, with_retries

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class LocalFile:
    path: str  # where it goes: relative to the uploaded folder, '/'-separated
    root: Path  # the uploaded folder
    real: str  # where its bytes are below ROOT (another path for a followed link)
    size: int
    identity: tuple[int, int]  # device and inode as listed: the file read must be this one


@dataclass
class UploadReport:
    pinned: list[PinnedFile] = field(default_factory=list)  # paths relative to the target
    sent: int = 0
    identical: int = 0
    bytes_sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def local_files(src: Path, *, follow_links: bool = False) -> list[LocalFile]:
    """Every regular file below SRC, or a one-line UserError.

    A symbolic link is refused (all of them named) unless FOLLOW_LINKS; then a link whose
    target is inside SRC is uploaded as what it points to (a file, or a folder's files),
    and one pointing outside SRC, to nothing, or into a loop is still refused. FIFOs,
    sockets and devices are skipped.
    """
    src = src.expanduser().absolute()
    if not src.is_dir():
        raise UserError(f"{src} is not a folder" if src.exists() else f"{src} does not exist")
    top = open_top(src)
    try:
        walk = _Walk(src, top, follow_links)
        walk.folder(top, "", "", frozenset())
    finally:
        os.close(top)
    if walk.links and not follow_links:
        raise UserError(
            f"{len(walk.links)} symbolic link(s) in {src} ({some_names(walk.links)}): links"
            " are not uploaded; remove them, or pass --follow-links to upload what links"
            f" inside {src} point to"
        )
    if walk.links:
        raise UserError(
            f"{len(walk.links)} symbolic link(s) in {src} point outside it, to nothing or into"
            f" a loop ({some_names(walk.links)}); they are never followed"
        )
    if not walk.files:
        raise UserError(f"{src} holds no files to upload")
    return walk.files


class _Walk:
    """Lists a folder through opened folders, never following a link unasked; links it
    does not follow are gathered in LINKS."""

    def __init__(self, src: Path, top: int, follow_links: bool):
        self.src, self.top, self.follow_links = src, top, follow_links
        self.real_src = os.path.realpath(src)
        self.files: list[LocalFile] = []
        self.links: list[str] = []

    def folder(self, fd: int, path: str, real: str, ancestors: frozenset[tuple[int, int]]) -> None:
        """List the open folder FD, which goes at PATH and is at REAL below SRC."""
        st = os.fstat(fd)
        ancestors = ancestors | {(st.st_dev, st.st_ino)}
        with os.scandir(fd) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            at, real_at = paths.join(path, entry.name), paths.join(real, entry.name)
            if entry.is_symlink():
                if not self.follow_links:
                    self.links.append(at)
                else:
                    self.link(at, real_at, ancestors)
            elif entry.is_dir(follow_symlinks=False):
                self.subfolder(fd, entry.name, at, real_at, ancestors)
            elif entry.is_file(follow_symlinks=False):
                self.file(at, real_at, entry.stat(follow_symlinks=False))

    def subfolder(self, fd: int, name: str, at: str, real_at: str,
                  ancestors: frozenset[tuple[int, int]]) -> None:  # fmt: skip
        try:
            child = open_folder(fd, [name])
        except InTheWay:  # replaced by a link or a file since listed
            self.links.append(at)
            return
        except OSError as error:
            raise UserError(f"{self.src / at}: {error.strerror}") from None
        try:
            self.folder(child, at, real_at, ancestors)
        finally:
            os.close(child)

    def link(self, at: str, real_at: str, ancestors: frozenset[tuple[int, int]]) -> None:
        """Follow the link at REAL_AT (uploaded as AT) if it points to something inside
        SRC that is not a folder above it."""
        target = os.path.realpath(os.path.join(self.real_src, real_at))
        if os.path.commonpath([target, self.real_src]) != self.real_src:
            self.links.append(at)
            return
        real = os.path.relpath(target, self.real_src).replace(os.sep, "/")
        real = "" if real == "." else real
        try:
            parts = real.split("/") if real else []
            holder = open_folder(self.top, parts[:-1])
        except (FileNotFoundError, InTheWay):
            self.links.append(at)
            return
        try:
            st = os.stat(parts[-1], dir_fd=holder, follow_symlinks=False) if parts else None
            if st is None or stat.S_ISDIR(st.st_mode):
                self.linked_folder(holder, parts, at, real, ancestors)
            elif stat.S_ISREG(st.st_mode):
                self.file(at, real, st)
            else:
                self.links.append(at)
        except (FileNotFoundError, InTheWay):  # gone, or replaced since resolved
            self.links.append(at)
        finally:
            os.close(holder)

    def linked_folder(self, holder: int, parts: list[str], at: str, real: str,
                      ancestors: frozenset[tuple[int, int]]) -> None:  # fmt: skip
        child = open_folder(holder, parts[-1:]) if parts else os.dup(self.top)
        try:
            st = os.fstat(child)
            if (st.st_dev, st.st_ino) in ancestors:
                self.links.append(at)  # a loop
            else:
                self.folder(child, at, real, ancestors)
        finally:
            os.close(child)

    def file(self, at: str, real: str, st: os.stat_result) -> None:
        if problem := paths.path_problem(at):
            raise UserError(f"{self.src / at}: cannot be uploaded: {problem}")
        self.files.append(LocalFile(at, self.src, real, st.st_size, (st.st_dev, st.st_ino)))


def open_listed(f: LocalFile) -> int:
    """F's file opened for reading without following a link anywhere below its folder,
    and only if it is still the file that was listed."""
    top = open_top(f.root)
    try:
        parts = f.real.split("/")
        folder = open_folder(top, parts[:-1])
    finally:
        os.close(top)
    try:
        fd = os.open(parts[-1], READ_FLAGS, dir_fd=folder)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise InTheWay(f.real, is_link=True) from None
        raise
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != f.identity:
        os.close(fd)
        raise OSError(errno.ESTALE, f"{f.real} was replaced since the folder was listed")
    return fd


def upload(
    files: list[LocalFile],
    store: Store,
    target: str,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[LocalFile], None] | None = None,
) -> UploadReport:
    """Upload FILES under TARGET (relative to the datastore), WORKERS at once."""
    started = time.monotonic()
    existing = {f.path: f for f in store.list_source(target).files}
    report = UploadReport()

    def send(f: LocalFile) -> tuple[PinnedFile, bool]:
        remote = paths.join(target, f.path)
        fd = open_listed(f)
        try:
            before = os.fstat(fd)
            md5 = md5_of_fd(fd)
            there = existing.get(remote)
            if there is not None and there.size == before.st_size and there.md5 == md5:
                return _relative(there, f.path), False
            # Read through the open file itself: nothing planted since can redirect it.
            with os.fdopen(fd, "rb", closefd=False) as source:
                pinned = with_retries(lambda: store.upload(source, remote, md5), f.path)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise StorageError(f"{f.path} changed while it was being uploaded")
        return _relative(pinned, f.path), True

    def sent(f: LocalFile, result: tuple[PinnedFile, bool]) -> None:
        pinned, was_sent = result
        report.pinned.append(pinned)
        report.sent += was_sent
        report.identical += not was_sent
        report.bytes_sent += f.size if was_sent else 0
        if progress:
            progress(f)

    def failed(f: LocalFile, error: Exception) -> None:
        report.failed[f.path] = getattr(error, "strerror", None) or str(error)
        log.error("%s: %s", f.path, report.failed[f.path])

    run_parallel(sorted(files, key=lambda f: f.size, reverse=True), send, workers, sent,
                 failed, (StorageError, OSError))  # fmt: skip
    report.seconds = time.monotonic() - started
    return report


def uploaded_version(store: Store, dataset: str, target: str,
                     files: list[PinnedFile]) -> NewVersion:  # fmt: skip
    """FILES (relative to TARGET, as uploaded) as the next version of DATASET: exactly
    those files, with the etags the uploads returned."""
    return NewVersion(dataset=dataset, datastore=store.datastore.name, root=target,
                      sources=[target], files=files)  # fmt: skip


def _relative(pinned: PinnedFile, path: str) -> PinnedFile:
    return PinnedFile(path, pinned.size, pinned.etag, pinned.md5, pinned.last_modified)


class UploadFailed(AmlfsError):
    def __init__(self, report: UploadReport):
        super().__init__(
            f"{len(report.failed)} file(s) not uploaded: {some_names(list(report.failed))};"
            " re-run to resume"
        )
        self.report = report
