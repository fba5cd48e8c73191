"""Recorded pipeline runs and what each step did: ran (its run id), reused (the earlier
run whose versions it passed on), failed, or never started; with the reuse key it had."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from amlfs.errors import NotFound
from amlfs.registry import shared as scopes
from amlfs.registry.store import Registry


def derived_name(pipeline: str, step: str, output: str) -> str:
    """The dataset an output read by a later step is registered as, when it names none."""
    return f"{pipeline}.{step}.{output}"


@dataclass
class StepRecord:
    step: str
    status: str  # running, succeeded, failed, not-started
    reused: bool
    reason: str
    run_id: str | None = None
    exit_code: int | None = None
    reuse_key: str | None = None
    key_parts: dict[str, str] | None = None
    derived_outputs: list[str] = field(default_factory=list)  # registered as derived_name


@dataclass
class PipelineRun:
    id: str
    name: str
    file: str
    started_at: str
    host: str
    pid: int
    user: str
    ended_at: str | None = None
    exit_code: int | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.ended_at is None:
            return "running"
        return "succeeded" if self.exit_code == 0 else "failed"

    def public_dict(self, outputs: dict[str, dict[str, str]] | None = None) -> dict:
        """What `pipeline show --json` prints; OUTPUTS: per step, output -> version."""
        outputs = outputs or {}
        return {
            "id": self.id, "name": self.name, "file": self.file, "state": self.state,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "exit_code": self.exit_code, "host": self.host, "pid": self.pid, "user": self.user,
            "steps": [{"step": s.step, "status": s.status, "reused": s.reused,
                       "reason": s.reason, "run": s.run_id, "exit_code": s.exit_code,
                       "reuse_key": s.reuse_key, "outputs": outputs.get(s.step, {})}
                      for s in self.steps],
        }  # fmt: skip


class PipelineLog:
    """The pipeline tables of one registry."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._conn = registry.connection

    def start(self, run: PipelineRun) -> None:
        with self.registry.transaction():
            self._conn.execute(
                "INSERT INTO pipeline_runs (id, name, file, started_at, host, pid, user)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run.id, run.name, run.file, run.started_at, run.host, run.pid, run.user),
            )
            self.registry.changed("pipeline", run.id)

    def put_step(self, pipeline_run: str, record: StepRecord) -> None:
        """Record STEP as decided now, or update it (its status, run id, exit code)."""
        parts = None if record.key_parts is None else json.dumps(record.key_parts, sort_keys=True)
        with self.registry.transaction():
            position = self._conn.execute(
                "SELECT COUNT(*) FROM pipeline_steps WHERE pipeline_run_id = ?", (pipeline_run,)
            ).fetchone()[0]
            self._conn.execute(
                "INSERT INTO pipeline_steps (pipeline_run_id, step, position, status, reused,"
                " run_id, exit_code, reason, reuse_key, key_parts, derived_outputs)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (pipeline_run_id, step) DO UPDATE SET status = excluded.status,"
                " run_id = excluded.run_id, exit_code = excluded.exit_code,"
                " reason = excluded.reason",
                (pipeline_run, record.step, position, record.status, int(record.reused),
                 record.run_id, record.exit_code, record.reason, record.reuse_key, parts,
                 json.dumps(sorted(record.derived_outputs))),
            )  # fmt: skip
            self.registry.changed("pipeline", pipeline_run)

    def finish(self, run_id: str, ended_at: str, exit_code: int) -> None:
        with self.registry.transaction():
            self._conn.execute(
                "UPDATE pipeline_runs SET ended_at = ?, exit_code = ? WHERE id = ?",
                (ended_at, exit_code, run_id),
            )
            self.registry.changed("pipeline", run_id)

    def get(self, run_id: str) -> PipelineRun:
        self.registry.catch_up(scopes.PIPELINES)
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM pipeline_runs WHERE id = ?",
                                 (run_id,)).fetchone()  # fmt: skip
        if row is None:
            raise NotFound(f"no pipeline run {run_id!r} (see `amlfs pipeline runs`)")
        return self._run(row)

    def list(self, limit: int | None = None) -> list[PipelineRun]:
        """Pipeline runs, newest first."""
        self.registry.catch_up(scopes.PIPELINES)
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM pipeline_runs ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (-1 if limit is None else limit,),
        ).fetchall()
        return [self._run(row) for row in rows]

    def reusable_runs(self, reuse_key: str) -> list[str]:
        """The runs, newest first, of steps that ran with REUSE_KEY and succeeded."""
        self.registry.catch_up(scopes.PIPELINES)
        rows = self._conn.execute(
            "SELECT DISTINCT s.run_id FROM pipeline_steps s JOIN runs r ON r.id = s.run_id"
            " WHERE s.reuse_key = ? AND s.status = 'succeeded' AND s.reused = 0"
            " ORDER BY r.started_at DESC, r.rowid DESC",
            (reuse_key,),
        ).fetchall()
        return [row[0] for row in rows]

    def last_key_parts(self, pipeline: str, step: str) -> dict[str, str] | None:
        """The key parts of STEP in the latest run of PIPELINE where it succeeded."""
        self.registry.catch_up(scopes.PIPELINES)
        row = self._conn.execute(
            "SELECT s.key_parts FROM pipeline_steps s"
            " JOIN pipeline_runs p ON p.id = s.pipeline_run_id"
            " WHERE p.name = ? AND s.step = ? AND s.status = 'succeeded'"
            " AND s.key_parts IS NOT NULL ORDER BY p.started_at DESC, p.rowid DESC LIMIT 1",
            (pipeline, step),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def _run(self, row: tuple) -> PipelineRun:
        run = PipelineRun(*row)
        run.steps = [
            StepRecord(step, status, bool(reused), reason, run_id, code, key,
                       None if parts is None else json.loads(parts))
            for step, status, reused, reason, run_id, code, key, parts in self._conn.execute(
                "SELECT step, status, reused, reason, run_id, exit_code, reuse_key, key_parts"
                " FROM pipeline_steps WHERE pipeline_run_id = ? ORDER BY position",
                (run.id,),
            )
        ]  # fmt: skip
        return run


_COLUMNS = "id, name, file, started_at, host, pid, user, ended_at, exit_code"
