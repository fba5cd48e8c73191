"""`amlfs pipeline run` end to end, against the emulator and through real mounts: steps
read earlier steps' outputs as registered versions, a step is reused exactly when its
command, env, code and input versions are unchanged, a failing step stops what depends
on it, a bad file starts nothing, and independent steps run side by side."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container, require
from tests.support.sample import FILES
from tests.test_run import assert_taken_down, stored

# A step: appends its name to ran.log (in the pipeline's folder, outside every output),
# writes each input's files reversed into OUT/INPUT/, and exits with $CODE. With $WAIT_FOR,
# it says it started and waits (60 s at most) for that other step to say so too.
STEP = """
import os, pathlib, sys, time
name, out, *inputs = sys.argv[1:]
here = pathlib.Path.cwd()
with open(here / "ran.log", "a") as log:
    log.write(name + "\\n")
(here / f"started-{name}").write_text(str(time.time()))
if other := os.environ.get("WAIT_FOR"):
    deadline = time.monotonic() + 60
    while not (here / f"started-{other}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (here / f"saw-{name}").write_text(str((here / f"started-{other}").exists()))
out = pathlib.Path(out)
for index, folder in enumerate(map(pathlib.Path, inputs)):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            dest = out / str(index) / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes()[::-1])
(out / "env.txt").write_text(os.environ.get("VALUE", ""))
(here / f"ended-{name}").write_text(str(time.time()))
sys.exit(int(os.environ.get("CODE", "0")))
"""

CHAIN = """
name: chain
steps:
  prep:
    command: [{python}, step.py, prep, "{{outputs.clean}}", "{{inputs.raw}}"]
    code: [step.py]
    inputs:
      raw: ds
    outputs:
      clean: blob:prep/{{run-id}}/{{output-name}}
  train:
    command: [{python}, step.py, train, "{{outputs.model}}", "{{inputs.data}}"]
    code: [step.py]
    inputs:
      data: steps.prep.outputs.clean,mode=download
    outputs:
      model: blob:models/{{run-id}},mode=mount,register=model
"""


def reversed_twice(files: dict[str, bytes]) -> dict[str, bytes]:
    """What train stores: prep's output (0/ the raw files reversed, env.txt) reversed again."""
    return {f"0/0/{path}": data for path, data in files.items()} | {
        "0/env.txt": b"",
        "env.txt": b"",
    }


def write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "step.py").write_text(STEP)
    file = folder / "pipeline.yaml"
    file.write_text(text.format(python=sys.executable))
    return file


def ran(folder: Path) -> list[str]:
    log = folder / "ran.log"
    return log.read_text().split() if log.exists() else []


def run_json(cli: Cli, file: Path, *options: str, code: int = 0) -> dict:
    result = cli("pipeline", "run", str(file), "--json", *options)
    assert result.code == code, result.err
    return json.loads(result.out)


