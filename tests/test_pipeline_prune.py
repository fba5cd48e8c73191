"""`amlfs pipeline prune`, against the emulator: it deletes the stored data of old
intermediate outputs (and nothing else), keeps every intermediate something kept still
needs, leaves the versions and their lineage in the registry marked pruned, makes every
read of a pruned version say so, and survives a crash or a second prune at once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amlfs.home import registry_path
from amlfs.registry.prunes import Prunes
from amlfs.registry.store import Registry
from tests.conftest import Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import FILES
from tests.test_pipeline import CHAIN, run_json, steps_of, write
from tests.test_run import stored

INTERMEDIATE = "chain.prep.clean:1"


def age_everything(home: Path, days: int) -> None:
    """Move every run and pipeline run recorded so far DAYS into the past."""
    moment = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
    registry = Registry(registry_path(home))
    with registry.transaction():
        for table in ("runs", "pipeline_runs"):
            registry.connection.execute(
                f"UPDATE {table} SET started_at = ?, ended_at = ? WHERE ended_at IS NOT NULL",
                (moment, moment),
            )
    registry.close()


def prune(cli: Cli, *options: str, code: int = 0) -> dict:
    result = cli("pipeline", "prune", "--older-than", "30", "--json", *options)
    assert result.code == code, result.err
    return json.loads(result.out)


def old_chain(cli: Cli, tmp_path: Path) -> dict[str, dict]:
    """CHAIN run once, 40 days ago: prep's output is an intermediate ripe for pruning."""
    steps = steps_of(run_json(cli, write(tmp_path / "pipe", CHAIN)))
    age_everything(cli.home, 40)
    return steps


