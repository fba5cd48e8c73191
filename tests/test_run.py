"""`amlfs run` end to end, against the emulator and through real mounts: a job sees its
inputs and outputs at the paths it is given, its exit status is passed through, a failed
job uploads nothing, Ctrl-C and SIGTERM take everything down, and the registry records
which versions each run read and produced."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import adlfs
import pytest

from amlfs.mounts import mounted_paths
from tests.conftest import Cli, Container
from tests.support.mounts import processes_mentioning
from tests.support.sample import FILES

# The job of most tests: checks that both inputs hold the sample files, writes a result
# into each output (by argument and by environment), prints what it saw, exits with CODE.
JOB = """
import hashlib, json, os, pathlib, sys
mounted, downloaded, upload_out, code = sys.argv[1:5]
mount_out = os.environ["AMLFS_OUTPUT_ckpt"]
def tree(root):
    root = pathlib.Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
seen = {"mounted": tree(mounted), "downloaded": tree(downloaded),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("AMLFS_RUN_", "AMLFS_HOME", "AMLFS_INPUT_", "AMLFS_OUTPUT_"))}}
print(json.dumps(seen))
for out, env in ((upload_out, "AMLFS_OUTPUT_results"), (mount_out, "AMLFS_OUTPUT_ckpt")):
    assert out == os.environ[env]
    (pathlib.Path(out) / "sub").mkdir()
    (pathlib.Path(out) / "sub" / "model.bin").write_bytes(b"weights " * 1000)
    (pathlib.Path(out) / "metrics.json").write_text(json.dumps({"loss": 0.5}))
