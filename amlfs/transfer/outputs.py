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

from amlfs.errors import AmlfsError, NotAsStored, StorageError
from amlfs.registry import paths
from amlfs.registry.models import NewVersion, PinnedFile, Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.transfer import sessions
from amlfs.transfer.files import some_names
from amlfs.transfer.journal import JOURNAL_FILE, Journal, Session, Upload
from amlfs.transfer.parallel import with_retries

log = logging.getLogger(__name__)


def settle(store: Store, target: str, staging: Path, row: Upload,
           stored_at: dict[str, str]) -> Upload:  # fmt: skip
    """Do what ROW still needs and return it settled (raises StorageError, SourceChanged,
    OSError). The caller makes sure no other operation on ROW's names runs meanwhile.

    STORED_AT maps each name to the etag of what this session last stored there (kept up
    to date here). Every overwrite is conditional on it (a name not in it is overwritten
    whatever it holds: the destination's earlier contents), and every delete on the etag of
    the file being removed, so that a file stored at a name since is never removed, and a
    file someone else put there is never overwritten (NotAsStored).
    """
    if row.removed:
        if row.remote_path is not None:
            _delete_ours(store, target, row.remote_path, row.etag, stored_at)
        return replace(row, staged=None, remote_path=None, error=None)
    if row.staged is not None:
        local = staging / row.staged
        if not local.exists():
            pinned = _stored_before(store, target, row)
        else:
            pinned = _put(store, local, target, row, stored_at.get(row.path))
    elif row.remote_path != row.path:
        assert row.remote_path is not None and row.etag is not None  # staged until stored
        pinned = store.copy(paths.join(target, row.remote_path), paths.join(target, row.path),
                            source_etag=row.etag, if_match=stored_at.get(row.path))  # fmt: skip
    else:
        return replace(row, error=None)
    stored_at[row.path] = pinned.etag
    if row.remote_path is not None and row.remote_path != row.path:
        _delete_ours(store, target, row.remote_path, row.etag, stored_at)
    return replace(row, staged=None, remote_path=row.path, etag=pinned.etag,
                   md5=row.md5 or pinned.md5, error=None)  # fmt: skip


def _put(store: Store, local: Path, target: str, row: Upload, if_match: str | None) -> PinnedFile:
    """Upload the first ROW.size bytes of LOCAL (what the close saw; the copy may have
    grown since) to ROW.path."""
    name = paths.join(target, row.path)
    try:
        return store.upload(local, name, row.md5, size=row.size, if_match=if_match)
    except NotAsStored:
        # An earlier try may have been stored although its answer was lost: then the name
        # holds exactly these bytes, and that is what it should hold.
        there = store.stat(name)
        if there is None or there.size != row.size or store.digest(name) != row.md5:
            raise
        return there


def _stored_before(store: Store, target: str, row: Upload) -> PinnedFile:
    """The staged copy is gone: staged copies are deleted only after their upload, and the
    row saying so was not synced (see OutputFiles._settle_once), so a crash lost it. The
    upload is done if, and only if, the name holds exactly the journaled bytes."""
    name = paths.join(target, row.path)
    there = store.stat(name)
    if there is None or row.md5 is None or there.size != row.size or store.digest(name) != row.md5:
        raise StorageError(f"{row.path}: staged copy lost, and what storage holds there is"
                           " not the closed file")  # fmt: skip
    return there


def _delete_ours(store: Store, target: str, name: str, etag: str | None,
                 stored_at: dict[str, str]) -> None:  # fmt: skip
    """Remove NAME if it still holds the file with ETAG (else it holds a newer file)."""
    store.delete(paths.join(target, name), if_match=etag)
    if etag is not None and stored_at.get(name) == etag:
        del stored_at[name]


def stored_names(rows: list[Upload]) -> dict[str, str]:
    """What a session last stored at each name, as its journal says (for a resume)."""
    names = {r.remote_path: r.etag for r in rows if r.removed and r.remote_path and r.etag}
    names |= {r.remote_path: r.etag for r in rows if not r.removed and r.remote_path and r.etag}
    return names


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
    """Sessions with work left that nobody holds: their daemon is gone (killed, or the
    machine restarted) and no one is settling them. Settle one only after claiming it
    (`sessions.claim_session`): another settler may have found it too."""
    for session in _unfinished(journal, destination):
        if not sessions.alive(session):
            yield session


def being_settled(journal: Journal, destination: str | None = None) -> list[Session]:
    """Sessions whose daemon is gone and which another process is settling now."""
    return [s for s in _unfinished(journal, destination) if sessions.settler(s) is not None]


def _unfinished(journal: Journal, destination: str | None) -> Iterator[Session]:
    for session in journal.unfinished():
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
    rows = journal.uploads(session.id)
    stored_at = stored_names(rows)
    # Removals first: each deletes only what its own file stored, so none can remove a
    # file that a later close put at the same name.
    for row in sorted(rows, key=lambda r: not r.removed):
        if row.settled:
            continue
        try:
            done = with_retries(
                lambda row=row: settle(store, session.target, staging, row, stored_at), row.path
            )
        except (AmlfsError, OSError) as error:  # this file stays pending; the others go on
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


def check_dead_sessions(home: Path, mountpoint: Path) -> None:
    """After detaching a mount whose daemon was dead: raise UploadsPending if an output
    mount that served there left files not uploaded (the journal says; a status record
    could be an earlier mount's)."""
    if not (home / JOURNAL_FILE).exists():
        return  # no output mount ever served from this HOME
    journal = Journal(home)
    try:
        dead = [s for s in orphaned(journal) if s.mountpoint == str(mountpoint)]
    finally:
        journal.close()
    for session in dead:
        ended_session(home, session.id)


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
