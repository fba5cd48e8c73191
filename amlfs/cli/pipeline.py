"""`amlfs pipeline run|runs|show`: steps wired by their outputs, reused when unchanged."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs.cli.context import app, common_options, json_option, read_text_file
from amlfs.cli.mount import home_of
from amlfs.cli.output import emit_json, table

STDERR_FD = 2  # the process's own, even where sys.stderr is replaced


@click.group("pipeline")
def pipeline() -> None:
    """Pipelines: steps that read earlier steps' outputs (see docs/pipelines.md)."""


@pipeline.command("run")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Run at most N independent steps at once.")  # fmt: skip
@click.option("--force", is_flag=True, help="Run every step, reusing none.")
@click.option("--dry-run", is_flag=True, help="Print what would run or be reused; run nothing.")
@json_option
@common_options
@click.pass_context
def pipeline_run(ctx: click.Context, file: Path, jobs: int, force: bool, dry_run: bool,
                 as_json: bool) -> int:  # fmt: skip
    """Run the steps FILE declares in dependency order, each as an `amlfs run`.

    A step whose command, outputs, env, code files and exact input versions equal those
    of an earlier successful run is reused: not run, its registered versions passed on.
    Exits 0 when every step succeeded, else with the first failing step's status; no
    step starts after a step failed.
    """
    from amlfs.pipelines.runner import PipelineRunner
    from amlfs.pipelines.spec import load_pipeline

    registry = app(ctx).registry()
    loaded = load_pipeline(read_text_file(file), file, registry)
    say = (lambda line: click.echo(f"amlfs: {line}", err=True)) if as_json else click.echo
    # With --json, stdout is the report alone: the steps' own output goes to stderr.
    runner = PipelineRunner(home_of(ctx), registry, loaded, jobs=jobs, force=force, say=say,
                            step_stdout=STDERR_FD if as_json else None)  # fmt: skip
    if dry_run:
        planned = runner.plan()
        if as_json:
            emit_json({"name": loaded.name, "dry_run": True, "steps": [
                {"step": step.name, "action": "reuse" if d.reuse else "run",
                 "reason": d.reason, "run": d.run,
                 "outputs": {n: v.ref for n, v in sorted(d.outputs.items())}}
                for step, d in planned]})  # fmt: skip
            return 0
        for step, d in planned:
            outputs = "".join(f" {n}={v.ref}" for n, v in sorted(d.outputs.items()))
            click.echo(f"{step.name}: would reuse run {d.run}{outputs}" if d.reuse
                       else f"{step.name}: would run ({d.reason})")  # fmt: skip
        return 0
    record = runner.run()
    if as_json:
        emit_json(record.public_dict(_outputs(runner)))
    else:
        counts = _counts(record.steps)
        click.echo(f"pipeline {record.name}: run {record.id} {record.state}"
                   f" (exit {record.exit_code}): {counts}")  # fmt: skip
    return record.exit_code or 0


@pipeline.command("runs")
@click.option("--limit", type=click.IntRange(1), help="Only the newest N pipeline runs.")
@json_option
@common_options
@click.pass_context
def pipeline_runs(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """Recorded pipeline runs, newest first."""
    from amlfs.registry.pipelines import PipelineLog

    recorded = PipelineLog(app(ctx).registry()).list(limit)
    if as_json:
        emit_json([run.public_dict() for run in recorded])
        return
    if not recorded:
        click.echo("no pipeline runs")
        return
    table(["RUN", "PIPELINE", "STATE", "EXIT", "STARTED", "STEPS"], [
        [run.id, run.name, run.state, "-" if run.exit_code is None else run.exit_code,
         run.started_at, _counts(run.steps)]
        for run in recorded
    ])  # fmt: skip


@pipeline.command("show")
@click.argument("run_id", metavar="RUN_ID")
@json_option
@common_options
@click.pass_context
def pipeline_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """One pipeline run: each step, ran or reused (and why), its run and its versions."""
    from amlfs.registry.pipelines import PipelineLog
    from amlfs.registry.runs import RunLog

    registry = app(ctx).registry()
    record = PipelineLog(registry).get(run_id)
    runs = RunLog(registry)
    outputs = {
        s.step: {o.name: o.version.ref for o in runs.get(s.run_id).outputs if o.version}
        for s in record.steps if s.run_id is not None
    }  # fmt: skip
    data = record.public_dict(outputs)
    if as_json:
        emit_json(data)
        return
    for key in ("id", "name", "file", "state", "started_at", "ended_at", "exit_code"):
        if data[key] is not None:
            click.echo(f"{key + ':':<11} {data[key]}")
    table(["STEP", "STATUS", "RUN", "REASON", "OUTPUTS"], [
        [s["step"], "reused" if s["reused"] else s["status"], s["run"] or "-", s["reason"],
         " ".join(f"{n}={v}" for n, v in s["outputs"].items()) or "-"]
        for s in data["steps"]
    ])  # fmt: skip


def _outputs(runner) -> dict[str, dict[str, str]]:
    return {step: {n: v.ref for n, v in sorted(versions.items())}
            for step, versions in runner.results.items()}  # fmt: skip


def _counts(steps: list) -> str:
    """`2 ran, 1 reused, 1 failed, 1 not started`."""
    ran = sum(s.status == "succeeded" and not s.reused for s in steps)
    parts = [(ran, "ran"), (sum(s.reused for s in steps), "reused"),
             (sum(s.status == "failed" for s in steps), "failed"),
             (sum(s.status == "not-started" for s in steps), "not started"),
             (sum(s.status == "running" for s in steps), "running")]  # fmt: skip
    return ", ".join(f"{n} {what}" for n, what in parts if n) or "no steps"
