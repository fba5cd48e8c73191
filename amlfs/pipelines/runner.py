"""Running a pipeline: each step decided (reused or run) once the steps it needs are done,
each step that runs an `amlfs run` of its own, at most N at once.

A step runs as a child `amlfs run` process rather than inside this one: a run forwards
signals to its command and takes its mounts down on SIGTERM, which only a process's main
thread can do, and steps run side by side. The child is given its run id, so the
pipeline finds the run, and the versions it registered, in the registry afterwards.

After a step fails no further step starts; steps already running finish.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from amlfs.errors import EXIT_RUNTIME, NotFound
from amlfs.jobs.run import new_run_id
from amlfs.jobs.spec import OutputSpec
from amlfs.pipelines import reuse
from amlfs.pipelines.spec import Pipeline, Step
from amlfs.registry.models import Version
from amlfs.registry.pipelines import PipelineLog, PipelineRun, StepRecord
from amlfs.registry.runs import RunLog
from amlfs.registry.store import Registry, now

POLL_S = 0.02  # how soon an ended step is noticed; a poll costs microseconds
END_WAIT_S = 60
FORWARDED = (signal.SIGTERM, signal.SIGHUP)  # sent to us alone: passed on to the steps


@dataclass
class Decision:
    """What a step does: reuse RUN's outputs, or run (REASON says why)."""

    reuse: bool
    reason: str
    parts: dict[str, str] | None = None  # None when an input's version is not known yet
    run: str | None = None  # the run reused
    outputs: dict[str, Version] = field(default_factory=dict)

    @property
    def key(self) -> str | None:
        return None if self.parts is None else reuse.reuse_key(self.parts)


@dataclass
class Running:
    step: Step
    record: StepRecord
    process: subprocess.Popen


