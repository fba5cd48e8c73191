"""The snapshots table: which version a snapshot names, its profile, and where its copy is.

A snapshot with a copy owns a version of the hidden dataset paths.COPIES_DATASET that
pins the copied blobs; the registry resolves `NAME:VERSION@SNAP` to that version
(Registry.resolve), so every read path serves the copy without knowing about snapshots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from amlfs.errors import Conflict, NotFound
from amlfs.registry import paths
from amlfs.registry import shared as scopes
from amlfs.registry.models import NewVersion, Version
from amlfs.registry.store import Registry, now


@dataclass(frozen=True)
class Snapshot:
    """Snapshot NAME of VERSION (the version itself, not its copy)."""

    version: Version
    name: str
    created_at: str
    profile: dict  # amlfs.profile.Profile.to_json() when the snapshot was taken
    copy: Version | None  # the version pinning the copy's blobs, if there is a copy
    copy_location: str | None  # DATASTORE:PATH the copy's files are below

    @property
    def ref(self) -> str:
        return f"{self.version.ref}@{self.name}"

    def public_dict(self) -> dict:
        copy = None
        if self.copy is not None:
            copy = {
                "location": self.copy_location,
                "datastore": self.copy.datastore,
                "root": self.copy.root,
                "manifest_sha256": self.copy.manifest_sha256,
            }
        return {"snapshot": self.ref, "dataset": self.version.dataset,
                "version": self.version.version, "name": self.name,
                "created_at": self.created_at, "copy": copy}  # fmt: skip


_COLUMNS = "version_id, name, created_at, profile, copy_version_id, copy_location"


class Snapshots:
    """The snapshots of one registry."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._conn = registry.connection

    def record(
        self,
        version: Version,
        name: str,
        profile: dict,
        copy: NewVersion | None = None,
        copy_location: str | None = None,
    ) -> Snapshot:
        """Record snapshot NAME of VERSION, and its COPY's pins, in one transaction."""
        paths.check_name("snapshot", name)
        self.registry.catch_up(scopes.dataset_scope(version.dataset))
        with self.registry.transaction():
            if self._row(version, name) is not None:
                raise Conflict(f"{version.ref} already has a snapshot named {name!r}")
            copy_id = self.registry.register_copy(copy).id if copy is not None else None
            self._conn.execute(
                f"INSERT INTO snapshots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (version.id, name, now(), json.dumps(profile), copy_id, copy_location),
            )
            self.registry.changed("snapshot", version.id, name)
        return self.get(version, name)

    def exists(self, version: Version, name: str) -> bool:
        return self._row(version, name) is not None

    def get(self, version: Version, name: str) -> Snapshot:
        row = self._row(version, name)
        if row is None:
            raise NotFound(f"{version.ref} has no snapshot {name!r}")
        return self._snapshot(row)

    def by_ref(self, ref: str) -> Snapshot:
        """The snapshot `NAME:VERSION@SNAP` names."""
        name, number, snapshot = paths.parse_snapshot_ref(ref)
        return self.get(self.registry.get_version(name, number), snapshot)

    def of(self, version: Version) -> list[Snapshot]:
        """VERSION's snapshots, oldest first."""
        self.registry.catch_up(scopes.dataset_scope(version.dataset))
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE version_id = ? AND deleted_at IS NULL"
            " ORDER BY id",
            (version.id,),
        ).fetchall()
        return [self._snapshot(row) for row in rows]

    def list(self, dataset: str | None = None, version: int | None = None) -> list[Snapshot]:
        """Every snapshot (of DATASET, of its VERSION), by dataset, version, then age."""
        query = (
            f"SELECT {', '.join('s.' + c.strip() for c in _COLUMNS.split(','))}"
            " FROM snapshots s JOIN versions v ON v.id = s.version_id"
            " JOIN datasets d ON d.id = v.dataset_id"
        )
        where, args = ["s.deleted_at IS NULL"], []
        self.registry.catch_up(
            scopes.VERSIONS if dataset is None else scopes.dataset_scope(dataset)
        )
        if dataset is not None:
            self.registry.get_version(dataset, version)  # NotFound for an unknown one
            where.append("d.name = ?")
            args.append(dataset)
        if version is not None:
            where.append("v.version = ?")
            args.append(version)
        query += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(query + " ORDER BY d.name, v.version, s.id", args).fetchall()
        return [self._snapshot(row) for row in rows]

    def remove(self, snapshot: Snapshot) -> None:
        """Forget SNAPSHOT and its copy's pins (the caller removed the copy's blobs).

        A snapshot without a copy goes entirely. One with a copy keeps its row, marked
        deleted, and its copy's version row without entries: run_inputs may name that
        version, and lineage still shows such a run's input as NAME:VERSION@SNAP."""
        with self.registry.transaction():
            self.registry.changed("snapshot", snapshot.version.id, snapshot.name)
            if snapshot.copy is None:
                self._conn.execute(
                    "DELETE FROM snapshots WHERE version_id = ? AND name = ?"
                    " AND deleted_at IS NULL",
                    (snapshot.version.id, snapshot.name),
                )
                return
            self._conn.execute(
                "UPDATE snapshots SET deleted_at = ? WHERE copy_version_id = ?",
                (now(), snapshot.copy.id),
            )
            # The root's children, and theirs, go with it (ON DELETE CASCADE).
            self._conn.execute(
                "DELETE FROM entries WHERE version_id = ? AND parent_id IS NULL",
                (snapshot.copy.id,),
            )

    def _row(self, version: Version, name: str) -> tuple | None:
        self.registry.catch_up(scopes.dataset_scope(version.dataset))
        return self._conn.execute(
            f"SELECT {_COLUMNS} FROM snapshots"
            " WHERE version_id = ? AND name = ? AND deleted_at IS NULL",
            (version.id, name),
        ).fetchone()

    def _snapshot(self, row: tuple) -> Snapshot:
        version_id, name, created_at, profile, copy_id, location = row
        version = self.registry.version_by_id(version_id)
        copy = self.registry.stored_version(copy_id) if copy_id is not None else None
        return Snapshot(version, name, created_at, json.loads(profile), copy, location)
