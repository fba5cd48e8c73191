"""Recorded runs and the dataset versions they read and wrote: the lineage tables.

A run is recorded when it starts, with the exact versions of its inputs, and completed
when it ends. An output's version is linked to its run in the transaction that
registers it, so a version produced by a run never lacks its lineage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from amlfs.errors import NotFound
from amlfs.registry import shared as scopes
from amlfs.registry.models import NewVersion, Version
from amlfs.registry.prunes import require_data_now
from amlfs.registry.store import Registry


@dataclass(frozen=True)
class RunInput:
    name: str
    version: Version
    mode: str  # "mount" or "download"


@dataclass(frozen=True)
class RunOutput:
    name: str
    location: str  # DATASTORE:PATH, substituted
    mode: str  # "mount" or "upload"
    register: str | None = None  # the dataset to register it as
    version: Version | None = None  # the version it registered


@dataclass(frozen=True)
class Run:
    id: str
    command: list[str]
    started_at: str
    host: str
    pid: int
    user: str
    inputs: list[RunInput] = field(default_factory=list)
    outputs: list[RunOutput] = field(default_factory=list)
    ended_at: str | None = None
    exit_code: int | None = None
    error: str | None = None

    def public_dict(self, state: str) -> dict:
        """What `runs show --json` prints; STATE is the caller's reading of the run."""
        return {
            "id": self.id, "state": state, "command": self.command,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "exit_code": self.exit_code, "error": self.error, "host": self.host,
            "pid": self.pid, "user": self.user,
            "inputs": [{"name": i.name, "version": i.version.ref, "mode": i.mode}
                       for i in self.inputs],
            "outputs": [{"name": o.name, "location": o.location, "mode": o.mode,
                         "register": o.register,
                         "version": o.version.ref if o.version else None}
                        for o in self.outputs],
        }  # fmt: skip


@dataclass(frozen=True)
class PruneCandidate:
    """An old run `runs prune` looked at, and why it stays (None: it may go)."""

    id: str
    started_at: str
    ended_at: str | None
    kept_because: str | None