class PipelineRunner:
    def __init__(self, home: Path, registry: Registry, pipeline: Pipeline, *, jobs: int = 1,
                 force: bool = False, say: Callable[[str], None] = print,
                 step_stdout: int | None = None) -> None:  # fmt: skip
        self.home, self.registry, self.pipeline = home.absolute(), registry, pipeline
        self.jobs, self.force, self.say, self.step_stdout = jobs, force, say, step_stdout
        self.log, self.runs = PipelineLog(registry), RunLog(registry)
        self.results: dict[str, dict[str, Version]] = {}  # step -> output -> version
        self.records: dict[str, StepRecord] = {}
        self.stopping: str | None = None  # why no further step starts

    # -- deciding -----------------------------------------------------------------

    def decide(self, step: Step, would_run: Collection[str] = ()) -> Decision:
        """Reuse or run STEP, given the versions the steps it needs registered (or that
        those in WOULD_RUN run first, in a dry run)."""
        inputs: dict[str, Version] = {}
        for item in step.inputs:
            if item.upstream is None:
                assert item.version is not None
                inputs[item.name] = item.version
            elif item.upstream.step in would_run:
                return Decision(False, f"input {item.name} comes from {item.upstream.step},"
                                       " which runs first")  # fmt: skip
            else:
                inputs[item.name] = self.results[item.upstream.step][item.upstream.output]
        parts = reuse.key_parts(step, self.pipeline.folder, inputs)
        if self.force:
            return Decision(False, "--force", parts)
        if not step.reuse:
            return Decision(False, "reuse: false", parts)
        key = reuse.reuse_key(parts)
        pruned: Version | None = None
        for run_id in self.log.reusable_runs(key):
            outputs = self._registered(step, run_id)
            if outputs is None:
                continue
            if gone := [v for v in outputs.values() if v.pruned_at is not None]:
                pruned = pruned or gone[0]
                continue
            return Decision(True, "nothing changed", parts, run_id, outputs)
        if pruned is not None:
            return Decision(False, f"the earlier run's {pruned.ref} was pruned", parts)
        before = self.log.last_key_parts(self.pipeline.name, step.name)
        if before is None:
            return Decision(False, "no earlier run", parts)
        if changes := reuse.changed(before, parts):
            return Decision(False, "changed: " + ", ".join(changes), parts)
        return Decision(False, "the earlier run's outputs are not all registered", parts)

    def _registered(self, step: Step, run_id: str) -> dict[str, Version] | None:
        """The versions RUN_ID registered, if it registered every output of STEP that a
        later step reads (pruned ones included: the caller says so)."""
        try:
            run = self.runs.get(run_id)
        except NotFound:
            return None
        versions = {o.name: o.version for o in run.outputs if o.version is not None}
        return None if step.read_later - versions.keys() else versions

    def plan(self) -> list[tuple[Step, Decision]]:
        """What a run would do now, changing nothing (`--dry-run`)."""
        would_run: set[str] = set()
        planned = []
        for step in self.pipeline.steps.values():
            decision = self.decide(step, would_run)
            if decision.reuse:
                self.results[step.name] = decision.outputs
            else:
                would_run.add(step.name)
            planned.append((step, decision))
        return planned

    # -- running ------------------------------------------------------------------

    def run(self) -> PipelineRun:
        file = str(self.pipeline.file.absolute())
        record = PipelineRun(new_run_id(), self.pipeline.name, file, now(), socket.gethostname(),
                             os.getpid(), getpass.getuser())  # fmt: skip
        self.log.start(record)
        self.say(f"pipeline {self.pipeline.name}: run {record.id}")
        running: dict[str, Running] = {}
        failure: int | None = None
        with self._signals(running), self._ending(record.id, running):
            while True:
                if self.stopping is None:
                    self._start_ready(record.id, running)
                if not running:
                    break
                ended = self._wait(running)
                code = self._finish(record.id, ended)
                if code != 0 and failure is None:
                    failure = code
                    self.stopping = f"{ended.step.name} failed"
        self._not_started(record.id)
        exit_code = failure if failure is not None else (130 if self.stopping else 0)
        self.log.finish(record.id, now(), exit_code)
        return self.log.get(record.id)

    def _start_ready(self, pipeline_run: str, running: dict[str, Running]) -> None:
        """Decide every step whose needs are done, reusing or starting it, while fewer
        than `jobs` run; a reused step may make others ready at once."""
        progressed = True
        while progressed and len(running) < self.jobs:
            progressed = False
            for step in self.pipeline.steps.values():
                if step.name in self.records or not step.needs <= self.results.keys():
                    continue
                if len(running) >= self.jobs:
                    return
                decision = self.decide(step)
                progressed = True
                if decision.reuse:
                    self._reused(pipeline_run, step, decision)
                else:
                    running[step.name] = self._start(pipeline_run, step, decision)

    def _reused(self, pipeline_run: str, step: Step, decision: Decision) -> None:
        record = StepRecord(step.name, "succeeded", True, decision.reason, decision.run,
                            0, decision.key, decision.parts)  # fmt: skip
        self.records[step.name] = record
        self.log.put_step(pipeline_run, record)
        self.results[step.name] = decision.outputs
        self.say(f"{step.name}: reused run {decision.run}{_versions(decision.outputs)}")

    def _start(self, pipeline_run: str, step: Step, decision: Decision) -> Running:
        run_id = new_run_id()
        record = StepRecord(step.name, "running", False, decision.reason, None, None,
                            decision.key, decision.parts, sorted(step.derived))  # fmt: skip
        self.records[step.name] = record
        self.log.put_step(pipeline_run, record)
        argv = [sys.executable, "-m", "amlfs", "--home", str(self.home), "run",
                "--run-id", run_id, *self._wiring(step), "--", *step.command]  # fmt: skip
        self.say(f"{step.name}: running ({decision.reason}): run {run_id}")
        process = subprocess.Popen(argv, cwd=self.pipeline.folder, env={**os.environ, **step.env},
                                   stdout=self.step_stdout)  # fmt: skip
        record.run_id = run_id  # recorded once the run is, when it ends
        return Running(step, record, process)

    def _wiring(self, step: Step) -> list[str]:
        """`--input` and `--output` options: inputs pinned to exact versions."""
        options = []
        for item in step.inputs:
            if item.upstream is None:
                assert item.version is not None
                version = item.version
            else:
                version = self.results[item.upstream.step][item.upstream.output]
            options += ["--input", f"{item.name}={version.ref},mode={item.mode}"]
        for spec in step.outputs:
            options += ["--output", _output_option(spec)]
        return options

    def _wait(self, running: dict[str, Running]) -> Running:
        """The first step of RUNNING to end (removed from it)."""
        while True:
            for name, item in running.items():
                if item.process.poll() is not None:
                    return running.pop(name)
            time.sleep(POLL_S)

    def _finish(self, pipeline_run: str, ended: Running) -> int:
        """Record how ENDED went; return its exit status (non-zero: it failed)."""
        step, record = ended.step, ended.record
        code = _exit_status(ended.process.returncode)
        try:
            run = self.runs.get(record.run_id or "")
        except NotFound:
            run = None  # `amlfs run` refused before it started anything (its error says why)
            record.run_id, record.reason = None, "amlfs run did not start"

        versions = {} if run is None else {o.name: o.version for o in run.outputs if o.version}
        if code == 0 and (missing := sorted(step.read_later - versions.keys())):
            code, record.reason = 1, f"output {missing[0]} registered nothing"
        record.status, record.exit_code = ("succeeded" if code == 0 else "failed"), code
        self.log.put_step(pipeline_run, record)
        if code == 0:
            self.results[step.name] = versions
            self.say(f"{step.name}: ran ({record.reason}): run {record.run_id}"
                     f"{_versions(versions)}")  # fmt: skip
        else:
            self.say(f"{step.name}: failed (exit {code}): run {record.run_id or '-'}")
        return code

    def _not_started(self, pipeline_run: str) -> None:
        for step in self.pipeline.steps.values():
            if step.name in self.records:
                continue
            blocked = sorted(n for n in step.needs if n not in self.results)
            reason = (f"needs {', '.join(blocked)}, which did not succeed" if blocked
                      else f"the pipeline stopped: {self.stopping}")  # fmt: skip
            record = StepRecord(step.name, "not-started", False, reason)
            self.records[step.name] = record
            self.log.put_step(pipeline_run, record)
            self.say(f"{step.name}: not started ({reason})")

    @contextlib.contextmanager
    def _ending(self, pipeline_run: str, running: dict[str, Running]) -> Iterator[None]:
        """If the pipeline itself fails, the steps it started end as on SIGTERM (their
        take-down included), waited for up to END_WAIT_S each, and the pipeline run is
        recorded as failed."""
        try:
            yield
        except BaseException:
            for item in running.values():
                with contextlib.suppress(ProcessLookupError):
                    item.process.terminate()
            for item in running.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    item.process.wait(END_WAIT_S)
            with contextlib.suppress(Exception):  # the error being raised says more
                self.log.finish(pipeline_run, now(), EXIT_RUNTIME)
            raise

    @contextlib.contextmanager
    def _signals(self, running: dict[str, Running]) -> Iterator[None]:
        """Ctrl-C, SIGTERM and SIGHUP start no further step; steps already running end as
        the signal makes them (the terminal's Ctrl-C reaches them itself)."""

        def stop(signum: int, _frame: object) -> None:
            self.stopping = f"interrupted by {signal.Signals(signum).name}"
            if signum in FORWARDED:
                for item in running.values():
                    with contextlib.suppress(ProcessLookupError):
                        item.process.send_signal(signum)

        signums = (signal.SIGINT, *FORWARDED)
        previous = {signum: signal.signal(signum, stop) for signum in signums}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _output_option(spec: OutputSpec) -> str:
    register = f",register={spec.register}" if spec.register else ""
    return f"{spec.name}={spec.datastore}:{spec.path},mode={spec.mode}{register}"


def _versions(versions: dict[str, Version]) -> str:
    return "".join(f" {name}={v.ref}" for name, v in sorted(versions.items()))


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode
