"""HOME/transfers.db: what downloads placed, and what output mounts must still upload.

Kept apart from the registry: it is machine-local bookkeeping that changes on every file,
and a registry can be shared or copied between machines while this cannot.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

JOURNAL_FILE = "transfers.db"
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
-- Files `amlfs download` wrote and verified: a re-run skips those still as written, and
-- may replace them (another version) where it would refuse to touch anyone else's files.
CREATE TABLE IF NOT EXISTS downloaded (
    dest     TEXT NOT NULL,     -- absolute destination folder
    path     TEXT NOT NULL,     -- relative to dest, '/'-separated
    size     INTEGER NOT NULL,  -- as written
    mtime_ns INTEGER NOT NULL,  -- as written: a changed file is no longer ours to skip
    etag     TEXT NOT NULL,     -- of the source the bytes came from
    PRIMARY KEY (dest, path)
);

-- Partial files of large downloads that a later run into DEST may resume: what each will
-- become, and the part written so far as a digest per chunk. Nothing here is trusted
-- unread: a resuming run reads the partial file again and keeps the chunks that match.
CREATE TABLE IF NOT EXISTS partials (
    dest  TEXT NOT NULL,
    path  TEXT NOT NULL,     -- the file it becomes, relative to dest
    name  TEXT NOT NULL,     -- the partial file's name in that file's folder
    etag  TEXT NOT NULL,     -- of the source being fetched: any other etag starts over
    size  INTEGER NOT NULL,  -- pinned size
    chunk INTEGER NOT NULL,  -- bytes per digest
    PRIMARY KEY (dest, path)
);
CREATE TABLE IF NOT EXISTS partial_chunks (
    dest   TEXT NOT NULL,
    path   TEXT NOT NULL,
    number INTEGER NOT NULL,  -- chunk NUMBER is bytes [NUMBER * chunk, (NUMBER + 1) * chunk)
    sha256 BLOB NOT NULL,     -- of those bytes as written
    PRIMARY KEY (dest, path, number),
    FOREIGN KEY (dest, path) REFERENCES partials (dest, path) ON DELETE CASCADE
);

-- One output mount: where its files go and how far it got.
CREATE TABLE IF NOT EXISTS sessions (
    id         INTEGER PRIMARY KEY,
    datastore  TEXT NOT NULL,
    target     TEXT NOT NULL,   -- folder in the datastore the files go under
    mountpoint TEXT NOT NULL,
    pid        INTEGER NOT NULL,  -- of the daemon serving it
    staging    TEXT NOT NULL,   -- folder of the staged copies
    register   TEXT,            -- dataset to register the files as, on a clean unmount
    state      TEXT NOT NULL CHECK (state IN ('serving', 'closing', 'done')),
    started_at TEXT NOT NULL
);

-- Every closed file of an output mount, recorded before close() returns.
CREATE TABLE IF NOT EXISTS uploads (
    session_id  INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    file_id     INTEGER NOT NULL,  -- the file's inode in its mount
    path        TEXT NOT NULL,     -- where it belongs, relative to the session's target
    staged      TEXT,              -- staged copy (file name in staging) not yet uploaded
    size        INTEGER NOT NULL,  -- of the closed file: the first SIZE bytes of the copy
    md5         BLOB,              -- of the closed file (the staged bytes, or the stored copy)
    remote_path TEXT,              -- where an uploaded copy is (may lag behind a rename)
    etag        TEXT,              -- of that uploaded copy
    removed     INTEGER NOT NULL DEFAULT 0,  -- unlinked: its uploaded copy must go too
    error       TEXT,              -- the last failure, while it keeps failing
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (session_id, file_id)
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Placed:
    size: int
    mtime_ns: int
    etag: str


@dataclass(frozen=True)
class Partial:
    """A partial file of a download that a later run may resume (see amlfs.transfer.resume)."""

    path: str
    name: str
    etag: str
    size: int
    chunk: int
    digests: list[bytes]  # of chunks 0, 1, … as written, in order


@dataclass(frozen=True)
class Session:
    id: int
    datastore: str
    target: str
    mountpoint: str
    pid: int
    staging: str
    register: str | None
    state: str

    @property
    def destination(self) -> str:
        return f"{self.datastore}:{self.target}"


@dataclass(frozen=True)
class Upload:
    """One journaled file of an output mount and what remains to do for it."""

    session_id: int
    file_id: int
    path: str
    staged: str | None
    size: int
    md5: bytes | None
    remote_path: str | None
    etag: str | None
    removed: bool
    error: str | None

    @property
    def settled(self) -> bool:
        """Nothing left to do: stored where it belongs, or removed and gone."""
        if self.removed:
            return self.remote_path is None
        return self.staged is None and self.remote_path == self.path


_UPLOAD_COLUMNS = "session_id, file_id, path, staged, size, md5, remote_path, etag, removed, error"
_SESSION_COLUMNS = "id, datastore, target, mountpoint, pid, staging, register, state"


class Journal:
    """Usable from several threads: each call takes the lock for its whole transaction."""

    def __init__(self, home: Path, *, durable: bool = True):
        """DURABLE: each commit reaches the disk before it returns (output mounts promise
        that of a closed file); downloads only need the bookkeeping to be consistent."""
        self._lock = threading.Lock()
        # Private whatever the umask: SQLite gives its WAL the database file's mode.
        (home / JOURNAL_FILE).touch(mode=0o600)
        self._db = self._connect(home, "FULL" if durable else "NORMAL")
        self._db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
        # Progress a crash may lose without harm goes through a connection of its own that
        # never syncs on commit, so that no setting is ever switched under another
        # thread's commit (the WAL is shared: a later synced commit syncs these too).
        self._lazy = self._connect(home, "NORMAL") if durable else self._db

    @staticmethod
    def _connect(home: Path, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(
            home / JOURNAL_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lazy is not self._db:
                self._lazy.close()

    @contextmanager
    def _transaction(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        db = db or self._db
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # Downloads

    def placed(self, dest: Path) -> dict[str, Placed]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, etag FROM downloaded WHERE dest = ?", (str(dest),)
            ).fetchall()
        return {path: Placed(size, mtime, etag) for path, size, mtime, etag in rows}

    def record_placed(self, dest: Path, path: str, placed: Placed) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO downloaded VALUES (?, ?, ?, ?, ?)",
                (str(dest), path, placed.size, placed.mtime_ns, placed.etag),
            )

    def forget_placed(self, dest: Path) -> None:
        """DEST was removed (a run's downloaded input): nothing there is ours any more."""
        with self._transaction() as db:
            db.execute("DELETE FROM downloaded WHERE dest = ?", (str(dest),))
            db.execute("DELETE FROM partials WHERE dest = ?", (str(dest),))

    def partials(self, dest: Path) -> list[Partial]:
        """The resumable partial files of downloads into DEST, each with the digests of
        its chunks from the first on, up to the first one not recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT path, name, etag, size, chunk FROM partials WHERE dest = ?", (str(dest),)
            ).fetchall()
            chunks = self._db.execute(
                "SELECT path, number, sha256 FROM partial_chunks WHERE dest = ?"
                " ORDER BY path, number", (str(dest),)
            ).fetchall()  # fmt: skip
        digests: dict[str, list[bytes]] = {}
        for path, number, digest in chunks:
            found = digests.setdefault(path, [])
            if number == len(found):  # chunks after a gap are of no use
                found.append(digest)
        return [Partial(path, name, etag, size, chunk, digests.get(path, []))
                for path, name, etag, size, chunk in rows]  # fmt: skip

    def record_partial(self, dest: Path, partial: Partial) -> None:
        """PARTIAL is the partial file of its path now, with its digests as given."""
        with self._transaction() as db:
            db.execute("DELETE FROM partials WHERE dest = ? AND path = ?",
                       (str(dest), partial.path))  # fmt: skip
            db.execute(
                "INSERT INTO partials VALUES (?, ?, ?, ?, ?, ?)",
                (str(dest), partial.path, partial.name, partial.etag, partial.size,
                 partial.chunk),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO partial_chunks VALUES (?, ?, ?, ?)",
                [(str(dest), partial.path, n, d) for n, d in enumerate(partial.digests)],
            )

    def record_chunk(self, dest: Path, path: str, number: int, digest: bytes) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO partial_chunks VALUES (?, ?, ?, ?)",
                       (str(dest), path, number, digest))  # fmt: skip

    def forget_partial(self, dest: Path, path: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM partials WHERE dest = ? AND path = ?", (str(dest), path))

    # Output mounts

    def open_session(self, datastore: str, target: str, mountpoint: str, pid: int,
                     staging: str, register: str | None) -> int:  # fmt: skip
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO sessions (datastore, target, mountpoint, pid, staging, register,"
                " state, started_at) VALUES (?, ?, ?, ?, ?, ?, 'serving', ?)",
                (datastore, target, mountpoint, pid, staging, register, now()),
            )
            return int(cursor.lastrowid)

    def set_state(self, session_id: int, state: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, session_id))

    def session(self, session_id: int) -> Session:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return Session(*row)

    def unfinished(self) -> list[Session]:
        """Sessions not yet done: serving, or with uploads or a registration left."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE state != 'done' ORDER BY id"
            ).fetchall()
        return [Session(*row) for row in rows]

    def record(self, upload: Upload, *, durable: bool = True) -> None:
        """Write one file's row; durable when this returns (see __init__) unless not
        DURABLE: for progress that a crash may lose without harm (an upload done again)."""
        with self._transaction(self._db if durable else self._lazy) as db:
            db.execute(
                f"INSERT OR REPLACE INTO uploads ({_UPLOAD_COLUMNS}, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (upload.session_id, upload.file_id, upload.path, upload.staged, upload.size,
                 upload.md5, upload.remote_path, upload.etag, int(upload.removed),
                 upload.error, now()),
            )  # fmt: skip

    def forget(self, session_id: int, file_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM uploads WHERE session_id = ? AND file_id = ?", (session_id, file_id)
            )

    def uploads(self, session_id: int) -> list[Upload]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE session_id = ? ORDER BY path",
                (session_id,),
            ).fetchall()
        return [_upload(row) for row in rows]


def _upload(row: tuple) -> Upload:
    values = list(row)
    values[8] = bool(values[8])
    return Upload(*values)
