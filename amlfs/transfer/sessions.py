"""Who owns an output mount's session: the daemon serving it, then at most one settler.

A session is alive while the lock on `STAGING/.session.lock` is held (staged copies are
named `<inode>.<generation>`, so the name is free). The daemon takes it before the
session is journaled and keeps it until it ends; the kernel releases it when the daemon
dies, also on SIGKILL, and then anyone may settle the session: `amlfs output resume`, or
a new mount of the same destination. Each settler claims the lock first, so two never
upload, delete or register for one session at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amlfs import locks
from amlfs.errors import AmlfsError
from amlfs.transfer.journal import Journal, Session

LOCK_NAME = ".session.lock"
SERVING, SETTLING = "serving", "settling"  # what a holder writes into the lock file


class SessionBusy(AmlfsError):
    def __init__(self, session: Session, pid: int | None = None):
        by = f"pid {pid}" if pid is not None else "a mount of it, or `amlfs output resume`"
        super().__init__(f"session {session.id} of {session.destination} is being settled"
                         f" by another amlfs process ({by})")  # fmt: skip


def hold_for_daemon(staging: Path) -> None:
    """In the daemon, on its fresh staging folder, before it journals the session: the
    session is its own until the process ends (the lock is never released before)."""
    held = locks.hold(staging / LOCK_NAME)
    if held is None:
        raise AmlfsError(f"{staging} is in use by another mount")
    held.write(json.dumps({"role": SERVING, "pid": os.getpid()}))


def alive(session: Session) -> bool:
    """Whether the daemon of SESSION, or a settler, holds it."""
    return locks.held(Path(session.staging) / LOCK_NAME)


def settler(session: Session) -> int | None:
    """The pid of the process settling SESSION (its daemon is gone), if one is."""
    path = Path(session.staging) / LOCK_NAME
    if not locks.held(path):
        return None
    try:
        holder = json.loads(locks.read(path))
    except ValueError:
        return None  # just taken, not yet said by whom: its daemon starting, most likely
    return holder["pid"] if holder.get("role") == SETTLING else None


@contextmanager
def claim_session(journal: Journal, session: Session) -> Iterator[Session | None]:
    """Own SESSION for the block, or raise SessionBusy (never waits). Yields the session
    as the journal has it now: None if another settler finished it meanwhile."""
    staging = Path(session.staging)
    # A lost staging folder (its copies are settled from storage) still needs a lock.
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    held = locks.hold(staging / LOCK_NAME)
    if held is None:
        raise SessionBusy(session, settler(session))
    done = False
    try:
        held.write(json.dumps({"role": SETTLING, "pid": os.getpid()}))
        current = journal.session(session.id)
        done = current.state == "done"
        yield None if done else current
    finally:
        held.release()
        if done:  # its settler had removed the folder we made again
            with contextlib.suppress(OSError):
                staging.rmdir()
