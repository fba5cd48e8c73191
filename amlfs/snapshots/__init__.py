"""Snapshots of versions: taken (checked against the source, profiled, optionally copied)
and deleted (with the blobs their copy wrote). The records are registry/snapshots.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from amlfs import datasets, mounts
from amlfs.errors import AmlfsError, StorageError, UserError
from amlfs.profile import profile
from amlfs.registry import paths
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.prunes import require_data
from amlfs.registry.runs import RunLog
from amlfs.registry.snapshots import Snapshot, Snapshots
from amlfs.registry.store import Registry
from amlfs.snapshots import copy
from amlfs.storage import Store
from amlfs.transfer.parallel import run_parallel, with_retries


class Drifted(AmlfsError):
    """Pinned files changed or vanished at the source: no snapshot is taken (exit 1)."""

    def __init__(self, report: datasets.VerifyReport):
        self.report = report
        drifted = [c.path for c in report.changed] + report.missing
        named = ", ".join(drifted[: copy.FAILURES_NAMED])
        extra = len(drifted) - copy.FAILURES_NAMED
        more = f" and {extra} more" if extra > 0 else ""
        super().__init__(
            f"{report.version.ref}: {len(drifted)} pinned file(s) changed or vanished at the "
            f"source ({named}{more}); no snapshot taken"
        )


def default_name(now: datetime | None = None) -> str:
    """`snapshot-YYYYMMDDHHMMSS`, UTC."""
    return f"snapshot-{(now or datetime.now(UTC)):%Y%m%d%H%M%S}"


@dataclass
class CopyRequest:
    """`--copy-to DATASTORE:PATH`, and how to run the copy."""

    datastore: str
    path: str
    pending: Path  # where an unfinished copy's folder is remembered (see copy.target)
    workers: int = copy.DEFAULT_WORKERS
    progress: Callable[[int], None] = lambda _n: None


def create(registry: Registry, version: Version, name: str, copy_to: CopyRequest | None = None,
           env: Mapping[str, str] = os.environ) -> Snapshot:  # fmt: skip
    """Take snapshot NAME of VERSION: every pin checked against its source first (Drifted,
    and nothing recorded, if any changed), the profile computed, the bytes copied if
    asked; recorded last, all at once."""
    if version.snapshot is not None:
        raise UserError(f"{version.ref} is a snapshot: take a snapshot of its version")
    require_data(version)
    paths.check_name("snapshot", name)
    snapshots = Snapshots(registry)
    if snapshots.exists(version, name):
        raise UserError(f"{version.ref} already has a snapshot named {name!r}")
    if copy_to is not None:
        registry.get_datastore(copy_to.datastore)  # an unknown one fails before any work
    report = datasets.verify(registry, version, env)
    if not report.ok:
        raise Drifted(report)
    document = profile(registry, version).to_json()
    if copy_to is None:
        return snapshots.record(version, name, document)
    key = (copy_to.pending, version, name, copy_to.datastore, copy_to.path)
    to = copy.target(*key)
    pins = copy.copy_version(registry, version, to, workers=copy_to.workers,
                             progress=copy_to.progress, env=env)  # fmt: skip
    snapshot = snapshots.record(version, name, document, pins, to.location)
    copy.forget_target(*key)
    return snapshot


def users(registry: Registry, snapshot: Snapshot, home: Path) -> list[str]:
    """What reads SNAPSHOT now: live mounts of it and running runs with it as an input."""
    # Imported here: the lineage module pulls in the run machinery.
    from amlfs.jobs.lineage import state_of

    found = [f"mounted at {record.mountpoint} (pid {record.pid})"
             for record, alive in mounts.current_records(home)
             if alive and record.what == snapshot.ref]  # fmt: skip
    if snapshot.copy is not None:
        # A run's inputs name the version it read: the copy's, for a snapshot with one.
        # A snapshot without a copy is read as its version, which its delete leaves alone.
        read = replace(snapshot.version, id=snapshot.copy.id)
        found += [f"read by run {run.id}" for run in RunLog(registry).readers(read)
                  if state_of(run, home) == "running"]  # fmt: skip
    return found


def delete(registry: Registry, snapshot: Snapshot, home: Path, *, workers: int = 16,
           env: Mapping[str, str] = os.environ) -> int:  # fmt: skip
    """Remove SNAPSHOT and the blobs its copy wrote (each only if it still holds what the
    copy wrote); the number of blobs removed. Refused while a mount or a run reads it."""
    in_use = users(registry, snapshot, home)
    if in_use:
        raise UserError(f"{snapshot.ref} is in use ({'; '.join(in_use)}): not deleted")
    removed = 0
    if snapshot.copy is not None:
        store = Store(registry.get_datastore(snapshot.copy.datastore), env)
        files = list(registry.iter_files(snapshot.copy))
        failed: list[str] = []

        def work(f: PinnedFile) -> bool:
            name = paths.join(snapshot.copy.root, f.path)
            return with_retries(lambda: store.delete(name, if_match=f.etag), f"delete {name}")

        def done(_f: PinnedFile, gone: bool) -> None:
            nonlocal removed
            removed += gone

        run_parallel(files, work, workers, done, lambda f, _e: failed.append(f.path),
                     (AmlfsError, OSError))  # fmt: skip
        if failed:
            raise StorageError(
                f"{snapshot.ref}: {len(failed)} blob(s) of its copy could not be removed "
                f"({', '.join(failed[: copy.FAILURES_NAMED])}); the snapshot is kept: "
                "delete it again"
            )
    Snapshots(registry).remove(snapshot)
    return removed
