"""`amlfs runs prune --older-than DAYS`: old run records nothing needs are deleted; the
lineage of every version reads the same before and after, runs that pipeline steps name
stay, and a run still running never goes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from pathlib import Path

from amlfs import locks
from amlfs.jobs.lineage import run_lock
from tests.conftest import Cli, Container

LONG_AGO = "2020-01-01T00:00:00+00:00"
WRITE = "import pathlib, sys; pathlib.Path(sys.argv[1], 'f.txt').write_text('x')"


def run_ids(cli: Cli) -> list[str]:
    return sorted(run["id"] for run in json.loads(cli.ok("runs", "list", "--json").out))


def newest_run(cli: Cli) -> str:
    return json.loads(cli.ok("runs", "list", "--json", "--limit", "1").out)[0]["id"]


def every_lineage(cli: Cli) -> dict[str, dict]:
    versions = {}
    for name in ("ds", "made"):
        for line in json.loads(cli.ok("dataset", "versions", name, "--json").out):
            ref = f"{name}:{line['version']}"
            versions[ref] = json.loads(cli.ok("lineage", ref, "--json").out)
    return versions


def age(cli: Cli, run_id: str, ended: bool = True) -> None:
    """Make RUN_ID look as if it started (and ended, if ENDED) long ago."""
    with contextlib.closing(sqlite3.connect(cli.home / "registry.db")) as db, db:
        db.execute("UPDATE runs SET started_at = ?, ended_at = ? WHERE id = ?",
                   (LONG_AGO, LONG_AGO if ended else None, run_id))  # fmt: skip


def test_runs_prune_deletes_old_runs_nothing_needs_and_keeps_lineage_whole(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    py = sys.executable
    cli.ok("run", "--", py, "-c", "pass")
    plain = newest_run(cli)
    cli.ok("run", "--input", "d=ds,mode=download", "--", py, "-c", "pass")
    reader = newest_run(cli)
    cli.ok("run", "--output", "o=blob:made/{run-id},register=made", "--", py, "-c", WRITE,
           "{outputs.o}")  # fmt: skip
    producer = newest_run(cli)
    assert cli("run", "--output", "o=blob:none/{run-id},register=made", "--", py, "-c",
               "raise SystemExit(3)").code == 3  # fmt: skip
    failed = newest_run(cli)
    cli.ok("run", "--", py, "-c", "pass")
    lost = newest_run(cli)
    cli.ok("run", "--", py, "-c", "pass")
    running = newest_run(cli)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({"name": "p", "steps": {"only": {
        "command": [py, "-c", WRITE, "{outputs.out}"],
        "outputs": {"out": "blob:steps/{run-id}"}}}}))  # fmt: skip
    cli.ok("pipeline", "run", str(pipeline))
    step = newest_run(cli)
    cli.ok("run", "--", py, "-c", "pass")
    recent = newest_run(cli)
    for run_id in (plain, reader, producer, failed, step):
        age(cli, run_id)
    age(cli, lost, ended=False)  # no end recorded, its lock free: lost
    age(cli, running, ended=False)
    log = cli.home / "logs" / f"run-{plain}-data.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("a mount daemon's lines\n")
    (cli.home / "logs" / f"run-{plain}-data.log.1").write_text("older lines\n")
    before = every_lineage(cli)
    everything = run_ids(cli)

    holding = locks.hold(run_lock(cli.home, running))  # as its `amlfs run` would
    assert holding is not None
    try:
        dry = json.loads(cli.ok("runs", "prune", "--older-than", "30", "--dry-run", "--json").out)
        assert sorted(r["run"] for r in dry["pruned"]) == sorted([plain, failed, lost])
        assert dry["kept"] == {"a pipeline step": 1, "produced a version": 1,
                               "read a version": 1}  # fmt: skip
        assert run_ids(cli) == everything  # a dry run deletes nothing

        pruned = cli.ok("runs", "prune", "--older-than", "30")
    finally:
        holding.release()
    assert "pruned 3 run(s)" in pruned.out
    assert run_ids(cli) == sorted(set(everything) - {plain, failed, lost})
    assert every_lineage(cli) == before
    assert not log.exists() and not log.with_name(log.name + ".1").exists()
    assert json.loads(cli.ok("pipeline", "runs", "--json").out)[0]["steps"][0]["run"] == step
    assert recent in run_ids(cli) and running in run_ids(cli)

    # Its `amlfs run` gone (the lock free), the run that was running is lost now: it goes.
    again = json.loads(cli.ok("runs", "prune", "--older-than", "30", "--json").out)
    assert [r["run"] for r in again["pruned"]] == [running]


def test_runs_prune_wants_a_number_of_days(cli: Cli) -> None:
    for bad in (["runs", "prune"], ["runs", "prune", "--older-than", "-1"],
                ["runs", "prune", "--older-than", "soon"]):  # fmt: skip
        result = cli(*bad)
        assert result.code == 2
        assert result.err.startswith("amlfs: error:")
