"""The Registry: the store of record for datastores, datasets and their pinned versions."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from amlfs.errors import Conflict, NotFound, UserError
from amlfs.registry import paths
from amlfs.registry import shared as scopes
from amlfs.registry.models import Datastore, Entry, NewVersion, PinnedFile, Version
from amlfs.registry.schema import SCHEMA_VERSION, migrate
from amlfs.registry.shared import Change, Shared

log = logging.getLogger(__name__)

# Writers wait this long for another writer's transaction (a registration of a million
# files holds the lock for seconds) before giving up with "database is locked".
BUSY_TIMEOUT_S = 120.0

_VERSION_COLUMNS = """
    v.id, d.name, v.version, s.name, v.root, v.sources, v.description, v.tags,
    v.file_count, v.total_bytes, v.manifest_sha256, v.created_at, p.pruned_at
"""
_VERSION_FROM = """
    FROM versions v JOIN datasets d ON d.id = v.dataset_id
    JOIN datastores s ON s.id = v.datastore_id
    LEFT JOIN prunes p ON p.version_id = v.id
"""
_ENTRY_COLUMNS = "id, parent_id, name, is_dir, size, etag, md5, last_modified"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def manifest_digest(datastore: str, root: str, files: list[PinnedFile]) -> str:
    """SHA-256 over what a version pins, files in path order: equal digests, equal pins."""
    digest = hashlib.sha256(f"{datastore}\n{root}\n".encode())
    for f in sorted(files, key=lambda f: f.path):
        md5 = f.md5.hex() if f.md5 else ""
        digest.update(f"{f.path}\0{f.size}\0{f.etag}\0{md5}\n".encode())
    return digest.hexdigest()


def _checked_digest(new: NewVersion, *, copy: bool = False) -> str:
    """The manifest digest of NEW, once its name and paths are known to form a tree. A
    COPY (of a snapshot) goes to paths.COPIES_DATASET, the one name users cannot give."""
    if not copy:
        paths.check_name("dataset", new.dataset)
    if not new.files:
        raise UserError(f"cannot register {new.dataset}: no files")
    problem = next(filter(None, map(paths.path_problem, (f.path for f in new.files))), None)
    if problem is None and (conflict := paths.tree_problem(f.path for f in new.files)):
        problem = conflict[1]
    if problem:
        raise UserError(f"cannot register {new.dataset}: {problem}")
    return manifest_digest(new.datastore, new.root, new.files)


class Registry:
    """One connection to the registry database. Not shared between threads."""

    def __init__(self, path: Path):
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self.shared: Shared | None = None  # the catalog's side, when attached to one
        self._changes: list[Change] = []
        if self._conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with self.transaction():
                migrate(self._conn)

    @property
    def attached(self) -> bool:
        """Whether this registry is shared through a catalog (amlfs.catalog)."""
        return self._conn.execute("SELECT 1 FROM catalog").fetchone() is not None

    def catch_up(self, scope: str) -> None:
        """Before answering from SCOPE (registry/shared.py), read what changed there in
        the catalog, if this registry is shared through one."""
        if self.shared is not None:
            self.shared.catch_up(self, scope)

    def changed(self, kind: str, *key: object) -> None:
        """Note, inside a write transaction, that record KEY of KIND changed: it is
        published to the catalog, if there is one, before the transaction commits."""
        assert self._conn.in_transaction, "changes are noted inside the transaction"
        self._changes.append(Change(kind, key))

    def _shared(self) -> Shared | None:
        """The catalog to write through, or None when the registry is not attached. An
        attached registry opened without its catalog refuses to write (the catalog
        would miss the change)."""
        if not self.attached:
            return None
        if self.shared is None:
            raise UserError(
                f"{self.path} is attached to a catalog, but was opened without it:"
                " open it with amlfs.catalog.open_registry"
            )
        return self.shared

    def close(self) -> None:
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For the registry's other tables (see registry/runs.py); writes go in transaction()."""
        return self._conn

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; nested uses join the outer one.

        BEGIN IMMEDIATE takes the write lock up front, so reads made inside (such as
        "the highest version of NAME") cannot be invalidated by another writer before
        our insert: that is what makes concurrent version numbers distinct.
        """
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._changes = []
        try:
            yield
            if self._changes and (shared := self._shared()) is not None:
                shared.publish(self, self._changes)  # before COMMIT: all, or nothing here
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        finally:
            self._changes = []
        self._conn.execute("COMMIT")

    # -- datastores ---------------------------------------------------------------

    def add_datastore(self, ds: Datastore) -> Datastore:
        paths.check_name("datastore", ds.name)
        self.catch_up(scopes.DATASTORES)
        with self.transaction():
            if self._datastore_row(ds.name):
                raise Conflict(f"datastore {ds.name!r} already exists")
            created = now()
            self._conn.execute(
                "INSERT INTO datastores (name, url, credential, credential_env, account_name,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (ds.name, ds.url, ds.credential, ds.credential_env, ds.account_name, created),
            )
            self.changed("datastore", ds.name)
        return self.get_datastore(ds.name)

    def put_datastore(self, ds: Datastore) -> str:
        """Declare DS: 'created', 'updated' (credential source changed) or 'unchanged'.
        Changing the URL of a datastore is refused: its versions pin paths below it."""
        self.catch_up(scopes.DATASTORES)
        with self.transaction():
            try:
                current = self.get_datastore(ds.name)
            except NotFound:
                self.add_datastore(ds)
                return "created"
            if current.url != ds.url:
                raise Conflict(
                    f"datastore {ds.name!r} exists with URL {current.url!r}, not {ds.url!r}; "
                    "versions pin files below its URL, so it cannot change"
                )
            wanted = (ds.credential, ds.credential_env, ds.account_name)
            if wanted == (current.credential, current.credential_env, current.account_name):
                return "unchanged"
            self._conn.execute(
                "UPDATE datastores SET credential = ?, credential_env = ?, account_name = ?"
                " WHERE name = ?",
                (*wanted, ds.name),
            )
            self.changed("datastore", ds.name)
            return "updated"

    def get_datastore(self, name: str) -> Datastore:
        row = self._datastore_row(name)
        if row is None:
            self.catch_up(scopes.DATASTORES)
            row = self._datastore_row(name)
        if row is None:
            raise NotFound(f"no datastore named {name!r}")
        return Datastore(*row[1:])

    def list_datastores(self) -> list[Datastore]:
        self.catch_up(scopes.DATASTORES)
        rows = self._conn.execute(
            "SELECT name, url, credential, credential_env, account_name, created_at"
            " FROM datastores ORDER BY name"
        )
        return [Datastore(*row) for row in rows]

    def remove_datastore(self, name: str) -> None:
        self.catch_up(scopes.VERSIONS)  # a version registered elsewhere may use it
        with self.transaction():
            row = self._datastore_row(name)
            if row is None:
                raise NotFound(f"no datastore named {name!r}")
            (used,) = self._conn.execute(
                "SELECT COUNT(*) FROM versions WHERE datastore_id = ?", (row[0],)
            ).fetchone()
            if used:
                raise Conflict(
                    f"datastore {name!r} is used by {used} dataset version(s); "
                    "versions are permanent, so it cannot be removed"
                )
            self._conn.execute("DELETE FROM datastores WHERE id = ?", (row[0],))
            self.changed("datastore", name)

    def _datastore_row(self, name: str) -> tuple | None:
        return self._conn.execute(
            "SELECT id, name, url, credential, credential_env, account_name, created_at"
            " FROM datastores WHERE name = ?",
            (name,),
        ).fetchone()

    # -- versions -----------------------------------------------------------------

    def register(self, new: NewVersion) -> Version:
        """Store NEW as the next version of its dataset, all in one transaction."""
        return self._register(new, _checked_digest(new))

    def register_copy(self, new: NewVersion) -> Version:
        """Store NEW (a snapshot's copy) as a version of the hidden COPIES_DATASET; the
        caller records the snapshot that owns it in the same transaction."""
        new = replace(new, dataset=paths.COPIES_DATASET)
        return self._register(new, _checked_digest(new, copy=True))

    def import_version(self, new: NewVersion) -> tuple[Version, bool]:
        """Register NEW unless the dataset's latest version pins exactly the same files:
        (the version, whether it was created). Importing a manifest twice is harmless."""
        digest = _checked_digest(new)
        with self.transaction():
            latest = self.latest(new.dataset)
            if latest is not None and latest.manifest_sha256 == digest:
                return latest, False
            return self._register(new, digest), True

    def _register(self, new: NewVersion, digest: str) -> Version:
        with self.transaction():
            self._datastore_id(new.datastore)  # NotFound before anything is claimed
            dataset_id = self._dataset_id(new.dataset, create=True)
            (number,) = self._conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE dataset_id = ?",
                (dataset_id,),
            ).fetchone()
            created_at = now()
            if (shared := self._shared()) is not None:
                number = shared.claim_version(self, new, digest, created_at, number)
            version_id = self.store_version(new, number, digest, created_at)
        log.info("registered %s:%d (%d files)", new.dataset, number, len(new.files))
        return self.stored_version(version_id)

    def store_version(self, new: NewVersion, number: int, digest: str, created_at: str, *,
                      forgotten: tuple[int, int] | None = None) -> int:  # fmt: skip
        """Insert NEW as version NUMBER of its dataset, with its derivation, and return its
        row id: for _register, and for a version read from the catalog. FORGOTTEN: the
        version's files were forgotten (a deleted snapshot's copy) and these were its file
        count and bytes; its row stays."""
        assert self._conn.in_transaction, "a version is inserted whole, in one transaction"
        datastore_id = self._datastore_id(new.datastore)
        dataset_id = self._dataset_id(new.dataset, create=True)
        totals = forgotten or (len(new.files), sum(f.size for f in new.files))
        cursor = self._conn.execute(
            "INSERT INTO versions (dataset_id, version, datastore_id, root, sources,"
            " description, tags, file_count, total_bytes, manifest_sha256, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                dataset_id, number, datastore_id, new.root, json.dumps(new.sources),
                new.description, json.dumps(new.tags, sort_keys=True), *totals, digest,
                created_at,
            ),
        )  # fmt: skip
        version_id = cursor.lastrowid
        if forgotten is None:
            self._insert_tree(version_id, new.files)
        if (made := new.derived_from) is not None:
            self._conn.execute(
                "INSERT INTO derivations (version_id, parent_version_id, operation, parameters)"
                " VALUES (?, ?, ?, ?)",
                (version_id, made.parent.id, made.operation, json.dumps(made.parameters)),
            )
        return version_id

    def _insert_tree(self, version_id: int, files: list[PinnedFile]) -> None:
        """Insert the root, the folders and the files, parents before children and
        siblings in name order, with ids assigned here so one executemany does it all."""
        (next_id,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM entries").fetchone()
        root_id = next_id
        rows: list[tuple] = [(root_id, version_id, None, "", 1, None, None, None, None)]
        folder_ids = {"": root_id}
        for f in sorted(files, key=lambda f: f.path.split("/")):
            parts = f.path.split("/")
            parent = ""
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in folder_ids:
                    next_id += 1
                    folder_ids[folder] = next_id
                    rows.append(
                        (next_id, version_id, folder_ids[parent], parts[depth - 1], 1,
                         None, None, None, None)
                    )  # fmt: skip
                parent = folder
            next_id += 1
            rows.append(
                (next_id, version_id, folder_ids[parent], parts[-1], 0,
                 f.size, f.etag, f.md5, f.last_modified)
            )  # fmt: skip
        self._conn.executemany(
            "INSERT INTO entries (id, version_id, parent_id, name, is_dir, size, etag, md5,"
            " last_modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def get_version(self, dataset: str, version: int | None = None) -> Version:
        """VERSION of DATASET, or its latest when VERSION is None."""
        self.catch_up(scopes.dataset_scope(dataset))  # new versions, snapshots, prunes
        dataset_id = self._dataset_id(dataset)
        if version is None:
            row = self._conn.execute(
                f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM}"
                " WHERE v.dataset_id = ? ORDER BY v.version DESC LIMIT 1",
                (dataset_id,),
            ).fetchone()
        else:
            row = self._conn.execute(
                f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM}"
                " WHERE v.dataset_id = ? AND v.version = ?",
                (dataset_id, version),
            ).fetchone()
        if row is None:
            raise NotFound(f"dataset {dataset!r} has no version {version}")
        return _version(row)

    def version_by_id(self, version_id: int) -> Version:
        """The version with this row id; a snapshot's copy as its snapshot (NAME:V@SNAP)."""
        found = self.stored_version(version_id)
        if found.dataset != paths.COPIES_DATASET:
            return found
        row = self._conn.execute(
            "SELECT version_id, name FROM snapshots WHERE copy_version_id = ?", (version_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no version with id {version_id}")
        # Also for a deleted snapshot: the runs that read it still name it.
        return _as_snapshot(self.stored_version(row[0]), row[1], found)

    def stored_version(self, version_id: int) -> Version:
        """The version row with this id as stored (a snapshot's copy as a version of the
        hidden COPIES_DATASET)."""
        row = self._conn.execute(
            f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} WHERE v.id = ?", (version_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no version with id {version_id}")
        return _version(row)

    def _snapshot_of(self, version: Version, name: str) -> Version:
        """Snapshot NAME of VERSION, read as its copy if it has one, else as VERSION."""
        self.catch_up(scopes.dataset_scope(version.dataset))
        row = self._conn.execute(
            "SELECT copy_version_id FROM snapshots"
            " WHERE version_id = ? AND name = ? AND deleted_at IS NULL",
            (version.id, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"{version.ref} has no snapshot {name!r}")
        return _as_snapshot(version, name, self.stored_version(row[0]) if row[0] else version)

    def latest(self, dataset: str) -> Version | None:
        """The highest version of DATASET, or None if it has none yet."""
        try:
            return self.get_version(dataset)
        except NotFound:
            return None

    def resolve(self, ref: str) -> Version:
        """A `NAME[:VERSION]` reference to its version, `NAME:VERSION@SNAP` to its snapshot."""
        if "@" in ref:
            name, number, snapshot = paths.parse_snapshot_ref(ref)
            return self._snapshot_of(self.get_version(name, number), snapshot)
        return self.get_version(*paths.parse_version_ref(ref))

    def list_versions(self, dataset: str) -> list[Version]:
        self.catch_up(scopes.dataset_scope(dataset))
        rows = self._conn.execute(
            f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM} WHERE v.dataset_id = ? ORDER BY v.version",
            (self._dataset_id(dataset),),
        )
        return [_version(row) for row in rows]

    def list_datasets(self) -> list[Version]:
        """The latest version of every dataset, by name."""
        self.catch_up(scopes.VERSIONS)
        rows = self._conn.execute(
            f"SELECT {_VERSION_COLUMNS} {_VERSION_FROM}"
            " WHERE v.version = (SELECT MAX(version) FROM versions WHERE dataset_id = d.id)"
            " AND d.name != ? ORDER BY d.name",
            (paths.COPIES_DATASET,),
        )
        return [_version(row) for row in rows]

    def _dataset_id(self, name: str, *, create: bool = False) -> int:
        row = self._conn.execute("SELECT id FROM datasets WHERE name = ?", (name,)).fetchone()
        if row and (create or name != paths.COPIES_DATASET):  # never named from outside
            return row[0]
        if not create:
            raise NotFound(f"no dataset named {name!r}")
        cursor = self._conn.execute(
            "INSERT INTO datasets (name, created_at) VALUES (?, ?)", (name, now())
        )
        return cursor.lastrowid

    def _datastore_id(self, name: str) -> int:
        row = self._datastore_row(name)
        if row is None:
            raise NotFound(f"no datastore named {name!r}")
        return row[0]

    # -- the pinned tree of a version ----------------------------------------------

    def root(self, version: Version) -> Entry:
        row = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? AND parent_id IS NULL",
            (version.id,),
        ).fetchone()
        return _entry(row)

    def entry(self, entry_id: int, version: Version | None = None) -> Entry | None:
        """The entry with this id (of VERSION only, when given): one primary-key probe."""
        if version is None:
            row = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
        else:
            row = self._conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ? AND version_id = ?",
                (entry_id, version.id),
            ).fetchone()
        return _entry(row) if row else None

    def lookup(self, folder_id: int, name: str) -> Entry | None:
        """The entry called NAME in folder FOLDER_ID: one probe of entries_by_parent."""
        row = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent_id = ? AND name = ?",
            (folder_id, name),
        ).fetchone()
        return _entry(row) if row else None

    def list_folder(self, folder_id: int, after: str = "", limit: int = 1000) -> list[Entry]:
        """Up to LIMIT entries of folder FOLDER_ID whose names sort after AFTER, in name
        order: a listing is resumed from the last name returned, one index range scan."""
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent_id = ? AND name > ?"
            " ORDER BY name LIMIT ?",
            (folder_id, after, limit),
        )
        return [_entry(row) for row in rows]

    def iter_files(self, version: Version) -> Iterator[PinnedFile]:
        """Every file of VERSION with its path, in tree order, without loading them all."""
        folder_paths: dict[int, str] = {}
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE version_id = ? ORDER BY id",
            (version.id,),
        )
        for row in rows:
            entry = _entry(row)
            path = paths.join(folder_paths.get(entry.parent_id, ""), entry.name)
            if entry.is_dir:
                folder_paths[entry.id] = path
            else:
                yield PinnedFile(path, entry.size, entry.etag, entry.md5, entry.last_modified)


def _as_snapshot(version: Version, name: str, read: Version) -> Version:
    """VERSION's snapshot NAME, whose files are those of READ (its copy, or VERSION)."""
    return replace(version, id=read.id, datastore=read.datastore, root=read.root,
                   sources=read.sources, snapshot=name, pruned_at=read.pruned_at)  # fmt: skip


def _version(row: tuple) -> Version:
    (vid, dataset, number, datastore, root, sources, description, tags,
     file_count, total_bytes, digest, created_at, pruned_at) = row  # fmt: skip
    return Version(
        vid, dataset, number, datastore, root, json.loads(sources), description,
        json.loads(tags), file_count, total_bytes, digest, created_at, pruned_at=pruned_at,
    )  # fmt: skip


def _entry(row: tuple) -> Entry:
    eid, parent_id, name, is_dir, size, etag, md5, last_modified = row
    return Entry(eid, parent_id, name, bool(is_dir), size or 0, etag, md5, last_modified)
