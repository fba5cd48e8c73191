"""`amlfs download`: a pinned version materialised under a local folder, verified.

Every file is written to a hidden partial name, checked (size; MD5 where pinned) and
renamed into place, so a file under DEST is either absent or complete. The journal
remembers what was placed, so that a re-run skips it and never mistakes someone else's
file for ours.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amlfs.cache.blocks import BlockCache, BlockKey
from amlfs.errors import AmlfsError, SourceChanged, StorageError, UserError
from amlfs.home import cache_dir
from amlfs.registry import paths
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.transfer.files import md5_of, partial_name, remove_quietly, some_names
from amlfs.transfer.journal import Journal, Placed
from amlfs.transfer.parallel import run_parallel, with_retries

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16  # measured: see docs/performance.md, "Download workers"

# Told of each file as it lands (or is found already in place).
Progress = Callable[[PinnedFile], None]


@dataclass
class DownloadReport:
    version: Version
    dest: Path
    total_files: int = 0
    present: int = 0  # already in place and correct
    fetched: int = 0
    from_cache: int = 0  # of the fetched, written from the block cache
    bytes_fetched: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: float = 0.0


@dataclass
class Plan:
    fetch: list[PinnedFile]
    present: list[PinnedFile]
    conflicts: list[str]  # files of DEST in the way that are not ours


def download(
    version: Version,
    files: list[PinnedFile],
    store: Store,
    dest: Path,
    journal: Journal,
    *,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    cache: BlockCache | None = None,
    block_size: int = 4 * 2**20,
    progress: Progress | None = None,
) -> DownloadReport:
    started = time.monotonic()
    dest = dest.expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder")
    report = DownloadReport(version, dest, len(files))
    placed = journal.placed(dest) if dest.exists() else {}
    plan = plan_download(files, dest, placed, overwrite)
    if plan.conflicts:
        raise UserError(
            f"{len(plan.conflicts)} file(s) under {dest} differ from {version.ref} and were not"
            f" written by amlfs ({some_names(plan.conflicts)}); use --overwrite to replace them"
        )
    dest.mkdir(parents=True, exist_ok=True)
    missing = sum(f.size for f in plan.fetch)
    free = shutil.disk_usage(dest).free
    if missing > free:
        raise UserError(
            f"{dest} has {_gib(free)} free but {len(plan.fetch)} missing file(s) need"
            f" {_gib(missing)}"
        )
    report.present = len(plan.present)
    for f in plan.present:
        if f.path not in placed:  # found correct by its MD5: ours from now on
            _remember(journal, dest, f)
        if progress:
            progress(f)
    fetcher = _Fetcher(store, version.root, dest, journal, cache, block_size)

    def placed(f: PinnedFile, from_cache: bool) -> None:
        report.fetched += 1
        report.from_cache += from_cache
        report.bytes_fetched += f.size
        if progress:
            progress(f)

    def failed(f: PinnedFile, error: Exception) -> None:
        report.failed[f.path] = _reason(error)
        log.error("%s: %s", f.path, report.failed[f.path])

    # Largest first: they set the finishing time.
    largest_first = sorted(plan.fetch, key=lambda f: f.size, reverse=True)
    expected = (SourceChanged, StorageError, OSError)
    run_parallel(largest_first, fetcher, workers, placed, failed, expected, fetcher.stopping)
    report.seconds = time.monotonic() - started
    return report


def download_version(
    home: Path,
    registry: Registry,
    version: Version,
    dest: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    block_size: int = 4 * 2**20,
    progress: Progress | None = None,
) -> DownloadReport:
    """download() of VERSION with what it needs from HOME: the journal of placed files
    and the block cache, whose blocks are reused when they hold a whole file."""
    files = list(registry.iter_files(version))
    store = Store(registry.get_datastore(version.datastore))
    blocks = cache_dir(home)
    cache = BlockCache(blocks) if (blocks / "cache.db").exists() else None
    journal = Journal(home, durable=False)
    try:
        return download(version, files, store, dest, journal, workers=workers,
                        overwrite=overwrite, cache=cache, block_size=block_size,
                        progress=progress)  # fmt: skip
    finally:
        journal.close()
        if cache is not None:
            cache.close()


def plan_download(files: list[PinnedFile], dest: Path, placed: dict[str, Placed],
                  overwrite: bool) -> Plan:  # fmt: skip
    """Sort files into present (skip), to fetch, and in the way (someone else's)."""
    plan = Plan([], [], [])
    for f in files:
        target = dest / f.path
        try:
            remove_quietly(partial_name(target))  # left by an interrupted run
            st = target.lstat()
        except FileNotFoundError:
            plan.fetch.append(f)
            continue
        except NotADirectoryError:
            plan.conflicts.append(f.path)  # a file stands where a folder must be
            continue
        ours = placed.get(f.path)
        unchanged_since_placed = ours is not None and (ours.size, ours.mtime_ns) == (
            st.st_size,
            st.st_mtime_ns,
        )
        if not target.is_file() or target.is_symlink():
            plan.conflicts.append(f.path)
        elif st.st_size == f.size and (
            (unchanged_since_placed and ours.etag == f.etag) or (f.md5 and md5_of(target) == f.md5)
        ):
            plan.present.append(f)
        elif unchanged_since_placed or overwrite:
            plan.fetch.append(f)  # ours from another version, or the user said so
        else:
            plan.conflicts.append(f.path)
    return plan


class _Fetcher:
    """Fetches one file to its partial name, checks it, renames it into place."""

    def __init__(self, store: Store, root: str, dest: Path, journal: Journal,
                 cache: BlockCache | None, block_size: int):  # fmt: skip
        self.store, self.root, self.dest, self.journal = store, root, dest, journal
        self.cache, self.block_size = cache, block_size
        self.stopping = threading.Event()

    def __call__(self, f: PinnedFile) -> bool:
        """Place F; True if its bytes came from the block cache."""
        target = self.dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_name(target)
        try:
            from_cache = self._from_cache(f, partial)
            if not from_cache:
                self._from_store(f, partial)
            _check(f, partial)
            os.replace(partial, target)
        except BaseException:
            remove_quietly(partial)
            raise
        _remember(self.journal, self.dest, f)
        return from_cache

    def _from_store(self, f: PinnedFile, partial: Path) -> None:
        relative = paths.join(self.root, f.path)
        with_retries(lambda: self.store.download_pinned(relative, f.etag, partial), f.path,
                     self.stopping)  # fmt: skip

    def _from_cache(self, f: PinnedFile, partial: Path) -> bool:
        """Write F from the block cache if every block of it is there (a mount read it)."""
        if self.cache is None or f.size == 0:
            return False
        source = self.store.source_name(paths.join(self.root, f.path))
        count = -(-f.size // self.block_size)
        keys = [BlockKey(source, f.etag, self.block_size, i) for i in range(count)]
        if not all(self.cache.contains(key) for key in keys):
            return False
        with open(partial, "wb") as out:
            for key in keys:
                length = min(self.block_size, f.size - key.index * self.block_size)
                data = self.cache.get(key, length)
                if data is None:
                    return False  # evicted or damaged meanwhile: fetch from storage
                out.write(data)
        return True


def _check(f: PinnedFile, partial: Path) -> None:
    size = partial.stat().st_size
    if size != f.size:
        raise StorageError(f"{f.path}: received {size} bytes, pinned {f.size}")
    if f.md5 and md5_of(partial) != f.md5:
        raise StorageError(f"{f.path}: MD5 differs from the pinned one")


def _remember(journal: Journal, dest: Path, f: PinnedFile) -> None:
    st = (dest / f.path).stat()
    journal.record_placed(dest, f.path, Placed(st.st_size, st.st_mtime_ns, f.etag))


def _reason(error: Exception) -> str:
    if isinstance(error, SourceChanged):
        if "is gone" in str(error):
            return "gone from the datastore since the version was registered"
        return "changed at the source since the version was registered (etag mismatch)"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class DownloadFailed(AmlfsError):
    """Some files could not be placed; the others are in place and a re-run resumes."""

    def __init__(self, report: DownloadReport):
        super().__init__(
            f"{len(report.failed)} of {report.total_files} file(s) of {report.version.ref} not"
            f" downloaded: {some_names(list(report.failed))}; re-run to resume"
        )
        self.report = report
