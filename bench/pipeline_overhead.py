"""What `amlfs pipeline run` adds to its steps, and what deciding reuse costs.

    python -m bench.pipeline_overhead [--repeat 5] [--files 200] [--million 1000000]

1. Two chained steps on a local datastore (`file://`; a step downloads its input, copies
   it to an output that is uploaded and registered): run by hand as two `amlfs run`
   processes, the second reading the version the first registered, and as
   `amlfs pipeline run --force` (both steps run). Alternately, --repeat times each;
   medians. The difference is the pipeline machinery: validation, one more interpreter,
   the reuse key, the records.
2. A step whose input is a version of M files (synthetic pins, as in registry_scale):
   the time to decide reuse in-process (`PipelineRunner.decide`, with a recorded earlier
   run to reuse), and `amlfs pipeline run --dry-run` as a process beside the CLI's floor
   (`amlfs pipeline runs`, the same start-up and registry opening).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from amlfs.jobs.run import new_run_id
from amlfs.pipelines.runner import PipelineRunner
from amlfs.pipelines.spec import load_pipeline
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry.pipelines import PipelineLog, PipelineRun, StepRecord
from amlfs.registry.runs import Run, RunLog, RunOutput
from amlfs.registry.store import now
from bench.common import amlfs_cmd, machine, run_command, timed_run, write_results
from bench.registry_scale import file_names

COPY = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"

CHAIN = """
name: overhead
steps:
  prep:
    command: [{python}, -c, "{copy}", "{{inputs.raw}}", "{{outputs.clean}}"]
    inputs: {{raw: "data:1,mode=download"}}
    outputs:
      clean: local:prep/{{run-id}},register=clean
  train:
    command: [{python}, -c, "{copy}", "{{inputs.data}}", "{{outputs.model}}"]
    inputs: {{data: "steps.prep.outputs.clean,mode=download"}}
    outputs:
      model: local:model/{{run-id}},register=model
"""

BIG = """
name: big
steps:
  read:
    command: ["true"]
    inputs: {data: "million:1"}
    outputs:
      out: synthetic:out/{run-id},register=out