sys.exit(int(code))
"""

# Sleeps until signalled, after saying so in a file outside the run.
SLEEPER = """
import pathlib, sys, time
pathlib.Path(sys.argv[1], "result.txt").write_text("partial")
pathlib.Path(sys.argv[2]).write_text("started")
time.sleep(60)
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(fs: adlfs.AzureBlobFileSystem, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    found = fs.find(prefix) if fs.exists(prefix) else []
    return {name[len(prefix) + 1 :]: fs.cat_file(name) for name in found}


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text(JOB)
    return path


def run_args(job: Path, code: int) -> list[str]:
    return [
        "run", "--input", "mounted=ds", "--input", "downloaded=ds:1,mode=download",
        "--output", "results=blob:runs/{run-id}/{output-name},register=results",
        "--output", "ckpt=blob:ckpt/{run-id},mode=mount,register=checkpoints",
        "--", sys.executable, str(job), "{inputs.mounted}", "{inputs.downloaded}",
        "{outputs.results}", str(code),
    ]  # fmt: skip


def run_of(cli: Cli, index: int = 0) -> dict:
    return json.loads(cli.ok("runs", "list", "--json").out)[index]


def assert_taken_down(home: Path) -> None:
    """No mount, no daemon and no folder of any run is left."""
    runs = home / "runs"
    assert not [p for p in mounted_paths() if p.startswith(str(runs))]
    assert processes_mentioning(runs) == []
    assert not runs.exists() or list(runs.iterdir()) == []


def start_sleeping_run(cli: Cli, tmp_path: Path, *outputs: str) -> tuple[subprocess.Popen, Path]:
    """`amlfs run` of SLEEPER with input ds mounted and OUTPUTS (the first is where it
    writes), returned once the command has started; and the file that says so."""
    script, started = tmp_path / "sleeper.py", tmp_path / "started"
    script.write_text(SLEEPER)
    options = [option for output in outputs for option in ("--output", output)]
    first = outputs[0].partition("=")[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "run", "--input", "data=ds",
         *options, "--", sys.executable, str(script), f"{{outputs.{first}}}", str(started)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not started.exists():
        proc.kill()
        pytest.fail(f"the command did not start: {proc.communicate(timeout=30)}")
    return proc, started


def test_a_run_sees_its_inputs_and_stores_and_registers_its_outputs(
    cli: Cli, dataset: Container, job: Path
) -> None:
    result = cli.process(*run_args(job, 0))
    assert result.code == 0, result.err
    seen = json.loads(result.out.strip().splitlines()[-1])
    expected = {path: sha(data) for path, data in FILES.items()}
    assert seen["mounted"] == expected
    assert seen["downloaded"] == expected
    run = run_of(cli)
    work = cli.home / "runs" / run["id"]
    assert seen["env"] == {
        "AMLFS_RUN_ID": run["id"], "AMLFS_HOME": str(cli.home),
        "AMLFS_INPUT_mounted": str(work / "inputs" / "mounted"),
        "AMLFS_INPUT_downloaded": str(work / "inputs" / "downloaded"),
        "AMLFS_OUTPUT_results": str(work / "outputs" / "results"),
        "AMLFS_OUTPUT_ckpt": str(work / "outputs" / "ckpt"),
    }  # fmt: skip

    written = {"sub/model.bin": b"weights " * 1000, "metrics.json": b'{"loss": 0.5}'}
    assert stored(dataset.fs, f"{dataset.name}/runs/{run['id']}/results") == written
    assert stored(dataset.fs, f"{dataset.name}/ckpt/{run['id']}") == written
    assert run["state"] == "succeeded" and run["exit_code"] == 0 and run["error"] is None
    assert run["inputs"] == [
        {"name": "downloaded", "version": "ds:1", "mode": "download"},
        {"name": "mounted", "version": "ds:1", "mode": "mount"},
    ]
    assert [(o["name"], o["location"], o["version"]) for o in run["outputs"]] == [
        ("ckpt", f"blob:ckpt/{run['id']}", "checkpoints:1"),
        ("results", f"blob:runs/{run['id']}/results", "results:1"),
    ]
    for ref in ("results:1", "checkpoints:1"):
        files = json.loads(cli.ok("dataset", "show", ref, "--files", "--json").out)["files"]
        assert sorted(f["path"] for f in files) == sorted(written)
        cli.ok("dataset", "verify", ref)
    assert_taken_down(cli.home)


def test_a_failed_command_passes_its_exit_code_and_uploads_and_registers_nothing(
    cli: Cli, dataset: Container, job: Path
) -> None:
    result = cli.process(*run_args(job, 3))
    assert result.code == 3, result.err
    run = run_of(cli)
    assert "output results: not uploaded: the command failed" in result.err
    assert stored(dataset.fs, f"{dataset.name}/runs/{run['id']}/results") == {}
    # An output mount stores each file as it is closed, even in a failed run; it is
    # not registered.
    assert len(stored(dataset.fs, f"{dataset.name}/ckpt/{run['id']}")) == 2
    assert "output ckpt: not registered: the command failed" in result.err
    assert cli("dataset", "versions", "results").code == 2
    assert cli("dataset", "versions", "checkpoints").code == 2
    assert run["state"] == "failed" and run["exit_code"] == 3
    assert [o["version"] for o in run["outputs"]] == [None, None]
    assert_taken_down(cli.home)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_reaches_the_command_and_the_run_is_taken_down(
    cli: Cli, dataset: Container, tmp_path: Path, signum: int, status: int
) -> None:
    proc, _ = start_sleeping_run(
        cli, tmp_path, "out=blob:out/{run-id},register=out", "ckpt=blob:ckpt/{run-id},mode=mount"
    )
    try:
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    run = run_of(cli)
    assert run["exit_code"] == status and run["state"] == "failed"
    assert stored(dataset.fs, f"{dataset.name}/out/{run['id']}") == {}
    assert cli("dataset", "versions", "out").code == 2
    assert_taken_down(cli.home)


def test_lineage_follows_a_version_back_through_the_runs_that_made_it(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    copytree = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"
    copy = [sys.executable, "-c", copytree]
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", "train")  # ds:2
    first = cli.process("run", "--input", "raw=ds:1,mode=download",
                        "--output", "out=blob:features/{run-id},register=features",
                        "--", *copy, "{inputs.raw}", "{outputs.out}")  # fmt: skip
    assert first.code == 0, first.err
    second = cli.process("run", "--input", "features=features", "--input", "extra=ds",
                         "--output", "out=blob:models/{run-id},register=model",
                         "--", *copy, "{inputs.features}", "{outputs.out}")  # fmt: skip
    assert second.code == 0, second.err
    producer, reader = run_of(cli, 1)["id"], run_of(cli, 0)["id"]

    model = json.loads(cli.ok("lineage", "model:1", "--json").out)
    assert model["version"] == "model:1"
    assert model["produced_by"]["run"] == reader
    assert model["read_by"] == []
    inputs = {i["name"]: i for i in model["produced_by"]["inputs"]}
    assert inputs["extra"]["version"] == "ds:2"  # "ds" was resolved and recorded as ds:2
    assert inputs["extra"]["produced_by"] is None
    features = inputs["features"]
    assert features["version"] == "features:1"
    assert features["produced_by"]["run"] == producer
    [raw] = features["produced_by"]["inputs"]
    assert (raw["name"], raw["version"], raw["mode"]) == ("raw", "ds:1", "download")
    assert raw["produced_by"] is None

    readers = json.loads(cli.ok("lineage", "features:1", "--json").out)["read_by"]
    assert [r["run"] for r in readers] == [reader]
    text = cli.ok("lineage", "model:1").out
    assert f"produced by run {reader}" in text and f"produced by run {producer}" in text
    shown = cli.ok("runs", "show", producer).out
    assert "input:      raw = ds:1 (download)" in shown
    assert "output:     out = blob:features/" in shown and "registered features:1" in shown


def test_bad_input_is_refused_before_anything_starts(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_text("x")
    cli.ok("datastore", "add", "local", source.as_uri())
    cli.ok("dataset", "register", "d", "--datastore", "local", "--path", ".")
    true = ["--", "true"]
    refused = {
        "--input x=nope": ["run", "--input", "x=nope", *true],
        "unknown placeholder": ["run", "--input", "x=d", "--", "echo", "{inputs.y}"],
        "bad mode": ["run", "--input", "x=d,mode=copy", *true],
        "bad key": ["run", "--input", "x=d,cache=1", *true],
        "bad name": ["run", "--input", "1x=d", *true],
        "twice": ["run", "--input", "x=d", "--input", "x=d:1", *true],
        "unknown datastore": ["run", "--output", "o=nowhere:p", *true],
        "path placeholder": ["run", "--output", "o=local:{date}", *true],
        "no command": ["run", "--input", "x=d"],
        "command not found": ["run", "--", "no-such-command-anywhere"],
    }
    for what, args in refused.items():
        result = cli(*args)
        assert result.code == 2, (what, result.err)
        assert result.err.startswith("amlfs: error: ") and result.err.count("\n") == 1, what
    assert json.loads(cli.ok("runs", "list", "--json").out) == []
    assert not (cli.home / "runs").exists() or list((cli.home / "runs").iterdir()) == []


def test_an_upload_that_fails_keeps_the_output_folder_and_says_how_to_finish(
    cli: Cli, tmp_path: Path
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    (source / "f.txt").write_text("x")
    target.mkdir()
    (target / "out").write_text("a file where the output's folder must go")
    cli.ok("datastore", "add", "local", source.as_uri())
    cli.ok("datastore", "add", "results", target.as_uri())
    cli.ok("dataset", "register", "d", "--datastore", "local", "--path", ".")
    scratch = tmp_path / "scratch"
    result = cli.process("run", "--work-dir", str(scratch), "--input", "x=d",
                         "--output", "o=results:out,register=o",
                         "--", "sh", "-c", "echo result > {outputs.o}/r.txt")  # fmt: skip
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith("amlfs: error: run ")
    [hint] = [line for line in result.err.splitlines() if "kept at" in line]
    command = hint.partition("to upload it: ")[2].split()
    assert command[:4] == ["amlfs", "--home", str(cli.home), "upload"]
    kept = Path(command[4])
    assert kept.parent.parent.parent == scratch  # SCRATCH/RUN_ID/outputs/o
    assert not (kept.parent.parent / "inputs").exists()  # the rest of the run's folder went
    assert (kept / "r.txt").read_text() == "result\n"
    assert run_of(cli)["error"].startswith("output o: 1 file(s) not uploaded")

    (target / "out").unlink()
    cli.ok(*command[1:])
    assert (target / "out" / "r.txt").read_text() == "result\n"
    assert cli.ok("dataset", "versions", "o", "--json").out.count('"version": 1') == 1


def test_a_run_killed_outright_leaves_no_mount_behind_and_is_shown_as_lost(
    cli: Cli, dataset: Container, tmp_path: Path, impostor: int
) -> None:
    proc, started = start_sleeping_run(cli, tmp_path, "ckpt=blob:ckpt/{run-id},mode=mount")
    try:
        proc.kill()
        proc.wait()
        runs = cli.home / "runs"
        deadline = time.monotonic() + 60
        while [p for p in mounted_paths() if p.startswith(str(runs))]:
            assert time.monotonic() < deadline, "the run's mounts outlived it"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_mentioning(started):  # the command, orphaned by the kill
            os.kill(pid, signal.SIGKILL)
    run = run_of(cli)
    assert run["state"] == "lost" and run["ended_at"] is None
    # Its pid taken by another amlfs process (after a reboot): still lost.
    with contextlib.closing(sqlite3.connect(cli.home / "registry.db")) as db, db:
        db.execute("UPDATE runs SET pid = ? WHERE id = ?", (impostor, run["id"]))
    assert run_of(cli)["state"] == "lost"
    # The output mount's daemon ended as on SIGTERM: the closed file was uploaded first.
    assert stored(dataset.fs, f"{dataset.name}/ckpt/{run['id']}") == {"result.txt": b"partial"}
