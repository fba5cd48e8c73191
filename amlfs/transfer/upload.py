"""`amlfs upload`: a local folder to a datastore, optionally registered as a version.

Each file's MD5 is computed before it is sent and stored with it, so that an identical
file at the destination is recognised without downloading it, and so that the version
registered from the upload pins MD5s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amlfs.errors import AmlfsError, StorageError, UserError
from amlfs.registry import paths
from amlfs.registry.models import NewVersion, PinnedFile
from amlfs.storage import Store
from amlfs.transfer.files import PARTIAL_SUFFIX, md5_of, some_names
from amlfs.transfer.parallel import run_parallel, with_retries

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative to the uploaded folder, '/'-separated
    local: Path
    size: int


@dataclass
class UploadReport:
    pinned: list[PinnedFile] = field(default_factory=list)  # paths relative to the target
    sent: int = 0
    identical: int = 0
    bytes_sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def local_files(src: Path) -> list[LocalFile]:
    """Every file below SRC (symbolic links followed), or a one-line UserError."""
    src = src.expanduser().absolute()
    if not src.is_dir():
        raise UserError(f"{src} is not a folder" if src.exists() else f"{src} does not exist")
    files = []
    for folder, dirs, names in os.walk(src, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(PARTIAL_SUFFIX):
                continue  # an interrupted download's leftover, never data
            local = Path(folder, name)
            relative = local.relative_to(src).as_posix()
            if problem := paths.path_problem(relative):
                raise UserError(f"{local}: cannot be uploaded: {problem}")
            try:
                st = local.stat()
            except OSError as error:
                raise UserError(f"{local}: {error.strerror}") from None
            if local.is_file():
                files.append(LocalFile(relative, local, st.st_size))
    if not files:
        raise UserError(f"{src} holds no files to upload")
    return files


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
        before = f.local.stat()
        md5 = md5_of(f.local)
        there = existing.get(remote)
        if there is not None and there.size == before.st_size and there.md5 == md5:
            return _relative(there, f.path), False
        pinned = with_retries(lambda: store.upload(f.local, remote, md5), f.path)
        after = f.local.stat()
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