class RunLog:
    """The runs tables of one registry."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._conn = registry.connection

    def start(self, run: Run) -> None:
        with self.registry.transaction():
            for item in run.inputs:
                require_data_now(self.registry, item.version)
            self._conn.execute(
                "INSERT INTO runs (id, command, started_at, host, pid, user)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (run.id, json.dumps(run.command), run.started_at, run.host, run.pid, run.user),
            )
            self._conn.executemany(
                "INSERT INTO run_inputs (run_id, name, version_id, mode) VALUES (?, ?, ?, ?)",
                [(run.id, i.name, i.version.id, i.mode) for i in run.inputs],
            )
            self._conn.executemany(
                "INSERT INTO run_outputs (run_id, name, location, mode, register)"
                " VALUES (?, ?, ?, ?, ?)",
                [(run.id, o.name, o.location, o.mode, o.register) for o in run.outputs],
            )
            self.registry.changed("run", run.id)

    def register_output(self, run_id: str, output: str, new: NewVersion) -> Version:
        """Register NEW as the version OUTPUT of RUN_ID produced, in one transaction."""
        with self.registry.transaction():
            version = self.registry.register(new)
            self._conn.execute(
                "UPDATE run_outputs SET version_id = ? WHERE run_id = ? AND name = ?",
                (version.id, run_id, output),
            )
            self.registry.changed("run", run_id)
        return version

    def finish(self, run_id: str, ended_at: str, exit_code: int | None, error: str | None) -> None:
        with self.registry.transaction():
            self._conn.execute(
                "UPDATE runs SET ended_at = ?, exit_code = ?, error = ? WHERE id = ?",
                (ended_at, exit_code, error, run_id),
            )
            self.registry.changed("run", run_id)

    def get(self, run_id: str) -> Run:
        self.registry.catch_up(scopes.RUNS)
        row = self._conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?",
                                 (run_id,)).fetchone()  # fmt: skip
        if row is None:
            raise NotFound(f"no run {run_id!r} (see `amlfs runs list`)")
        return self._run(row)

    def list(self, limit: int | None = None) -> list[Run]:
        """Runs, newest first (times have whole seconds: the insertion order breaks ties)."""
        self.registry.catch_up(scopes.RUNS)
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [self._run(row) for row in rows]

    def readers(self, version: Version) -> list[Run]:
        """The runs that read VERSION, oldest first."""
        self.registry.catch_up(scopes.RUNS)
        rows = self._conn.execute(
            f"SELECT DISTINCT {_RUN_COLUMNS} FROM runs r"
            " JOIN run_inputs i ON i.run_id = r.id WHERE i.version_id = ?"
            " ORDER BY r.started_at, r.rowid",
            (version.id,),
        ).fetchall()
        return [self._run(row) for row in rows]

    def producer(self, version: Version) -> Run | None:
        """The run that registered VERSION, if a run did."""
        self.registry.catch_up(scopes.RUNS)
        row = self._conn.execute(
            "SELECT run_id FROM run_outputs WHERE version_id = ?", (version.id,)
        ).fetchone()
        return self.get(row[0]) if row else None

    def prune_candidates(self, ended_before: str, lost: set[str]) -> list[PruneCandidate]:
        """Runs that ended before ENDED_BEFORE (ISO 8601, UTC), and those of LOST (runs
        with no end, known lost) that started before it, oldest first, each with why it
        must stay, if it must: lineage (it read or produced a version, whose lineage
        names it) or a pipeline step that names it (`pipeline show`, reuse)."""
        self.registry.catch_up(scopes.PIPELINES)  # pipeline steps name runs that stay
        rows = self._conn.execute(
            "SELECT r.id, r.started_at, r.ended_at,"
            " EXISTS (SELECT 1 FROM run_inputs i WHERE i.run_id = r.id),"
            " EXISTS (SELECT 1 FROM run_outputs o WHERE o.run_id = r.id"
            "         AND o.version_id IS NOT NULL),"
            " EXISTS (SELECT 1 FROM pipeline_steps s WHERE s.run_id = r.id)"
            " FROM runs r WHERE r.ended_at < ? OR (r.ended_at IS NULL AND r.started_at < ?)"
            " ORDER BY r.started_at, r.rowid",
            (ended_before, ended_before),
        ).fetchall()
        found = []
        for run_id, started, ended, read, produced, step in rows:
            if ended is None and run_id not in lost:
                continue  # running, or its end is not known here: never pruned
            reason = ("read a version" if read else "produced a version" if produced
                      else "a pipeline step" if step else None)  # fmt: skip
            found.append(PruneCandidate(run_id, started, ended, reason))
        return found

    def delete(self, run_ids: list[str], ended_before: str) -> set[str]:
        """Delete the records of RUN_IDS (their inputs and outputs with them) in one
        transaction, but any that lineage or a pipeline step came to need meanwhile, or
        that ended after ENDED_BEFORE; the ids deleted."""
        deleted: set[str] = set()
        with self.registry.transaction():
            for run_id in run_ids:
                cursor = self._conn.execute(
                    "DELETE FROM runs WHERE id = ? AND (ended_at IS NULL OR ended_at < ?)"
                    " AND NOT EXISTS (SELECT 1 FROM run_inputs WHERE run_id = runs.id)"
                    " AND NOT EXISTS (SELECT 1 FROM run_outputs WHERE run_id = runs.id"
                    "                 AND version_id IS NOT NULL)"
                    " AND NOT EXISTS (SELECT 1 FROM pipeline_steps WHERE run_id = runs.id)",
                    (run_id, ended_before),
                )
                if cursor.rowcount:
                    deleted.add(run_id)
                    self.registry.changed("run", run_id)
        return deleted

    def _run(self, row: tuple) -> Run:
        run_id, command, started, ended, code, error, host, pid, user = row
        by_id = self.registry.version_by_id
        inputs = [
            RunInput(name, by_id(version_id), mode)
            for name, version_id, mode in self._conn.execute(
                "SELECT name, version_id, mode FROM run_inputs WHERE run_id = ? ORDER BY name",
                (run_id,),
            )
        ]
        outputs = [
            RunOutput(name, location, mode, register, by_id(vid) if vid is not None else None)
            for name, location, mode, register, vid in self._conn.execute(
                "SELECT name, location, mode, register, version_id FROM run_outputs"
                " WHERE run_id = ? ORDER BY name",
                (run_id,),
            )
        ]
        return Run(run_id, json.loads(command), started, host, pid, user, inputs, outputs,
                   ended, code, error)  # fmt: skip


_RUN_COLUMNS = "id, command, started_at, ended_at, exit_code, error, host, pid, user"
