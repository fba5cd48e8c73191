"""amlfs from Python: `Dataset` (a pinned version: its files, opened, mounted, downloaded,
verified), `register`, and `run_context()` inside `amlfs run`.

The same functions the command line calls do the work here (datasets, transfer, mounts,
the block reader through amlfs.fs), and failures are the same exceptions
(amlfs.errors), whose messages are the CLI's one-line errors. A `Dataset` holds no open
registry: each call opens the state folder's registry and closes it again, so an object
can be passed between threads and to forked workers (PyTorch's DataLoader).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

from amlfs import mounts
from amlfs.catalog import open_registry
from amlfs.credentials import daemon_environment
from amlfs.errors import UserError
from amlfs.home import default_home, ensure_home
from amlfs.registry.models import Version
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry

log = logging.getLogger(__name__)

MOUNT_OPTIONS = ("cache_dir", *mounts.MOUNT_DEFAULTS)  # `amlfs mount`'s, as keywords


class NotInRun(UserError):
    """run_context() outside `amlfs run`."""


@contextlib.contextmanager
def opened_registry(home: Path) -> Iterator[Registry]:
    registry = open_registry(ensure_home(home), offline=log.warning)
    try:
        yield registry
    finally:
        registry.close()


def home_path(home: str | os.PathLike[str] | None) -> Path:
    """The state folder: HOME, else $AMLFS_HOME, else the default (as the CLI's --home)."""
    return Path(home).expanduser().absolute() if home is not None else default_home()


class Dataset:
    """One pinned version of a dataset (or a snapshot of one). Immutable: its files and
    their bytes are those pinned when it was registered."""

    def __init__(self, version: Version, home: Path):
        self._version = version
        self.home = home

    @classmethod
    def get(cls, name: str, version: int | str | None = None, *,
            home: str | os.PathLike[str] | None = None) -> Dataset:  # fmt: skip
        """NAME's VERSION (its latest when None). VERSION may be a number, "3", or
        "3@SNAP" for a snapshot; NAME may also be a whole reference ("weather:3")."""
        ref = name if version is None else f"{name}:{version}"
        root = home_path(home)
        with opened_registry(root) as registry:
            return cls(registry.resolve(ref), root)

    @property
    def name(self) -> str:
        return self._version.dataset

    @property
    def version(self) -> int:
        return self._version.version

    @property
    def snapshot(self) -> str | None:
        return self._version.snapshot

    @property
    def ref(self) -> str:
        """`NAME:VERSION`, or `NAME:VERSION@SNAP`: what the CLI accepts."""
        return self._version.ref

    @property
    def description(self) -> str:
        return self._version.description

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._version.tags)

    @property
    def file_count(self) -> int:
        return self._version.file_count

    @property
    def total_bytes(self) -> int:
        return self._version.total_bytes

    @cached_property
    def files(self) -> list[str]:
        """The relative paths of the version's files, in the registry's tree order."""
        with opened_registry(self.home) as registry:
            return [f.path for f in registry.iter_files(self._version)]

    def open(self, path: str) -> IO[bytes]:
        """A seekable binary file object over the pinned bytes of PATH, read through the
        shared block cache (no FUSE needed). A changed source raises, never serves."""
        from amlfs.fs import open_pinned

        return open_pinned(require_data(self._version), path, self.home)

    @contextlib.contextmanager
    def mount(self, mountpoint: str | os.PathLike[str] | None = None,
              **options: object) -> Iterator[Path]:  # fmt: skip
        """Mount the version read-only for the `with` block and yield the mount's path:
        MOUNTPOINT (an empty folder), or a temporary folder that is removed after. Unmounted
        on leaving the block, also on an exception, and if this process is killed.
        OPTIONS: those of `amlfs mount` (cache_size="20GiB", fetch_limit=16, ...)."""
        unknown = sorted(set(options) - set(MOUNT_OPTIONS))
        if unknown:
            raise UserError(f"mount: no option {unknown[0]!r}"
                            f" (options: {', '.join(MOUNT_OPTIONS)})")  # fmt: skip
        version = require_data(self._version)
        temporary = mountpoint is None
        path = Path(tempfile.mkdtemp(prefix=f"amlfs-{self.name}-") if temporary else mountpoint)
        try:
            path = mounts.check_mountpoint(path)
            args = ["mount", version.ref, str(path)]
            for name, value in options.items():
                args += [f"--{name.replace('_', '-')}", str(value)]
            with opened_registry(self.home) as registry:
                env = daemon_environment(registry.list_datastores(), version.datastore)
            # Tied to this thread: a process killed outright leaves no mount behind.
            mounts.start_daemon(self.home, args, f"mount-{path.name}-{version.ref}", env=env,
                                ends_with_us=True)  # fmt: skip
            try:
                yield path
            finally:
                mounts.unmount(self.home, path)
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    path.rmdir()

    def download(self, target: str | os.PathLike[str], *, overwrite: bool = False,
                 workers: int | None = None) -> Path:  # fmt: skip
        """Place every file under TARGET, each checked against its pin; files already in
        place are kept (a second call resumes). A file of TARGET that holds other bytes is
        refused unless OVERWRITE. Returns TARGET."""
        from amlfs.transfer.download import DEFAULT_WORKERS, DownloadFailed, download_version

        dest = Path(target).expanduser().absolute()
        with opened_registry(self.home) as registry:
            report = download_version(self.home, registry, require_data(self._version), dest,
                                      workers=workers or DEFAULT_WORKERS,
                                      overwrite=overwrite)  # fmt: skip
        if report.failed:
            raise DownloadFailed(report)
        return dest

    def verify(self) -> Verification:
        """Every pinned file compared with its source (no bytes read where the store
        keeps etags): which changed and which are gone."""
        from amlfs import datasets

        with opened_registry(self.home) as registry:
            report = datasets.verify(registry, self._version)
        return Verification(report.checked, [c.path for c in report.changed], report.missing)

    def __repr__(self) -> str:
        return f"Dataset({self.ref!r})"


