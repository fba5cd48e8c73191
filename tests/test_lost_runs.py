"""The folder of a run killed outright is cleaned up by the next `amlfs status` (or `amlfs
run`): never while a process still uses it, never through a mount (a stale one is
detached first), and never an output folder holding files, which was never uploaded:
that one is kept and the user told how to upload it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from amlfs.mounts import mounted_paths, records
from amlfs.transfer.journal import Journal
from tests.conftest import Cli, Container
from tests.support.mounts import processes_mentioning
from tests.test_run import start_sleeping_run

DEADLINE_S = 60.0

# Writes a result, keeps a downloaded input's file open, says it started, sleeps.
HOLDER = """
import pathlib, sys, time
data, out, started = sys.argv[1:4]
pathlib.Path(out, "result.txt").write_text("never uploaded")
held = open(pathlib.Path(data, "labels.csv"))
pathlib.Path(started).write_text("started")
time.sleep(60)
"""


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def mounts_under(folder: Path) -> list[str]:
    return [p for p in mounted_paths() if p.startswith(f"{folder}/")]


def kill_all(pids: list[int]) -> None:
    """SIGKILL PIDS and wait until they have closed their files (ended, or zombies)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    wait_until(lambda: not any(map(running, pids)), "a killed process did not end")


def running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_a_killed_runs_folder_goes_but_its_unuploaded_output_and_only_once_unused(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    script, started = tmp_path / "holder.py", tmp_path / "started"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "run",
         "--input", "d=ds,mode=download", "--output", "o=blob:out/{run-id}",
         "--output", "m=blob:ck/{run-id},mode=mount",
         "--", sys.executable, str(script), "{inputs.d}", "{outputs.o}", str(started)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, "the job never started")
        assert started.exists(), "the job did not start"
        proc.kill()  # SIGKILL: no take-down
        proc.wait()
        (folder,) = list((cli.home / "runs").iterdir())
        wait_until(lambda: not mounts_under(folder), "the run's mounts outlived it")

        cli.ok("status")  # the job still holds a file in the folder: all is left
        assert (folder / "inputs" / "d" / "labels.csv").exists()
    finally:
        proc.kill()
        proc.wait()
        kill_all(processes_mentioning(started))  # the job, orphaned by the kill

    status = cli.ok("status")
    kept = folder / "outputs" / "o"
    assert (
        f"lost run {folder.name}: output o was never uploaded; kept at {kept}; to upload"
        f" it: amlfs --home {cli.home} upload {kept} blob:out/{folder.name}"
    ) in status.err
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "outputs", "outputs/o", "outputs/o/result.txt"]  # fmt: skip
    journal = Journal(cli.home, durable=False)
    try:
        assert journal.placed(folder / "inputs" / "d") == {}
    finally:
        journal.close()
    assert "lost run" not in cli.ok("status").err  # told once


def test_a_stale_mount_in_a_killed_runs_folder_is_detached_before_the_folder_goes(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    proc, started = start_sleeping_run(cli, tmp_path, "ckpt=blob:ckpt/{run-id},mode=mount")
    try:
        (folder,) = list((cli.home / "runs").iterdir())
        (input_mount,) = [r for r in records(cli.home) if r.mountpoint.endswith("/inputs/data")]
        os.kill(input_mount.pid, signal.SIGKILL)  # its mount is stale from now on
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(processes_mentioning(started))
    wait_until(lambda: mounts_under(folder) == [input_mount.mountpoint],
               "the output mount outlived the run")  # fmt: skip

    cli.ok("status")
    assert mounts_under(folder) == []
    assert not folder.exists()


@pytest.mark.parametrize("name", ["not-a-run", "20261203-101500-3fa2c1"])
def test_only_the_folders_of_runs_that_are_gone_are_touched(
    cli: Cli, tmp_path: Path, name: str
) -> None:
    from amlfs import locks
    from amlfs.jobs.lineage import run_lock

    folder = cli.home / "runs" / name
    (folder / "inputs" / "x").mkdir(parents=True)
    run_lock(cli.home, name).parent.mkdir(parents=True, exist_ok=True)
    alive = locks.hold(run_lock(cli.home, name))  # as its `amlfs run` would
    try:
        cli.ok("status")
        assert (folder / "inputs" / "x").is_dir()
    finally:
        assert alive is not None
        alive.release()
    cli.ok("status")
    assert folder.exists() == (name == "not-a-run")
