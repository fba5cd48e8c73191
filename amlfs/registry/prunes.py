"""What `amlfs pipeline prune` needs from the registry: the intermediate outputs of
pipeline runs, what still depends on them, and the record of the versions whose data it
deleted. Deciding and deleting are amlfs/pipelines/prune.py's; this module only reads and
writes rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from amlfs.errors import Pruned
from amlfs.registry import paths
from amlfs.registry import shared as scopes
from amlfs.registry.models import Version
from amlfs.registry.pipelines import derived_name
from amlfs.registry.store import Registry


def require_data(version: Version) -> Version:
    """VERSION, if its data is still there to read; Pruned if `pipeline prune` deleted it
    (as of when VERSION was read from the registry)."""
    if version.pruned_at is not None:
        raise Pruned(f"{version.ref} was pruned on {version.pruned_at[:10]}"
                     " (`amlfs pipeline prune`): its data is deleted, its record and lineage"
                     " stay; run its pipeline again to make it anew")  # fmt: skip
    return version


def require_data_now(registry: Registry, version: Version) -> None:
    """require_data, as the registry says now: called inside the transaction that records
    a new use of VERSION (a run's inputs, a subset), so that a prune, which marks in a
    transaction of its own after checking for uses, and the use exclude each other."""
    row = registry.connection.execute(
        "SELECT pruned_at FROM prunes WHERE version_id = ?", (version.id,)
    ).fetchone()
    require_data(replace(version, pruned_at=None if row is None else row[0]))


@dataclass(frozen=True)
class Intermediate:
    """A version a step of a pipeline run registered under a name amlfs derived."""

    version: Version
    pipeline_run: str
    pipeline: str
    step: str
    output: str
    run_id: str  # the step's own run, which produced the version
    ended_at: str  # when the pipeline run ended


@dataclass(frozen=True)
class Dependant:
    """Something that ran with (or reused) a version: a run, or a pipeline run."""

    kind: str  # "run" or "pipeline run"
    id: str
    started_at: str
    ended_at: str | None
    host: str
    pid: int


class Prunes:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._conn = registry.connection

    def intermediates(self, ended_before: str) -> list[Intermediate]:
        """The derived-name outputs of steps that ran and succeeded in pipeline runs that
        ended before ENDED_BEFORE (ISO 8601), oldest first; deleted ones left out, those a
        prune marked but did not finish kept in."""
        self.registry.catch_up(scopes.EVERYTHING)  # what keeps one may be anywhere
        rows = self._conn.execute(
            "SELECT p.id, p.name, p.ended_at, s.step, s.run_id, s.derived_outputs,"
            " o.name, o.version_id"
            " FROM pipeline_runs p JOIN pipeline_steps s ON s.pipeline_run_id = p.id"
            " JOIN run_outputs o ON o.run_id = s.run_id"
            " LEFT JOIN prunes r ON r.version_id = o.version_id"
            " WHERE p.ended_at IS NOT NULL AND p.ended_at < ? AND s.reused = 0"
            " AND s.status = 'succeeded' AND o.version_id IS NOT NULL AND r.deleted_at IS NULL"
            " ORDER BY p.ended_at, p.id, s.position, o.name",
            (ended_before,),
        ).fetchall()
        found = []
        for pipeline_run, pipeline, ended, step, run_id, derived, output, version_id in rows:
            version = self.registry.stored_version(version_id)
            if derived is None:  # a row from before the column: the name tells
                automatic = version.dataset == derived_name(pipeline, step, output)
            else:
                automatic = output in json.loads(derived)
            if automatic:
                found.append(Intermediate(version, pipeline_run, pipeline, step, output,
                                          run_id, ended))  # fmt: skip
        return found

    def readers(self, version: Version) -> list[Dependant]:
        """The runs that read VERSION (as an input, or through a snapshot without a copy)."""
        rows = self._conn.execute(
            "SELECT r.id, r.started_at, r.ended_at, r.host, r.pid FROM run_inputs i"
            " JOIN runs r ON r.id = i.run_id WHERE i.version_id = ? ORDER BY r.started_at",
            (version.id,),
        ).fetchall()
        return [Dependant("run", *row) for row in rows]

    def reusers(self, run_id: str) -> list[Dependant]:
        """The pipeline runs with a step that reused RUN_ID's outputs."""
        rows = self._conn.execute(
            "SELECT DISTINCT p.id, p.started_at, p.ended_at, p.host, p.pid FROM pipeline_steps s"
            " JOIN pipeline_runs p ON p.id = s.pipeline_run_id"
            " WHERE s.run_id = ? AND s.reused = 1 ORDER BY p.started_at",
            (run_id,),
        ).fetchall()
        return [Dependant("pipeline run", *row) for row in rows]

    def snapshots_reading(self, version: Version) -> list[str]:
        """The live snapshots of VERSION without a copy of their own: they read its data."""
        rows = self._conn.execute(
            "SELECT name FROM snapshots WHERE version_id = ? AND deleted_at IS NULL"
            " AND copy_version_id IS NULL ORDER BY name",
            (version.id,),
        ).fetchall()
        return [row[0] for row in rows]

    def sharing(self, version: Version, leaving: set[int]) -> Version | None:
        """A version outside LEAVING (and not pruned) that pins one of VERSION's stored
        files as it is (same datastore, path and etag): a subset of it, a registration of
        the same folder, a copy's source. Its data must stay.

        Versions with one of VERSION's etags are found in one pass over the entries (an
        etag names one stored object, so few versions match), then their paths compared;
        this never walks the trees of unrelated versions, however large."""
        files = {(paths.join(version.root, f.path), f.etag)
                 for f in self.registry.iter_files(version)}  # fmt: skip
        self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS prune_etags (etag TEXT PRIMARY KEY)")
        self._conn.execute("DELETE FROM prune_etags")
        self._conn.executemany("INSERT OR IGNORE INTO prune_etags VALUES (?)",
                               [(etag,) for _path, etag in files])  # fmt: skip
        rows = self._conn.execute(
            "SELECT DISTINCT e.version_id FROM entries e"
            " JOIN prune_etags t ON t.etag = e.etag"
            " JOIN versions v ON v.id = e.version_id JOIN datastores s ON s.id = v.datastore_id"
            " LEFT JOIN prunes r ON r.version_id = v.id"
            " WHERE e.is_dir = 0 AND s.name = ? AND r.version_id IS NULL ORDER BY e.version_id",
            (version.datastore,),
        ).fetchall()
        for (other_id,) in rows:
            if other_id in leaving or other_id == version.id:
                continue
            other = self.registry.stored_version(other_id)
            for file in self.registry.iter_files(other):
                if (paths.join(other.root, file.path), file.etag) in files:
                    return other
        return None

    def mark(self, version_ids: list[int], at: str) -> None:
        """From now on nothing reads these versions' data (one transaction for all)."""
        with self.registry.transaction():
            self._conn.executemany(
                "INSERT INTO prunes (version_id, pruned_at) VALUES (?, ?)"
                " ON CONFLICT (version_id) DO NOTHING",
                [(version_id, at) for version_id in version_ids],
            )
            for version_id in version_ids:
                self.registry.changed("prune", version_id)

    def deleted(self, version_id: int, at: str) -> None:
        """Every file of the version is deleted (or was not as pinned any more)."""
        with self.registry.transaction():
            self._conn.execute(
                "UPDATE prunes SET deleted_at = ? WHERE version_id = ? AND deleted_at IS NULL",
                (at, version_id),
            )
            self.registry.changed("prune", version_id)

    def unfinished(self) -> list[Version]:
        """Versions marked by a prune that did not finish deleting their data."""
        rows = self._conn.execute(
            "SELECT version_id FROM prunes WHERE deleted_at IS NULL ORDER BY version_id"
        ).fetchall()
        return [self.registry.stored_version(row[0]) for row in rows]
