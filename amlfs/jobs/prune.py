"""`amlfs runs prune`: the records of old runs that nothing needs, deleted.

A run's record goes when it ended more than the given number of days ago (a lost run:
started that long ago) and nothing names it: it read no version and produced none (the
lineage of every version stays whole: `amlfs lineage` shows the same before and after),
and no pipeline step names it (`pipeline show` and reuse stay whole). A run still
running, or with no end recorded on another machine, never goes. With the record go the
logs of its mount daemons and its lock file, if it left them.
"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from amlfs import locks
from amlfs.jobs.lineage import is_lost, run_lock
from amlfs.registry.runs import PruneCandidate, RunLog
from amlfs.registry.store import Registry


@dataclass
class PruneReport:
    ended_before: str
    dry_run: bool
    pruned: list[PruneCandidate] = field(default_factory=list)
    kept: Counter[str] = field(default_factory=Counter)  # reason -> old runs kept for it

    def public_dict(self) -> dict:
        return {
            "ended_before": self.ended_before, "dry_run": self.dry_run,
            "pruned": [{"run": c.id, "started_at": c.started_at, "ended_at": c.ended_at}
                       for c in self.pruned],
            "kept": dict(sorted(self.kept.items())),
        }  # fmt: skip


def prune_runs(home: Path, registry: Registry, older_than_days: float,
               dry_run: bool = False) -> PruneReport:  # fmt: skip
    """Delete (or with DRY_RUN only list) the records of runs that ended more than
    OLDER_THAN_DAYS ago and that nothing needs."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    report = PruneReport(cutoff.isoformat(timespec="seconds"), dry_run)
    runs = RunLog(registry)
    for candidate in runs.prune_candidates(report.ended_before, _lost_runs(home, registry)):
        if candidate.kept_because is None:
            report.pruned.append(candidate)
        else:
            report.kept[candidate.kept_because] += 1
    if dry_run or not report.pruned:
        return report
    gone = runs.delete([c.id for c in report.pruned], report.ended_before)
    report.pruned = [c for c in report.pruned if c.id in gone]  # others were needed meanwhile
    for run_id in gone:
        _remove_leftovers(home, run_id)
    return report


def _lost_runs(home: Path, registry: Registry) -> set[str]:
    """Runs of this machine with no end whose `amlfs run` is gone (see lineage.state_of)."""
    rows = registry.connection.execute(
        "SELECT id FROM runs WHERE ended_at IS NULL AND host = ?", (socket.gethostname(),)
    ).fetchall()
    return {run_id for (run_id,) in rows if is_lost(home, socket.gethostname(), run_id)}


def _remove_leftovers(home: Path, run_id: str) -> None:
    """The logs of a pruned run's mount daemons (rotated ones too), and the lock file a
    killed run leaves."""
    for log in (home / "logs").glob(f"run-{run_id}-*.log*"):
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
    held = locks.hold(run_lock(home, run_id)) if run_lock(home, run_id).exists() else None
    if held is not None:
        held.release()  # removes the file, while held: nobody can be taking it
