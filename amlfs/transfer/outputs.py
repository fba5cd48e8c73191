"""Finishing what an output mount journaled: one file at a time, also after a crash.

A journaled file is settled when its staged copy is stored under its current path and
no stored copy is left under an old path (after a rename) or of a removed file. The
same function settles a file for the daemon that is serving the mount and for
`amlfs output resume` after that daemon is gone.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from amlfs.errors import AmlfsError, StorageError
from amlfs.mounts import daemon_alive
from amlfs.registry import paths
from amlfs.registry.models import NewVersion, PinnedFile, Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.transfer.files import md5_of, some_names
from amlfs.transfer.journal import Journal, Session, Upload
from amlfs.transfer.parallel import with_retries

log = logging.getLogger(__name__)


def settle(store: Store, target: str, staging: Path, row: Upload) -> Upload:
    """Do what ROW still needs and return it settled (raises StorageError, OSError)."""
    if row.removed:
        if row.remote_path is not None:
            store.delete(paths.join(target, row.remote_path))
        return replace(row, staged=None, remote_path=None, error=None)
    etag, md5 = row.etag, row.md5
    if row.staged is not None and not (staging / row.staged).exists():
        # Staged copies are deleted only after their upload; the row saying so was not
        # synced (see OutputFiles._settle) and a machine crash lost it. The upload is done.
        there = store.stat(paths.join(target, row.path))
        if there is None or there.size != row.size:
            raise StorageError(f"{row.path}: staged copy lost and not in storage")
        return replace(row, staged=None, remote_path=row.path, etag=there.etag,
                       md5=there.md5 or row.md5, error=None)  # fmt: skip
    if row.staged is not None:
        local = staging / row.staged
        size = local.stat().st_size
        if size != row.size:  # never the case: a journaled staged copy is never written
            raise StorageError(f"{row.path}: staged copy has {size} bytes, journaled {row.size}")
        md5 = md5_of(local)
        etag = store.upload(local, paths.join(target, row.path), md5).etag
    elif row.remote_path != row.path:
        assert row.remote_path is not None  # a file is staged until first uploaded
        etag = store.copy(paths.join(target, row.remote_path), paths.join(target, row.path)).etag
    if row.remote_path is not None and row.remote_path != row.path:
        store.delete(paths.join(target, row.remote_path))
    return replace(row, staged=None, remote_path=row.path, etag=etag, md5=md5, error=None)


def pinned_files(rows: list[Upload]) -> list[PinnedFile]:
    """The settled, present files of a session as a version's files."""
    return [
        PinnedFile(row.path, row.size, row.etag or "", row.md5)
        for row in rows
        if not row.removed and row.settled
    ]


def register_session(registry: Registry, session: Session, rows: list[Upload]) -> Version:
    return registry.register(session_version(session, rows, session.register or ""))


def session_version(session: Session, rows: list[Upload], dataset: str) -> NewVersion:
    """The files an output mount stored, as the next version of DATASET."""
    return NewVersion(dataset=dataset, datastore=session.datastore, root=session.target,
                      sources=[session.target], files=pinned_files(rows))  # fmt: skip


def orphaned(journal: Journal, destination: str | None = None) -> Iterator[Session]:
    """Sessions with work left whose daemon is gone (killed, or the machine restarted)."""
    for session in journal.unfinished():
        if daemon_alive(session.pid):
            continue
        if destination is None or session.destination == destination:
            yield session


def resume(
    journal: Journal,
    registry: Registry | None,
    session: Session,
    open_store: Callable[[str], Store],
    progress: Callable[[Upload], None] | None = None,
) -> tuple[list[Upload], Version | None]:
    """Settle every row of SESSION. Returns the rows still failing, and the version
    registered if the session had reached its unmount and asked for one (without a
    REGISTRY, such a session stays open for a later resume to register)."""
    store = open_store(session.datastore)
    staging = Path(session.staging)
    failing = []
    for row in journal.uploads(session.id):
        if row.settled:
            continue
        try:
            done = with_retries(lambda row=row: settle(store, session.target, staging, row),
                                row.path)  # fmt: skip
        except (StorageError, OSError) as error:
            journal.record(replace(row, error=str(error)))
            failing.append(replace(row, error=str(error)))
            continue
        journal.record(done)
        _drop_staged(staging, row)
        if progress:
            progress(done)
    if failing:
        return failing, None
    rows = journal.uploads(session.id)
    version = None
    if session.register and session.state == "closing" and pinned_files(rows):
        if registry is None:
            return [], None
        version = register_session(registry, session, rows)
        log.info("registered %s from %s", version.ref, session.destination)
    journal.set_state(session.id, "done")
    shutil.rmtree(staging, ignore_errors=True)
    return [], version


def ended_session(home: Path, session_id: int) -> tuple[Session, list[Upload]]:
    """An output mount's session and its rows once its daemon has ended; raises
    UploadsPending if any file is not uploaded (it stays staged and journaled)."""
    journal = Journal(home)
    try:
        session, rows = journal.session(session_id), journal.uploads(session_id)
    finally:
        journal.close()
    if unsettled := [row for row in rows if not row.settled]:
        raise UploadsPending(session, unsettled)
    return session, rows


def _drop_staged(staging: Path, row: Upload) -> None:
    if row.staged is not None:
        (staging / row.staged).unlink(missing_ok=True)


class UploadsPending(AmlfsError):
    def __init__(self, session: Session, rows: list[Upload]):
        super().__init__(
            f"{len(rows)} file(s) of {session.destination} not uploaded"
            f" ({some_names([r.path for r in rows])}):"
            f" {rows[0].error or 'the mount ended before they were uploaded'};"
            f" they stay staged in {session.staging}; `amlfs output resume` retries"
        )
