"""`amlfs download`: a pinned version materialised under a local folder, verified.

Every file is written to a short partial name of this run beside its place, checked
(size; MD5 where pinned), synced, renamed into place and its folder synced, so a file
under DEST is either absent or complete, also after a power cut, once the journal says
it was placed. The journal remembers what was placed, so that a re-run skips it and
never mistakes someone else's file for ours, and how far each large file got, so that a
re-run resumes it mid-file (amlfs.transfer.resume).

Everything below DEST is reached through opened folders without following a link: a link
in DEST (planted before or during the download) is an error naming it, never a way out.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from amlfs import locks
from amlfs.cache.blocks import BlockCache, BlockKey
from amlfs.errors import AmlfsError, SourceChanged, StorageError, UserError
from amlfs.home import cache_dir, ensure_home
from amlfs.localfs import fsync_folder
from amlfs.registry import paths
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.transfer.files import (
    READ_FLAGS,
    InTheWay,
    fd_path,
    md5_of_fd,
    open_folder,
    open_top,
    some_names,
)
from amlfs.transfer.journal import Journal, Partial, Placed
from amlfs.transfer.parallel import run_parallel, with_retries
from amlfs.transfer.resume import Resumable, Stopped, claim, kept_names, resumable

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16  # measured: see docs/performance.md, "Download workers"
PARTIAL_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_TRIES = 100  # partial names taken by someone else before giving up (never seen)

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
    bytes_fetched: int = 0  # received from storage (or the block cache) by this run
    bytes_resumed: int = 0  # found written and good in partial files an earlier run left
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: float = 0.0


@dataclass
class Plan:
    fetch: list[PinnedFile]
    present: list[PinnedFile]
    conflicts: list[str]  # files of DEST in the way that are not ours
    links: list[str] = field(default_factory=list)  # symbolic links where the version goes


def download(
    version: Version,
    files: list[PinnedFile],
    store: Store,
    dest: Path,
    journal: Journal,
    records: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = False,
    cache: BlockCache | None = None,
    block_size: int = 4 * 2**20,
    progress: Progress | None = None,
) -> DownloadReport:
    """Place FILES of VERSION under DEST. RECORDS is the folder where each run notes the
    partial files it may leave, for the next run to remove if it dies."""
    started = time.monotonic()
    dest = dest.expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    top = open_top(dest)
    try:
        remove_leftovers(records, dest, top, kept_names(journal, dest))
        return _download(version, files, store, dest, top, journal, records, workers,
                         overwrite, cache, block_size, progress, started)  # fmt: skip
    finally:
        os.close(top)


def _download(version: Version, files: list[PinnedFile], store: Store, dest: Path, top: int,
              journal: Journal, records: Path, workers: int, overwrite: bool,
              cache: BlockCache | None, block_size: int, progress: Progress | None,
              started: float) -> DownloadReport:  # fmt: skip
    report = DownloadReport(version, dest, len(files))
    placed = journal.placed(dest)
    plan = plan_download(files, top, placed, overwrite)
    if plan.links:
        raise UserError(
            f"{len(plan.links)} symbolic link(s) under {dest} stand where {version.ref} has"
            f" files or folders ({some_names(plan.links)}); amlfs never writes through a"
            " link: remove them or choose another folder"
        )
    if plan.conflicts:
        raise UserError(
            f"{len(plan.conflicts)} file(s) under {dest} differ from {version.ref} and were not"
            f" written by amlfs ({some_names(plan.conflicts)}); use --overwrite to replace them"
        )
    missing = sum(f.size for f in plan.fetch)
    vfs = os.statvfs(top)
    free = vfs.f_bavail * vfs.f_frsize
    if missing > free:
        raise UserError(
            f"{dest} has {_gib(free)} free but {len(plan.fetch)} missing file(s) need"
            f" {_gib(missing)}"
        )
    report.present = len(plan.present)
    for f in plan.present:
        if f.path not in placed:  # found correct by its MD5: ours from now on
            _adopt(journal, dest, top, f)
        if progress:
            progress(f)
    if not plan.fetch:
        report.seconds = time.monotonic() - started
        return report

    def done(f: PinnedFile, fetched: Fetched) -> None:
        report.fetched += 1
        report.from_cache += fetched.from_cache
        report.bytes_fetched += fetched.nbytes
        report.bytes_resumed += f.size - fetched.nbytes
        if progress:
            progress(f)

    def failed(f: PinnedFile, error: Exception) -> None:
        report.failed[f.path] = _reason(error)
        log.error("%s: %s", f.path, report.failed[f.path])

    folders = sorted({paths.parent(f.path) for f in plan.fetch})
    earlier = claim(journal, records, dest, top, plan.fetch)
    with _Partials(records, dest, folders) as partials:
        fetcher = _Fetcher(store, version.root, dest, top, journal, partials, cache, block_size,
                           earlier)  # fmt: skip
        # Largest first: they set the finishing time.
        largest_first = sorted(plan.fetch, key=lambda f: f.size, reverse=True)
        expected = (SourceChanged, StorageError, OSError, Stopped)
        run_parallel(largest_first, fetcher, workers, done, failed, expected, fetcher.stopping)
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
    """download() of VERSION with what it needs from HOME: the journal of placed files,
    the records of partial files, and the block cache, whose blocks are reused when they
    hold a whole file."""
    require_data(version)
    files = list(registry.iter_files(version))
    store = Store(registry.get_datastore(version.datastore), reads_only=True)
    blocks = cache_dir(home)
    cache = BlockCache(blocks) if (blocks / "cache.db").exists() else None
    records = ensure_home(home) / "run" / "downloads"
    journal = Journal(home, durable=False)
    try:
        return download(version, files, store, dest, journal, records, workers=workers,
                        overwrite=overwrite, cache=cache, block_size=block_size,
                        progress=progress)  # fmt: skip
    finally:
        journal.close()
        if cache is not None:
            cache.close()


def plan_download(files: list[PinnedFile], top: int, placed: dict[str, Placed],
                  overwrite: bool) -> Plan:  # fmt: skip
    """Sort files into present (skip), to fetch, in the way (someone else's), and links
    where the version has a file or a folder (never followed, never replaced)."""
    plan = Plan([], [], [])
    folders = _Folders(top)
    try:
        for f in sorted(files, key=lambda f: f.path):  # one folder at a time
            _plan_one(f, folders, placed, overwrite, plan)
    finally:
        folders.close()
    return plan


def _plan_one(f: PinnedFile, folders: _Folders, placed: dict[str, Placed], overwrite: bool,
              plan: Plan) -> None:  # fmt: skip
    name = _name(f.path)
    try:
        folder = folders.open(paths.parent(f.path))
        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        plan.fetch.append(f)
        return
    except InTheWay as error:
        if error.is_link:
            plan.links.append(error.where)
        else:
            plan.conflicts.append(f.path)  # a file stands where a folder must be
        return
    if stat.S_ISLNK(st.st_mode):
        plan.links.append(f.path)
        return
    ours = placed.get(f.path)
    unchanged_since_placed = ours is not None and (ours.size, ours.mtime_ns) == (
        st.st_size,
        st.st_mtime_ns,
    )
    if not stat.S_ISREG(st.st_mode):
        plan.conflicts.append(f.path)
    elif st.st_size == f.size and (
        (unchanged_since_placed and ours.etag == f.etag)
        or (f.md5 and _md5_at(folder, name) == f.md5)
    ):
        plan.present.append(f)
    elif unchanged_since_placed or overwrite:
        plan.fetch.append(f)  # ours from another version, or the user said so
    else:
        plan.conflicts.append(f.path)


class _Folders:
    """The last folder below DEST that planning opened, kept open for its next file."""

    def __init__(self, top: int):
        self.top, self.path, self.fd = top, "", os.dup(top)

    def open(self, path: str) -> int:
        if path != self.path:
            fd = open_folder(self.top, _parts(path))
            os.close(self.fd)
            self.path, self.fd = path, fd
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


class _Partials:
    """The partial files of one run: short names `.amlfs-TOKEN-N` made with O_EXCL beside
    their place, so they never take a user's name nor exceed NAME_MAX, and a record in
    RECORDS naming DEST and the folders written to. The run holds the record's lock
    (amlfs.locks) while it lives; the kernel releases it when the run dies, and a later
    run into the same DEST removes exactly the partial files of this token."""

    def __init__(self, records: Path, dest: Path, folders: list[str]):
        self.token = secrets.token_hex(6)
        self._numbers = itertools.count()  # next() on it is atomic under the GIL
        records.mkdir(parents=True, exist_ok=True, mode=0o700)
        held = locks.hold(records / self.token)
        assert held is not None, "a new token's record is this run's own"
        self._record = held
        try:
            held.write(json.dumps({"dest": str(dest), "folders": folders}))
            # Durable before any partial file exists: a power cut cannot orphan one.
            os.fsync(held.fd)
            fsync_folder(records)
        except BaseException:
            held.release()
            raise

    def new_name(self) -> str:
        """A partial name of this run not used before (for a partial file taken over)."""
        return f".amlfs-{self.token}-{next(self._numbers)}"

    def create(self, folder: int) -> tuple[str, int]:
        """A new partial file in FOLDER: its name and an fd open for reading and writing."""
        for _ in range(NAME_TRIES):
            name = self.new_name()
            try:
                return name, os.open(name, PARTIAL_FLAGS, 0o666, dir_fd=folder)
            except FileExistsError:
                continue
        raise OSError(f"no free partial name in a folder after {NAME_TRIES} tries")

    def close(self) -> None:
        self._record.release()

    def __enter__(self) -> _Partials:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def remove_leftovers(records: Path, dest: Path, top: int,
                     kept: Collection[tuple[str, str]] = ()) -> None:  # fmt: skip
    """Remove the partial files that dead runs into DEST left, as their records name them
    (token and folders), but those KEPT ((folder, name): a later run may resume them);
    files of any other name are never touched."""
    if not records.is_dir():
        return
    for record in sorted(records.iterdir()):
        held = locks.hold(record)
        if held is None:
            continue  # its run is alive
        left = _read_record(held.fd)
        if left is not None and left.get("dest") != str(dest):
            held.release(remove=False)  # another DEST's: a download into it cleans up
            continue
        # Unreadable: its run died before it wrote it, so before any partial file.
        for folder in (left or {}).get("folders", []):
            _remove_partials(top, folder, f".amlfs-{record.name}-", kept)
        held.release()


def _read_record(fd: int) -> dict | None:
    with contextlib.suppress(ValueError):
        left = json.loads(os.pread(fd, os.fstat(fd).st_size, 0))
        return left if isinstance(left, dict) else None
    return None


def _remove_partials(top: int, folder: str, prefix: str,
                     kept: Collection[tuple[str, str]]) -> None:  # fmt: skip
    try:
        fd = open_folder(top, _parts(folder))
    except (FileNotFoundError, InTheWay):
        return  # nothing of ours can be there
    try:
        with os.scandir(fd) as entries:
            ours = [
                e.name
                for e in entries
                if e.name.startswith(prefix)
                and e.name[len(prefix) :].isdigit()
                and e.is_file(follow_symlinks=False)
                and (folder, e.name) not in kept
            ]
        for name in ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
        log.info("removed %d partial file(s) of a dead download from %s", len(ours), folder)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Fetched:
    """How one file was placed."""

    from_cache: bool  # its bytes came from the block cache
    nbytes: int  # received by this run (the rest was good in a partial file already)


class _Fetcher:
    """Fetches one file to a partial file, checks and syncs it, renames it into place and
    syncs its folder: only then is it recorded as placed. A large file is fetched in
    noted chunks, or resumed from the partial file an earlier run left (EARLIER)."""

    def __init__(self, store: Store, root: str, dest: Path, top: int, journal: Journal,
                 partials: _Partials, cache: BlockCache | None, block_size: int,
                 earlier: dict[str, Partial]):  # fmt: skip
        self.store, self.root, self.dest, self.top = store, root, dest, top
        self.journal, self.partials = journal, partials
        self.cache, self.block_size = cache, block_size
        self.earlier = earlier
        self.folder_syncs = _FolderSyncs()
        self.stopping = threading.Event()

    def __call__(self, f: PinnedFile) -> Fetched:
        """Place F."""
        folder = open_folder(self.top, _parts(paths.parent(f.path)), create=True)
        try:
            partial, fd, resume = self._open_partial(f, folder)
            try:
                fetched = self._fill(f, fd, partial, folder, resume)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        finally:
            os.close(folder)
        self.journal.record_placed(self.dest, f.path, Placed(st.st_size, st.st_mtime_ns, f.etag))
        if resume is not None:
            self.journal.forget_partial(self.dest, f.path)
        return fetched

    def _open_partial(self, f: PinnedFile, folder: int) -> tuple[str, int, Resumable | None]:
        """F's partial file: an earlier run's taken over, or a new one (noted, if large)."""
        earlier = self.earlier.pop(f.path, None)  # one worker per path: pop is atomic
        if earlier is not None:
            name = self.partials.new_name()
            taken = Resumable.take_over(self.journal, self.dest, earlier, folder, name)
            if taken is not None:
                return name, taken[1], taken[0]
        name, fd = self.partials.create(folder)
        if not resumable(f):
            return name, fd, None
        try:
            return name, fd, Resumable.fresh(self.journal, self.dest, f, name)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=folder)
            raise

    def _fill(self, f: PinnedFile, fd: int, partial: str, folder: int,
              resume: Resumable | None) -> Fetched:  # fmt: skip
        try:
            fetched = self._fetch(f, fd, resume)
        except BaseException as error:
            if resume is None or not resume.keep_after(error):
                self._discard(f, partial, folder, resume)
            raise
        try:
            _check(f, fd)
            os.fsync(fd)  # the bytes reach the disk before the name does
            os.replace(partial, _name(f.path), src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            self._discard(f, partial, folder, resume)
            raise
        # The name reaches the disk before the journal records it.
        self.folder_syncs.sync(paths.parent(f.path), folder)
        return fetched

    def _fetch(self, f: PinnedFile, fd: int, resume: Resumable | None) -> Fetched:
        relative = paths.join(self.root, f.path)
        if resume is not None:
            if not resume.digests and self._from_cache(f, fd):
                return Fetched(True, f.size)
            # Each attempt goes on from the last chunk noted.
            with_retries(lambda: resume.fetch(self.store, relative, fd, self.stopping), f.path,
                         self.stopping)  # fmt: skip
            return Fetched(False, resume.fetched)
        if self._from_cache(f, fd):
            return Fetched(True, f.size)
        # Written through the open partial file itself: no name below DEST is looked up.
        with_retries(lambda: self.store.download_pinned(relative, f.etag, fd_path(fd)), f.path,
                     self.stopping)  # fmt: skip
        return Fetched(False, f.size)

    def _discard(self, f: PinnedFile, partial: str, folder: int,
                 resume: Resumable | None) -> None:  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial, dir_fd=folder)
        if resume is not None:
            self.journal.forget_partial(self.dest, f.path)

    def _from_cache(self, f: PinnedFile, fd: int) -> bool:
        """Write F from the block cache if every block of it is there (a mount read it)."""
        if self.cache is None or f.size == 0:
            return False
        source = self.store.source_name(paths.join(self.root, f.path))
        count = -(-f.size // self.block_size)
        keys = [BlockKey(source, f.etag, self.block_size, i) for i in range(count)]
        if not all(self.cache.contains(key) for key in keys):
            return False
        for key in keys:
            length = min(self.block_size, f.size - key.index * self.block_size)
            data = self.cache.get(key, length)
            if data is None:
                return False  # evicted or damaged meanwhile: fetch from storage
            os.pwrite(fd, data, key.index * self.block_size)
        return True


@dataclass
class _FolderState:
    asked: int = 0  # syncs asked for, each after a rename into the folder
    done: int = 0  # syncs asked for up to this one are covered by a finished fsync
    running: bool = False


class _FolderSyncs:
    """Folder fsyncs after renames, shared by the workers (group commit). An fsync of a
    folder that starts after a rename into it makes that rename durable, so a worker
    waits for an fsync started after its request, running one itself if none is: files
    landing in one folder at once share an fsync, and every rename is still covered."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._folders: dict[str, _FolderState] = {}

    def sync(self, key: str, fd: int) -> None:
        """Return once an fsync of the folder KEY (open at FD) that started after this
        call has finished."""
        with self._changed:
            state = self._folders.setdefault(key, _FolderState())
            state.asked += 1
            ticket = state.asked
            while state.done < ticket:
                if not state.running:
                    state.running, upto = True, state.asked
                    break
                self._changed.wait()
            else:
                return
        synced = False
        try:
            os.fsync(fd)  # outside the lock: others keep asking meanwhile
            synced = True
        finally:
            with self._changed:
                state.running = False
                if synced:
                    state.done = max(state.done, upto)
                self._changed.notify_all()


def _check(f: PinnedFile, fd: int) -> None:
    size = os.fstat(fd).st_size
    if size != f.size:
        raise StorageError(f"{f.path}: received {size} bytes, pinned {f.size}")
    if f.md5 and md5_of_fd(fd) != f.md5:
        raise StorageError(f"{f.path}: MD5 differs from the pinned one")


def _adopt(journal: Journal, dest: Path, top: int, f: PinnedFile) -> None:
    folder = open_folder(top, _parts(paths.parent(f.path)))
    try:
        st = os.stat(_name(f.path), dir_fd=folder, follow_symlinks=False)
    finally:
        os.close(folder)
    journal.record_placed(dest, f.path, Placed(st.st_size, st.st_mtime_ns, f.etag))


def _md5_at(folder: int, name: str) -> bytes:
    fd = os.open(name, READ_FLAGS, dir_fd=folder)
    try:
        return md5_of_fd(fd)
    finally:
        os.close(fd)


def _parts(folder: str) -> list[str]:
    return folder.split("/") if folder else []


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def _reason(error: Exception) -> str:
    if isinstance(error, SourceChanged):
        if "is gone" in str(error):
            return "gone from the datastore since the version was registered"
        mismatch = "MD5" if "MD5" in str(error) else "etag"  # a pin by content, or the etag
        return f"changed at the source since the version was registered ({mismatch} mismatch)"
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
