"""Reading the record of runs: a run's state, and a version's lineage (the runs that read
it, the run that produced it, and that run's inputs back through the generations)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from amlfs import locks
from amlfs.registry.derivations import Derivation, Derivations
from amlfs.registry.models import Version
from amlfs.registry.runs import Run, RunLog

MAX_GENERATIONS = 64  # a bound on the walk back, far beyond any real pipeline


def run_lock(home: Path, run_id: str) -> Path:
    """The lock `amlfs run` holds while it runs: a run whose lock nobody holds is over,
    whatever process has its pid now (after a reboot, pids are reused)."""
    return home / "run" / "runs" / f"{run_id}.lock"


def is_lost(home: Path, host: str, run_id: str) -> bool:
    """Whether a run with no end recorded is lost: started on this machine, from HOME,
    and its `amlfs run` is gone (it holds the run's lock while it lives)."""
    return host == socket.gethostname() and not locks.held(run_lock(home, run_id))


def state_of(run: Run, home: Path) -> str:
    """running, succeeded, failed, or lost (no end recorded and its `amlfs run` is gone)."""
    if run.ended_at is None:
        return "lost" if is_lost(home, run.host, run.id) else "running"
    return "succeeded" if run.exit_code == 0 and run.error is None else "failed"


@dataclass
class Origin:
    """How a version came to be: the run that produced it (None: registered directly),
    and, for each input of that run, the origin of the version it read; or the version it
    was derived from (a sample, split or filter) and that version's origin."""

    version: Version
    run: Run | None = None
    inputs: list[tuple[str, str, Origin]] = field(default_factory=list)  # name, mode, origin
    seen_before: bool = False  # already shown higher up: not expanded again
    derivation: Derivation | None = None
    parent: Origin | None = None  # the origin of the derivation's parent

    def public_dict(self, home: Path) -> dict:
        data: dict = {"version": self.version.ref}
        if self.version.pruned_at is not None:
            data["pruned_at"] = self.version.pruned_at  # its data deleted, its lineage kept
        if self.seen_before:
            return {**data, "expanded": False}
        if self.derivation is not None and self.parent is not None:
            derived = {"operation": self.derivation.operation,
                       "parameters": self.derivation.parameters}  # fmt: skip
            return {**data, "produced_by": None,
                    "derived_from": {**derived, **self.parent.public_dict(home)}}  # fmt: skip
        if self.run is None:
            return {**data, "produced_by": None}
        return {
            **data,
            "produced_by": {
                **_summary(self.run, home),
                "inputs": [{"name": name, "mode": mode, **origin.public_dict(home)}
                           for name, mode, origin in self.inputs],
            },
        }  # fmt: skip


def origin(runs: RunLog, version: Version) -> Origin:
    """VERSION's origin, walked back up to MAX_GENERATIONS; each version expanded once."""
    seen: set[int] = set()
    derivations = Derivations(runs.registry)

    def walk(version: Version, depth: int) -> Origin:
        if version.id in seen or depth >= MAX_GENERATIONS:
            return Origin(version, seen_before=True)
        seen.add(version.id)
        if derivation := derivations.of(version):
            return Origin(version, derivation=derivation,
                          parent=walk(derivation.parent, depth + 1))  # fmt: skip
        producer = runs.producer(version)
        if producer is None:
            return Origin(version)
        return Origin(version, producer, [(i.name, i.mode, walk(i.version, depth + 1))
                                          for i in producer.inputs])  # fmt: skip

    return walk(version, 0)


def lineage(runs: RunLog, version: Version, home: Path) -> dict:
    """What `amlfs lineage --json` prints."""
    return {
        **origin(runs, version).public_dict(home),
        "read_by": [_summary(run, home) for run in runs.readers(version)],
        "derived_into": [
            {"version": d.version.ref, "operation": d.operation, "parameters": d.parameters}
            for d in Derivations(runs.registry).children(version)
        ],
    }


def _summary(run: Run, home: Path) -> dict:
    return {"run": run.id, "state": state_of(run, home), "exit_code": run.exit_code,
            "started_at": run.started_at, "command": run.command}  # fmt: skip
