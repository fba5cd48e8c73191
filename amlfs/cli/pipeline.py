"""`amlfs pipeline run|runs|show`: steps wired by their outputs, reused when unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from amlfs.cli.context import app, common_options, json_option, read_text_file
from amlfs.cli.mount import home_of
from amlfs.cli.output import emit_json, human_bytes, table
from amlfs.pipelines.state import state_of

if TYPE_CHECKING:
    from amlfs.pipelines.prune import Deleted, PrunePlan
    from amlfs.registry.models import Version

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
        emit_json([{**run.public_dict(), "state": state_of(run)} for run in recorded])
        return
    if not recorded:
        click.echo("no pipeline runs")
        return
    table(["RUN", "PIPELINE", "STATE", "EXIT", "STARTED", "STEPS"], [
        [run.id, run.name, state_of(run), "-" if run.exit_code is None else run.exit_code,
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

    def shown(version: Version) -> str:
        return version.ref + (" (pruned)" if version.pruned_at and not as_json else "")

    outputs = {
        s.step: {o.name: shown(o.version) for o in runs.get(s.run_id).outputs if o.version}
        for s in record.steps if s.run_id is not None
    }  # fmt: skip
    data = {**record.public_dict(outputs), "state": state_of(record)}
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


@pipeline.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(0),
    required=True,
    metavar="DAYS",
    help="Prune intermediates of pipeline runs that ended more than DAYS ago.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be pruned and kept only.")
@json_option
@common_options
@click.pass_context
def pipeline_prune(ctx: click.Context, days: float, dry_run: bool, as_json: bool) -> int:
    """Delete the stored data of intermediate outputs (registered under a derived name
    because a later step read them) of pipeline runs older than DAYS, unless something
    kept still needs it: a recent run or pipeline run, a snapshot, a version pinning the
    same files, a mount. The versions stay in the registry and in lineage, marked pruned.

    Exits 1 if the storage failed to delete some files: the versions stay marked, and the
    next prune finishes them.
    """
    from amlfs.pipelines import prune

    registry, home = app(ctx).registry(), home_of(ctx)
    cutoff = prune.cutoff_of(days)
    if dry_run:
        plan = prune.plan(registry, home, cutoff)
        deleted: list[Deleted] = []
    else:
        plan = prune.mark(registry, home, cutoff)
        deleted = prune.delete(registry, plan.unfinished + [i.version for i in plan.prune])
    if as_json:
        emit_json(_prune_report(plan, deleted, dry_run))
    else:
        _print_prune(plan, deleted, dry_run)
    return 1 if any(d.error for d in deleted) else 0


def _prune_report(plan: PrunePlan, deleted: list[Deleted], dry_run: bool) -> dict:
    results = {d.version.id: d for d in deleted}

    def outcome(version: Version) -> dict:
        d = results.get(version.id)
        if d is None:
            return {}
        return {"files_deleted": d.files, "bytes_deleted": d.bytes, "already_gone": d.gone,
                "changed_left": d.changed, "error": d.error}  # fmt: skip

    return {
        "cutoff": plan.cutoff, "dry_run": dry_run,
        "pruned": [{"version": i.version.ref, "pipeline": i.pipeline,
                    "pipeline_run": i.pipeline_run, "step": i.step, "output": i.output,
                    "run": i.run_id, "ended_at": i.ended_at, "files": i.version.file_count,
                    "bytes": i.version.total_bytes, **outcome(i.version)}
                   for i in plan.prune],
        "finished": [{"version": v.ref, **outcome(v)} for v in plan.unfinished],
        "kept": [{"version": k.intermediate.version.ref, "reason": k.reason}
                 for k in plan.kept],
    }  # fmt: skip


def _print_prune(plan: PrunePlan, deleted: list[Deleted], dry_run: bool) -> None:
    results = {d.version.id: d for d in deleted}
    verb = "would prune" if dry_run else "pruned"
    for version in plan.unfinished:
        click.echo(f"{'would finish' if dry_run else 'finished'} pruning {version.ref}"
                   f"{_deleted(results.get(version.id))}")  # fmt: skip
    for item in plan.prune:
        v = item.version
        click.echo(f"{verb} {v.ref}: {item.pipeline}/{item.step}, run {item.run_id},"
                   f" ended {item.ended_at[:10]}; {v.file_count} file(s),"
                   f" {human_bytes(v.total_bytes)}{_deleted(results.get(v.id))}")  # fmt: skip
    for kept in plan.kept:
        click.echo(f"kept {kept.intermediate.version.ref}: {kept.reason}")
    freed = (sum(i.version.total_bytes for i in plan.prune) if dry_run
             else sum(d.bytes for d in deleted))  # fmt: skip
    count = len(plan.prune) + len(plan.unfinished)
    click.echo(f"{verb} {count} version(s), {human_bytes(freed)}"
               f"{' to free' if dry_run else ' freed'}; kept {len(plan.kept)}")  # fmt: skip


def _deleted(result: Deleted | None) -> str:
    if result is None:
        return ""
    if result.error:
        return f" -- NOT deleted yet: {result.error} (run prune again)"
    extra = [f"{result.gone} already gone"] if result.gone else []
    extra += [f"{result.changed} changed since pinned, left alone"] if result.changed else []
    return f" ({', '.join(extra)})" if extra else ""