def steps_of(report: dict) -> dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def test_two_chained_steps_read_mounted_and_downloaded_data_and_store_their_outputs(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    report = run_json(cli, write(folder, CHAIN))
    steps = steps_of(report)
    assert report["state"] == "succeeded" and report["exit_code"] == 0
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded"]
    assert not any(s["reused"] for s in report["steps"])
    # An output read by a later step without `register=` is registered under a derived name.
    assert steps["prep"]["outputs"] == {"clean": "chain.prep.clean:1"}
    assert steps["train"]["outputs"] == {"model": "model:1"}
    prep_run, train_run = steps["prep"]["run"], steps["train"]["run"]
    reversed_once = {f"0/{p}": d[::-1] for p, d in FILES.items()} | {"env.txt": b""}
    assert stored(dataset.fs, f"{dataset.name}/prep/{prep_run}/clean") == reversed_once
    assert stored(dataset.fs, f"{dataset.name}/models/{train_run}") == reversed_twice(FILES)
    assert ran(folder) == ["prep", "train"]
    run = json.loads(cli.ok("runs", "show", train_run, "--json").out)
    assert run["inputs"] == [{"name": "data", "version": "chain.prep.clean:1", "mode": "download"}]
    assert_taken_down(cli.home)


def test_lineage_of_a_final_output_walks_back_through_the_steps_to_the_source(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    file = write(tmp_path / "pipe", CHAIN)
    first = steps_of(run_json(cli, file))
    run_json(cli, file)  # reused: the same versions, still traced to the runs that made them
    lineage = json.loads(cli.ok("lineage", "model:1", "--json").out)
    train = lineage["produced_by"]
    assert train["run"] == first["train"]["run"]
    data = train["inputs"][0]
    assert data["version"] == "chain.prep.clean:1"
    assert data["produced_by"]["run"] == first["prep"]["run"]
    raw = data["produced_by"]["inputs"][0]
    assert (raw["name"], raw["version"], raw["produced_by"]) == ("raw", "ds:1", None)


def test_an_unchanged_rerun_reuses_every_step_without_running_its_command(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    file = write(folder, CHAIN)
    first = steps_of(run_json(cli, file))
    result = cli("pipeline", "run", str(file))
    assert result.code == 0, result.err
    assert ran(folder) == ["prep", "train"]  # not a line more: no command ran again
    assert f"prep: reused run {first['prep']['run']} clean=chain.prep.clean:1" in result.out
    assert f"train: reused run {first['train']['run']} model=model:1" in result.out
    assert "2 reused" in result.out.splitlines()[-1]
    assert len(json.loads(cli.ok("dataset", "versions", "model", "--json").out)) == 1
    listed = json.loads(cli.ok("pipeline", "runs", "--json").out)
    assert len(listed) == 2
    second = json.loads(cli.ok("pipeline", "show", listed[0]["id"], "--json").out)
    assert [(s["step"], s["reused"], s["run"], s["outputs"]) for s in second["steps"]] == [
        ("prep", True, first["prep"]["run"], {"clean": "chain.prep.clean:1"}),
        ("train", True, first["train"]["run"], {"model": "model:1"}),
    ]
    text = cli.ok("pipeline", "show", listed[0]["id"]).out
    assert "reused" in text and first["train"]["run"] in text
    assert listed[0]["id"] in cli.ok("pipeline", "runs").out


THREE = """
name: three
steps:
  a:
    command: [{python}, step.py, a, "{{outputs.out}}", "{{inputs.raw}}"]
    code: [step.py]
    inputs: {{raw: ds}}
    outputs:
      out: blob:a/{{run-id}}
  b:
    command: [{python}, step.py, b, "{{outputs.out}}", "{{inputs.data}}"]
    inputs: {{data: steps.a.outputs.out}}
    outputs:
      out: blob:b/{{run-id}},register=b-out
  c:
    command: [{python}, step.py, c, "{{outputs.out}}", "{{inputs.raw}}"]
    env: {{VALUE: "{value}"}}
    inputs: {{raw: other}}
    outputs:
      out: blob:c/{{run-id}},register=c-out
"""


def three(folder: Path, value: str = "one") -> Path:
    return write(folder, THREE.replace("{value}", value))


def outcome(report: dict) -> dict[str, str]:
    return {s["step"]: "reused" if s["reused"] else s["status"] for s in report["steps"]}


def test_a_changed_code_file_env_value_or_input_version_reruns_exactly_what_it_affects(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    cli.ok("dataset", "register", "other", "--datastore", "blob", "--path", "valid")
    folder = tmp_path / "pipe"
    file = three(folder)
    assert outcome(run_json(cli, file)) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert outcome(run_json(cli, file)) == {"a": "reused", "b": "reused", "c": "reused"}

    # b lists no code but reads a's new output: it reruns too; c lists no code: reused.
    (folder / "step.py").write_text(STEP + "\n# changed\n")
    report = run_json(cli, file)
    assert outcome(report) == {"a": "succeeded", "b": "succeeded", "c": "reused"}
    assert steps_of(report)["a"]["reason"] == "changed: code step.py"
    assert steps_of(report)["b"]["reason"] == "changed: input data"

    file = three(folder, value="two")  # step.py back as it was: a and b reuse their first runs
    (folder / "step.py").write_text(STEP + "\n# changed\n")
    report = run_json(cli, file)
    assert outcome(report) == {"a": "reused", "b": "reused", "c": "succeeded"}
    assert steps_of(report)["c"]["reason"] == "changed: env"

    dataset.put({"new.txt": b"a new file"})
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    report = run_json(cli, file)
    assert outcome(report) == {"a": "succeeded", "b": "succeeded", "c": "reused"}
    assert steps_of(report)["a"]["reason"] == "changed: input raw"
    assert ran(folder) == ["a", "b", "c", "a", "b", "c", "a", "b"]

    report = run_json(cli, file, "--force")
    assert outcome(report) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert {s["reason"] for s in report["steps"]} == {"--force"}


def test_a_dry_run_prints_the_plan_and_changes_nothing(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    cli.ok("dataset", "register", "other", "--datastore", "blob", "--path", "valid")
    folder = tmp_path / "pipe"
    file = three(folder)
    first = steps_of(run_json(cli, file))
    three(folder, value="two")
    before = (ran(folder), cli.ok("runs", "list", "--json").out,
              cli.ok("pipeline", "runs", "--json").out)  # fmt: skip
    result = cli.ok("pipeline", "run", str(file), "--dry-run")
    assert result.out.splitlines() == [
        f"a: would reuse run {first['a']['run']} out=three.a.out:1",
        f"b: would reuse run {first['b']['run']} out=b-out:1",
        "c: would run (changed: env)",
    ]
    (folder / "step.py").write_text(STEP + "\n# changed\n")
    plan = json.loads(cli.ok("pipeline", "run", str(file), "--dry-run", "--json").out)
    assert [(s["step"], s["action"], s["reason"]) for s in plan["steps"]] == [
        ("a", "run", "changed: code step.py"),
        ("b", "run", "input data comes from a, which runs first"),
        ("c", "run", "changed: env"),
    ]
    after = (ran(folder), cli.ok("runs", "list", "--json").out,
             cli.ok("pipeline", "runs", "--json").out)  # fmt: skip
    assert after == before


UNREUSABLE = """
name: clock
steps:
  stable:
    command: [{python}, step.py, stable, "{{outputs.out}}"]
    outputs:
      out: blob:stable/{{run-id}},register=stable
  clock:
    command: [{python}, step.py, clock, "{{outputs.out}}"]
    reuse: false
    outputs:
      out: blob:clock/{{run-id}},register=clock
"""


def test_a_step_marked_reuse_false_always_runs(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    file = write(folder, UNREUSABLE)
    run_json(cli, file)
    report = run_json(cli, file)
    assert outcome(report) == {"stable": "reused", "clock": "succeeded"}
    assert steps_of(report)["clock"]["reason"] == "reuse: false"
    assert steps_of(report)["clock"]["outputs"] == {"out": "clock:2"}
    assert ran(folder) == ["stable", "clock", "clock"]


FAILING = """
name: failing
steps:
  a:
    command: [{python}, step.py, a, "{{outputs.out}}", "{{inputs.raw}}"]
    env: {{CODE: "3"}}
    inputs: {{raw: ds}}
    outputs:
      out: blob:a/{{run-id}},register=a-out
  b:
    command: [{python}, step.py, b, "{{outputs.out}}", "{{inputs.data}}"]
    inputs: {{data: steps.a.outputs.out}}
    outputs:
      out: blob:b/{{run-id}},register=b-out
"""


def test_a_failing_step_passes_its_status_and_stops_its_dependants_with_nothing_registered(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    result = cli("pipeline", "run", str(write(folder, FAILING)))
    assert result.code == 3, result.err
    assert ran(folder) == ["a"]
    lines = result.out.splitlines()
    assert any(line.startswith("a: failed (exit 3): run ") for line in lines)
    assert "b: not started (needs a, which did not succeed)" in lines
    assert lines[-1].endswith("failed (exit 3): 1 failed, 1 not started")
    assert cli("dataset", "versions", "a-out").code == 2
    assert cli("dataset", "versions", "b-out").code == 2
    assert stored(dataset.fs, f"{dataset.name}/a") == {}
    shown = json.loads(cli.ok("pipeline", "runs", "--json").out)[0]
    assert [(s["step"], s["status"], s["exit_code"]) for s in shown["steps"]] == [
        ("a", "failed", 3), ("b", "not-started", None)]  # fmt: skip
    # A failed run is never reused.
    assert cli("pipeline", "run", str(folder / "pipeline.yaml")).code == 3
    assert ran(folder) == ["a", "a"]
    assert_taken_down(cli.home)


EMPTY = """
name: empty
steps:
  a:
    command: [{python}, -c, pass]
    outputs:
      out: blob:a/{{run-id}}
  b:
    command: [{python}, step.py, b, "{{outputs.out}}", "{{inputs.data}}"]
    inputs: {{data: steps.a.outputs.out}}
    outputs:
      out: blob:b/{{run-id}}
"""


def test_an_output_a_later_step_reads_that_registered_nothing_fails_its_step(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    report = run_json(cli, write(folder, EMPTY), code=1)
    assert outcome(report) == {"a": "failed", "b": "not-started"}
    assert steps_of(report)["a"]["reason"] == "output out registered nothing"
    assert ran(folder) == []


PARALLEL = """
name: parallel
steps:
  left:
    command: [{python}, step.py, left, "{{outputs.out}}"]
    env: {{WAIT_FOR: right}}
    outputs:
      out: blob:left/{{run-id}}
  right:
    command: [{python}, step.py, right, "{{outputs.out}}"]
    env: {{WAIT_FOR: left}}
    outputs:
      out: blob:right/{{run-id}}
"""


def test_two_independent_steps_run_at_once_with_jobs_2(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    report = run_json(cli, write(folder, PARALLEL), "--jobs", "2")
    assert outcome(report) == {"left": "succeeded", "right": "succeeded"}
    # Each saw the other start before it ended: their lifetimes overlap.
    assert (folder / "saw-left").read_text() == "True"
    assert (folder / "saw-right").read_text() == "True"
    times = {name: (float((folder / f"started-{name}").read_text()),
                    float((folder / f"ended-{name}").read_text()))
             for name in ("left", "right")}  # fmt: skip
    assert times["left"][0] < times["right"][1] and times["right"][0] < times["left"][1]


BAD_FILES = {
    "an unknown key": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    colour: red\n",
        5,
        "colour",
    ),
    "a cycle": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    inputs: {x: steps.b.outputs.o}\n"
        "    outputs: {o: blob:a}\n  b:\n    command: [true]\n"
        "    inputs: {x: steps.a.outputs.o}\n    outputs: {o: blob:b}\n",
        3,
        "cycle: a -> b -> a",
    ),
    "a missing step": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    inputs: {x: steps.nope.outputs.o}\n",
        5,
        "no step named 'nope'",
    ),
    "a missing output": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    outputs: {o: blob:a}\n"
        "  b:\n    command: [true]\n    inputs:\n      x: steps.a.outputs.z\n",
        9,
        "step 'a' has no output 'z'",
    ),
    "an unknown dataset": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    inputs:\n      x: nosuch:1\n",
        6,
        "nosuch",
    ),
    "an unknown datastore": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    outputs:\n      o: nostore:out\n",
        6,
        "nostore",
    ),
    "a placeholder that names nothing": (
        "name: p\nsteps:\n  a:\n    command:\n      - echo\n      - '{inputs.nothing}'\n",
        6,
        "{inputs.nothing}",
    ),
    "a command that does not exist": (
        "name: p\nsteps:\n  a:\n    command: [no-such-program]\n",
        4,
        "command not found",
    ),
    "a code file that does not exist": (
        "name: p\nsteps:\n  a:\n    command: [true]\n    code: [missing.py]\n",
        5,
        "missing.py",
    ),
    "an unknown schema": (
        "schema: amlfs/pipeline/v9\nname: p\nsteps:\n  a:\n    command: [true]\n",
        1,
        "schema",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_pipeline_file_is_refused_in_one_line_with_its_line_and_nothing_runs(
    cli: Cli, dataset: Container, tmp_path: Path, case: str
) -> None:
    text, line, words = BAD_FILES[case]
    file = tmp_path / "bad.yaml"
    file.write_text(text.replace("[true]", f'[{sys.executable}, -c, \'open("ran", "w")\']'))
    result = cli("pipeline", "run", str(file))
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1
    assert result.err.startswith(f"amlfs: error: {file}:{line}: "), result.err
    assert words in result.err
    assert cli.ok("pipeline", "runs", "--json").out.strip() == "[]"
    assert cli.ok("runs", "list", "--json").out.strip() == "[]"
    assert not (tmp_path / "ran").exists()


def guide_files() -> dict[str, str]:
    """The files of docs/pipelines.md's example: the code blocks that start `# NAME`."""
    text = (Path(__file__).parent.parent / "docs" / "pipelines.md").read_text()
    blocks = re.findall(r"```(?:yaml|python)\n# (\S+?)(?::[^\n]*)?\n(.*?)```", text, re.S)
    return {name: f"# {name}\n{body}" for name, body in blocks}


def test_the_guides_example_runs_as_written_then_reuses_then_reruns_on_new_data(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    require(shutil.which("python3") is not None, "the guide's example runs python3")
    container.put({"raw/week27/temps.csv": b"oslo,0.25\noslo,3.5\nrome,20.5\n",
                   "raw/week28/temps.csv": b"oslo,4.5\nrome,21.5\n"})  # fmt: skip
    cli.ok("datastore", "add", "store", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "weather", "--datastore", "store", "--path", "raw")
    folder = tmp_path / "guide"
    folder.mkdir()
    files = guide_files()
    assert sorted(files) == ["pipeline.yaml", "prep.py", "train.py"]
    for name, text in files.items():
        (folder / name).write_text(text)
    file = folder / "pipeline.yaml"

    first = cli("pipeline", "run", str(file))
    assert first.code == 0, first.err
    assert "2 ran" in first.out.splitlines()[-1]
    model = json.loads(cli.ok("runs", "show", _run_of(first.out, "train"), "--json").out)
    location = model["outputs"][0]["location"].partition(":")[2]
    stored_model = stored(container.fs, f"{container.name}/{location}")
    assert json.loads(stored_model["model.json"]) == {"oslo": 4.0, "rome": 21.0}

    second = cli.ok("pipeline", "run", str(file))
    assert "prep: reused run" in second.out and "train: reused run" in second.out
    assert "2 reused" in second.out.splitlines()[-1]

    container.put({"raw/week29/temps.csv": b"rome,24.5\n"})
    cli.ok("dataset", "register", "weather", "--datastore", "store", "--path", "raw")
    third = cli.ok("pipeline", "run", str(file))
    assert "prep: running (changed: input raw)" in third.out
    assert "train: running (changed: input data)" in third.out
    assert "model=weather-model:2" in third.out


def _run_of(out: str, step: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(f"{step}: ran "))
    return line.split(": run ")[1].split()[0]


SLEEPING = """
name: sleeping
steps:
  a:
    command: [{python}, -c, "{sleeper}", "{{outputs.out}}"]
    inputs: {{raw: ds}}
    outputs:
      out: blob:a/{{run-id}},register=a-out
  b:
    command: [{python}, step.py, b, "{{outputs.out}}", "{{inputs.data}}"]
    inputs: {{data: steps.a.outputs.out}}
    outputs:
      out: blob:b/{{run-id}}
"""
SLEEPER = (
    "import pathlib, sys, time; pathlib.Path(sys.argv[1], 'part').write_text('x');"
    " pathlib.Path('started-a').write_text('1'); time.sleep(60)"
)


def test_sigterm_ends_the_running_step_and_starts_nothing_more(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    folder = tmp_path / "pipe"
    file = write(folder, SLEEPING.replace("{sleeper}", SLEEPER))
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "pipeline", "run", str(file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (folder / "started-a").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (folder / "started-a").exists(), "step a did not start"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "b: not started (needs a, which did not succeed)" in out
    assert cli("dataset", "versions", "a-out").code == 2
    assert stored(dataset.fs, f"{dataset.name}/a") == {}
    shown = json.loads(cli.ok("pipeline", "runs", "--json").out)[0]
    assert [(s["step"], s["status"], s["exit_code"]) for s in shown["steps"]] == [
        ("a", "failed", 143), ("b", "not-started", None)]  # fmt: skip
    assert_taken_down(cli.home)


def test_a_pipeline_run_killed_outright_is_shown_as_lost(cli: Cli, tmp_path: Path) -> None:
    from amlfs.home import registry_path
    from amlfs.registry.pipelines import PipelineLog, PipelineRun
    from amlfs.registry.store import Registry, now

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no live amlfs process now
    registry = Registry(registry_path(cli.home))
    PipelineLog(registry).start(PipelineRun("20260101-000000-dead00", "p", "/p.yaml", now(),
                                            socket.gethostname(), gone.pid, "me"))  # fmt: skip
    registry.close()
    (listed,) = json.loads(cli.ok("pipeline", "runs", "--json").out)
    assert listed["state"] == "lost"
    shown = json.loads(cli.ok("pipeline", "show", "20260101-000000-dead00", "--json").out)
    assert shown["state"] == "lost"