def test_prune_deletes_only_old_intermediates_and_keeps_their_record_and_lineage(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    steps = old_chain(cli, tmp_path)
    clean = f"{dataset.name}/prep/{steps['prep']['run']}/clean"
    model = f"{dataset.name}/models/{steps['train']['run']}"
    before = stored(dataset.fs, clean), stored(dataset.fs, model)
    assert before[0] and before[1]

    plan = prune(cli, "--dry-run")
    assert [p["version"] for p in plan["pruned"]] == [INTERMEDIATE] and plan["kept"] == []
    assert (stored(dataset.fs, clean), stored(dataset.fs, model)) == before  # dry: nothing

    done = prune(cli)
    (pruned,) = done["pruned"]
    assert (pruned["version"], pruned["step"], pruned["run"]) == (
        INTERMEDIATE, "prep", steps["prep"]["run"])  # fmt: skip
    assert pruned["files_deleted"] == len(before[0]) and pruned["error"] is None
    assert stored(dataset.fs, clean) == {}
    assert stored(dataset.fs, model) == before[1]  # the user-named output: untouched
    for path, data in FILES.items():  # the source: untouched
        assert dataset.fs.cat_file(f"{dataset.name}/{path}") == data

    # The record stays, marked; lineage still walks through it.
    shown = json.loads(cli.ok("dataset", "show", INTERMEDIATE, "--json").out)
    assert shown["pruned_at"] and shown["file_count"] == len(before[0])
    lineage = json.loads(cli.ok("lineage", "model:1", "--json").out)
    data = lineage["produced_by"]["inputs"][0]
    assert data["version"] == INTERMEDIATE and data["pruned_at"] == shown["pruned_at"]
    assert data["produced_by"]["run"] == steps["prep"]["run"]
    assert "pruned" in cli.ok("lineage", "model:1").out
    assert "[pruned]" in cli.ok("dataset", "versions", "chain.prep.clean").out
    pipeline_run = json.loads(cli.ok("pipeline", "runs", "--json").out)[0]["id"]
    assert f"clean={INTERMEDIATE} (pruned)" in cli.ok("pipeline", "show", pipeline_run).out
    assert prune(cli)["pruned"] == []  # nothing left to do


@pytest.mark.parametrize(
    "command",
    [
        ["mount", INTERMEDIATE, "{tmp}/mnt"],
        ["download", INTERMEDIATE, "{tmp}/dl"],
        ["run", "--input", f"d={INTERMEDIATE}", "--", "true"],
        ["dataset", "sample", INTERMEDIATE, "--fraction", "0.5", "--register", "s"],
        ["snapshot", "create", INTERMEDIATE],
        ["dataset", "verify", INTERMEDIATE],
    ],
    ids=["mount", "download", "run", "sample", "snapshot", "verify"],
)
def test_every_read_of_a_pruned_version_says_so_in_one_line(
    cli: Cli, dataset: Container, tmp_path: Path, command: list[str]
) -> None:
    old_chain(cli, tmp_path)
    prune(cli)
    (tmp_path / "mnt").mkdir()
    result = cli.process(*[part.format(tmp=tmp_path) for part in command])
    assert result.code == 2, result.err
    (line,) = result.err.strip().splitlines()
    assert f"{INTERMEDIATE} was pruned on" in line and "pipeline prune" in line
    assert not (tmp_path / "dl").exists()


def test_a_rerun_after_a_prune_runs_the_pruned_step_again_and_says_why(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    old_chain(cli, tmp_path)
    prune(cli)
    report = steps_of(run_json(cli, tmp_path / "pipe" / "pipeline.yaml"))
    assert not report["prep"]["reused"]
    assert report["prep"]["reason"] == f"the earlier run's {INTERMEDIATE} was pruned"
    assert report["prep"]["outputs"] == {"clean": "chain.prep.clean:2"}
    assert report["train"]["status"] == "succeeded"


def _reader(cli: Cli, tmp_path: Path) -> str:
    cli.ok("run", "--input", f"d={INTERMEDIATE},mode=download", "--", "true")
    return "read by run"


def _reuser(cli: Cli, tmp_path: Path) -> str:
    report = steps_of(run_json(cli, tmp_path / "pipe" / "pipeline.yaml"))
    assert report["prep"]["reused"]
    return "reused by pipeline run"


def _subset(cli: Cli, tmp_path: Path) -> str:
    cli.ok("dataset", "sample", INTERMEDIATE, "--fraction", "0.9", "--register", "s")
    return "s:1 pins some of its files too"


def _registered_again(cli: Cli, tmp_path: Path) -> str:
    root = json.loads(cli.ok("dataset", "show", INTERMEDIATE, "--json").out)["root"]
    cli.ok("dataset", "register", "mine", "--datastore", "blob", "--path", root)
    return "mine:1 pins some of its files too"


def _snapshot(cli: Cli, tmp_path: Path) -> str:
    cli.ok("snapshot", "create", INTERMEDIATE, "--name", "keep")
    return "snapshot keep (without a copy) reads it"


@pytest.mark.parametrize(
    "keeper",
    [_reader, _reuser, _subset, _registered_again, _snapshot],
    ids=["recent-reader", "recent-reuse", "subset", "same-files", "snapshot"],
)
def test_prune_keeps_an_intermediate_that_something_kept_still_needs(
    cli: Cli, dataset: Container, tmp_path: Path, keeper: Callable[[Cli, Path], str]
) -> None:
    steps = old_chain(cli, tmp_path)
    clean = f"{dataset.name}/prep/{steps['prep']['run']}/clean"
    before = stored(dataset.fs, clean)
    reason = keeper(cli, tmp_path)
    done = prune(cli)
    assert done["pruned"] == []
    (kept,) = done["kept"]
    assert kept["version"] == INTERMEDIATE and reason in kept["reason"]
    assert stored(dataset.fs, clean) == before
    assert "pruned_at" not in json.loads(cli.ok("dataset", "show", INTERMEDIATE, "--json").out)


def test_a_mounted_intermediate_is_kept(
    cli: Cli, dataset: Container, tmp_path: Path, mounts: Mounts
) -> None:
    old_chain(cli, tmp_path)
    root = mounts.mount(INTERMEDIATE)
    (kept,) = prune(cli)["kept"]
    assert kept["reason"] == f"mounted at {root}"
    assert (root / "env.txt").read_bytes() == b""  # still served


def test_a_file_rewritten_since_it_was_pinned_is_left_alone(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    steps = old_chain(cli, tmp_path)
    clean = f"{dataset.name}/prep/{steps['prep']['run']}/clean"
    dataset.fs.pipe(f"{clean}/env.txt", b"someone else's bytes")
    (pruned,) = prune(cli)["pruned"]
    assert pruned["changed_left"] == 1 and pruned["files_deleted"] == len(FILES)
    assert stored(dataset.fs, clean) == {"env.txt": b"someone else's bytes"}


def test_a_prune_that_died_after_marking_is_finished_by_the_next(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    steps = old_chain(cli, tmp_path)
    clean = f"{dataset.name}/prep/{steps['prep']['run']}/clean"
    registry = Registry(registry_path(cli.home))
    version = registry.resolve(INTERMEDIATE)
    Prunes(registry).mark([version.id], "2026-01-01T00:00:00+00:00")  # and then it died
    registry.close()
    assert stored(dataset.fs, clean)
    refused = cli("mount", INTERMEDIATE, str(tmp_path))
    assert refused.code == 2 and "was pruned on 2026-01-01" in refused.err
    done = prune(cli)
    assert done["pruned"] == []
    (finished,) = done["finished"]
    assert finished["version"] == INTERMEDIATE and finished["files_deleted"] == len(FILES) + 1
    assert stored(dataset.fs, clean) == {}
    assert prune(cli)["finished"] == []


def test_rows_from_before_the_derived_outputs_column_are_judged_by_their_name(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    old_chain(cli, tmp_path)
    registry = Registry(registry_path(cli.home))
    with registry.transaction():
        registry.connection.execute("UPDATE pipeline_steps SET derived_outputs = NULL")
    registry.close()
    assert [p["version"] for p in prune(cli, "--dry-run")["pruned"]] == [INTERMEDIATE]


def test_two_prunes_at_once_delete_each_file_once_and_both_succeed(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    steps = old_chain(cli, tmp_path)
    clean = f"{dataset.name}/prep/{steps['prep']['run']}/clean"
    argv = [sys.executable, "-m", "amlfs", "--home", str(cli.home), "pipeline", "prune",
            "--older-than", "30", "--json"]  # fmt: skip
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]  # fmt: skip
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    outcomes = [item for r in reports for item in r["pruned"] + r["finished"]]
    assert {item["version"] for item in outcomes} == {INTERMEDIATE}
    assert sum(item.get("files_deleted", 0) for item in outcomes) == len(FILES) + 1
    assert stored(dataset.fs, clean) == {}


@pytest.mark.parametrize("days", ["-1", "soon"])
def test_a_bad_age_is_refused_in_one_line(cli: Cli, days: str) -> None:
    result = cli("pipeline", "prune", "--older-than", days)
    assert result.code == 2 and "--older-than" in result.err