@dataclass(frozen=True)
class Verification:
    checked: int
    changed: list[str]  # same path, other bytes
    missing: list[str]  # gone from the source

    @property
    def ok(self) -> bool:
        return not self.changed and not self.missing


def register(name: str, datastore: str, paths: str | list[str], *, description: str = "",
             tags: Mapping[str, str] | None = None,
             home: str | os.PathLike[str] | None = None) -> Dataset:  # fmt: skip
    """Pin every file under PATHS (folders, files, globs) of DATASTORE and register them
    as the next version of NAME, as `amlfs dataset register` does."""
    from amlfs import datasets

    root = home_path(home)
    sources = [paths] if isinstance(paths, str) else list(paths)
    with opened_registry(root) as registry:
        version = datasets.register(registry, name, datastore, sources,
                                    description=description, tags=tags)  # fmt: skip
    return Dataset(version, root)


@dataclass(frozen=True)
class RunContext:
    """Where the inputs and outputs of the running `amlfs run` are (local paths)."""

    run_id: str
    home: Path
    inputs: Mapping[str, Path]
    outputs: Mapping[str, Path]

    def input_dataset(self, name: str) -> Dataset:
        """The exact version input NAME reads, as the run recorded it."""
        from amlfs.registry.runs import RunLog

        with opened_registry(self.home) as registry:
            for item in RunLog(registry).get(self.run_id).inputs:
                if item.name == name:
                    return Dataset(item.version, self.home)
        raise UserError(f"run {self.run_id} has no input {name!r}")


def run_context(environ: Mapping[str, str] = os.environ) -> RunContext:
    """The running `amlfs run`'s context (its command's environment says it); NotInRun
    outside one."""
    run_id = environ.get("AMLFS_RUN_ID")
    if not run_id:
        raise NotInRun("amlfs.run_context(): not inside `amlfs run` (AMLFS_RUN_ID is not set)")

    def paths(prefix: str) -> dict[str, Path]:
        return {key[len(prefix) :]: Path(value) for key, value in environ.items()
                if key.startswith(prefix)}  # fmt: skip

    return RunContext(run_id, home_path(environ.get("AMLFS_HOME")), paths("AMLFS_INPUT_"),
                      paths("AMLFS_OUTPUT_"))  # fmt: skip