"""


def by_hand(home: Path) -> None:
    """The two steps as a user types them: the second reads what the first registered."""
    copy = [sys.executable, "-c", COPY]
    run_command(amlfs_cmd(home, "run", "--input", "raw=data:1,mode=download", "--output",
                          "clean=local:prep/{run-id},register=clean", "--",
                          *copy, "{inputs.raw}", "{outputs.clean}"))  # fmt: skip
    run_command(amlfs_cmd(home, "run", "--input", "data=clean,mode=download", "--output",
                          "model=local:model/{run-id},register=model", "--",
                          *copy, "{inputs.data}", "{outputs.model}"))  # fmt: skip


def bench_chain(files: int, repeat: int, work: Path) -> dict:
    data, home = work / "store", work / "home-chain"
    for i in range(files):
        path = data / "data" / f"d{i % 10}" / f"f{i:05}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(10_000))
    run_command(amlfs_cmd(home, "datastore", "add", "local", f"file://{data}"))
    run_command(amlfs_cmd(home, "dataset", "register", "data", "--datastore", "local",
                          "--path", "data"))  # fmt: skip
    pipeline = work / "pipeline.yaml"
    pipeline.write_text(CHAIN.format(python=sys.executable, copy=COPY.replace('"', '\\"')))
    hand, piped = [], []
    for _ in range(repeat):  # alternately, so that a noisy neighbour hits both
        started = time.perf_counter()
        by_hand(home)
        hand.append(time.perf_counter() - started)
        piped.append(timed_run(amlfs_cmd(home, "pipeline", "run", str(pipeline), "--force")))
    return {"files": files, "bytes": files * 10_000, "repeat": repeat,
            "by_hand_s": statistics.median(hand), "pipeline_s": statistics.median(piped),
            "by_hand_all_s": hand, "pipeline_all_s": piped}  # fmt: skip


def bench_decide(m: int, repeat: int, work: Path) -> dict:
    home = work / "home-million"
    home.mkdir(mode=0o700)
    (home / "registry.db").touch(mode=0o600)
    pipeline = work / "million.yaml"
    pipeline.write_text(BIG)
    with Registry(home / "registry.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        files = [PinnedFile(name, 1, f'"0x{i:015X}"', os.urandom(16), None)
                 for i, name in enumerate(file_names(m))]  # fmt: skip
        registry.register(NewVersion("million", "synthetic", "", ["set"], files))
        del files
        loaded = load_pipeline(pipeline.read_text(), pipeline, registry)
        step = loaded.steps["read"]
        runner = PipelineRunner(home, registry, loaded)
        decision = runner.decide(step)
        assert not decision.reuse and decision.parts is not None
        _record_earlier_run(registry, decision.parts, decision.key or "")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            decision = runner.decide(step)
            times.append(time.perf_counter() - started)
            assert decision.reuse
    dry = [timed_run(amlfs_cmd(home, "pipeline", "run", str(pipeline), "--dry-run"))
           for _ in range(repeat)]  # fmt: skip
    floor = [timed_run(amlfs_cmd(home, "pipeline", "runs")) for _ in range(repeat)]
    return {"files": m, "decide_s": statistics.median(times),
            "dry_run_process_s": statistics.median(dry),
            "cli_floor_process_s": statistics.median(floor)}  # fmt: skip


def _record_earlier_run(registry: Registry, parts: dict[str, str], key: str) -> None:
    """A succeeded run of the step with that key, its output registered: what a pipeline
    run leaves behind."""
    runs, log = RunLog(registry), PipelineLog(registry)
    run_id = new_run_id()
    output = RunOutput("out", f"synthetic:out/{run_id}", "upload", "out")
    runs.start(Run(run_id, ["true"], now(), "bench", 1, "bench", outputs=[output]))
    runs.register_output(run_id, "out", NewVersion("out", "synthetic", "out", ["out"],
                                                   [PinnedFile("a", 1, '"e"')]))  # fmt: skip
    runs.finish(run_id, now(), 0, None)
    pipeline_run = new_run_id()
    log.start(PipelineRun(pipeline_run, "big", "million.yaml", now(), "bench", 1, "bench"))
    log.put_step(pipeline_run, StepRecord("read", "succeeded", False, "no earlier run", run_id,
                                          0, key, parts))  # fmt: skip
    log.finish(pipeline_run, now(), 0)


def report(chain: dict, decide: dict) -> str:
    hand, piped = chain["by_hand_s"], chain["pipeline_s"]
    return "\n".join([
        "### What `amlfs pipeline run` adds to its steps",
        "",
        f"Two chained steps, each downloading its input ({chain['files']} files, "
        f"{chain['bytes'] / 2**20:.1f} MiB) and uploading and registering a copy, on a "
        f"`file://` datastore; medians of {chain['repeat']} runs, alternately.",
        "",
        "| what | time | against by hand |",
        "|---|---|---|",
        f"| two `amlfs run` processes, by hand | {hand:.2f} s | 1.00× |",
        f"| `amlfs pipeline run --force` | {piped:.2f} s | {piped / hand:.2f}× "
        f"({piped - hand:+.2f} s) |",
        "",
        f"### Deciding reuse for a step whose input has {decide['files']:,} files",
        "",
        "| what | time |",
        "|---|---|",
        f"| `PipelineRunner.decide` in-process (key, lookup, earlier run's outputs) | "
        f"{decide['decide_s'] * 1000:.2f} ms |",
        f"| `amlfs pipeline run --dry-run`, a process | {decide['dry_run_process_s']:.2f} s |",
        f"| `amlfs pipeline runs`, a process (start-up and registry: the floor) | "
        f"{decide['cli_floor_process_s']:.2f} s |",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--files", type=int, default=200, help="files of the chain's input")
    parser.add_argument("--million", type=int, default=1_000_000, help="files of the big input")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-"))
    try:
        chain = bench_chain(args.files, args.repeat, work)
        decide = bench_decide(args.million, args.repeat, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("pipeline_overhead",
                         {"machine": machine(), "chain": chain, "decide": decide})  # fmt: skip
    print(report(chain, decide))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
