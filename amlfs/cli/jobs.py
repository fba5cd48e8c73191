"""`amlfs run`, `amlfs runs list|show` and `amlfs lineage`: jobs and what they read and wrote."""

from __future__ import annotations

import json
from pathlib import Path

import click

from amlfs.cli.context import app, common_options, json_option
from amlfs.cli.mount import home_of
from amlfs.cli.output import emit_json, table


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=DATASET[:VERSION][,mode=…]",
    help="A dataset version for the command: mode=mount (default) or download.",
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    metavar="NAME=DATASTORE:PATH[,mode=…][,register=DATASET]",
    help="A folder for the command's results: mode=upload (default; uploaded after"
    " exit 0) or mount (stored as each file is closed); register=DATASET"
    " registers it as the next version on success.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where downloaded inputs, upload outputs and mountpoints go, in a folder"
    " per run removed at the end (default: HOME/runs).",
)
@click.option(
    "--pass-env",
    multiple=True,
    metavar="VAR",
    help="Pass the credential variable VAR on to the command (a datastore's"
    " --…-env variables are removed from its environment otherwise).",
)
# A pipeline names the run of each step it starts, to find the run afterwards.
@click.option("--run-id", hidden=True)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] COMMAND [ARG]…")
@common_options
@click.pass_context
def run_command(ctx: click.Context, inputs: tuple[str, ...], outputs: tuple[str, ...],
                work_dir: Path | None, pass_env: tuple[str, ...], run_id: str | None,
                command: tuple[str, ...]) -> int:  # fmt: skip
    """Run COMMAND with its inputs and outputs wired up; exit with its exit status.

    {inputs.NAME} and {outputs.NAME} in the arguments, and $AMLFS_INPUT_NAME and
    $AMLFS_OUTPUT_NAME in its environment, are the local paths; {run-id} in an argument
    or an output path and {output-name} in an output path are substituted. The run and
    the exact versions it read and registered are recorded (`amlfs runs`, `amlfs lineage`).
    The command does not see the variables datastores read their credentials from,
    but those given with --pass-env.
    """
    from amlfs.cli.outputs import UploadWait
    from amlfs.cli.progress import TransferProgress
    from amlfs.errors import UserError
    from amlfs.jobs.lost import clean_lost_runs
    from amlfs.jobs.run import RUN_ID, Job, RunHooks
    from amlfs.jobs.spec import parse_input, parse_output

    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise UserError(f"--run-id {run_id}: expected YYYYMMDD-HHMMSS-xxxxxx")
    hooks = RunHooks(say=lambda line: click.echo(f"amlfs: {line}", err=True),
                     transfer=TransferProgress, waiting=UploadWait())  # fmt: skip
    job = Job(home_of(ctx), app(ctx).registry(), [parse_input(i) for i in inputs],
              [parse_output(o) for o in outputs], list(command), hooks, work_dir,
              pass_env, run_id)  # fmt: skip
    clean_lost_runs(job.home, hooks.say, lambda: app(ctx).registry())  # runs killed before
    return job.execute()


@click.group("runs")
def runs() -> None:
    """Recorded runs."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(1), help="Only the newest N runs.")
@json_option
@common_options
@click.pass_context
def runs_list(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """Recorded runs, newest first."""
    from amlfs.jobs.lineage import state_of
    from amlfs.registry.runs import RunLog

    recorded, home = RunLog(app(ctx).registry()).list(limit), home_of(ctx)
    if as_json:
        emit_json([run.public_dict(state_of(run, home)) for run in recorded])
        return
    if not recorded:
        click.echo("no runs")
        return
    table(["RUN", "STATE", "EXIT", "STARTED", "INPUTS", "OUTPUTS", "COMMAND"], [
        [run.id, state_of(run, home), "-" if run.exit_code is None else run.exit_code,
         run.started_at,
         " ".join(i.version.ref for i in run.inputs) or "-",
         " ".join(o.version.ref for o in run.outputs if o.version) or "-",
         _shorten(" ".join(run.command))]
        for run in recorded
    ])  # fmt: skip


@runs.command("show")
@click.argument("run_id", metavar="RUN_ID")
@json_option
@common_options
@click.pass_context
def runs_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """One run: its command, times, exit code, host, inputs and outputs."""
    from amlfs.jobs.lineage import state_of
    from amlfs.registry.runs import RunLog

    run = RunLog(app(ctx).registry()).get(run_id)
    data = run.public_dict(state_of(run, home_of(ctx)))
    if as_json:
        emit_json(data)
        return
    for key in ("id", "state", "command", "started_at", "ended_at", "exit_code", "error",
                "host", "pid", "user"):  # fmt: skip
        value = " ".join(data[key]) if key == "command" else data[key]
        if value is not None:
            click.echo(f"{key + ':':<11} {value}")
    for item in data["inputs"]:
        click.echo(f"input:      {item['name']} = {item['version']} ({item['mode']})")
    for item in data["outputs"]:
        registered = f", registered {item['version']}" if item["version"] else ""
        click.echo(f"output:     {item['name']} = {item['location']} ({item['mode']}{registered})")


@runs.command("prune")
@click.option("--older-than", "days", type=click.FloatRange(min=0), required=True,
              metavar="DAYS", help="Prune runs that ended more than DAYS days ago.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List what would be pruned; delete nothing.")
@json_option
@common_options
@click.pass_context
def runs_prune(ctx: click.Context, days: float, dry_run: bool, as_json: bool) -> None:
    """Delete the records of runs that ended more than DAYS days ago, but every run that
    read or produced a version (lineage stays whole) or that a pipeline step names."""
    from amlfs.jobs.prune import prune_runs

    report = prune_runs(home_of(ctx), app(ctx).registry(), days, dry_run)
    if as_json:
        emit_json(report.public_dict())
        return
    for candidate in report.pruned:
        click.echo(f"{'would prune' if dry_run else 'pruned'} run {candidate.id}"
                   f" (ended {candidate.ended_at or 'never: lost'})")  # fmt: skip
    kept = ", ".join(f"{n} {reason}" for reason, n in sorted(report.kept.items()))
    click.echo(
        f"{'would prune' if dry_run else 'pruned'} {len(report.pruned)} run(s) that"
        f" ended before {report.ended_before}"
        + (f"; kept older ones that lineage or pipelines need ({kept})" if kept else "")
    )


@click.command("lineage")
@click.argument("ref", metavar="NAME[:VERSION]")
@json_option
@common_options
@click.pass_context
def lineage_command(ctx: click.Context, ref: str, as_json: bool) -> None:
    """The run that produced NAME[:VERSION] (with the inputs it read, back through their
    own producers) and the runs that read it."""
    from amlfs.jobs.lineage import lineage
    from amlfs.registry.runs import RunLog

    registry = app(ctx).registry()
    data = lineage(RunLog(registry), registry.resolve(ref), home_of(ctx))
    if as_json:
        emit_json(data)
        return
    click.echo(data["version"] + _pruned(data))
    _print_origin(data, "  ")
    readers = data["read_by"]
    click.echo(f"  read by {len(readers)} run(s)" + (":" if readers else ""))
    for run in readers:
        click.echo(f"    {_run_line(run)}")
    for child in data["derived_into"]:
        click.echo(f"  {child['operation']} into {child['version']}"
                   f" ({_parameters(child['parameters'])})")  # fmt: skip


def _print_origin(node: dict, indent: str) -> None:
    if node.get("expanded") is False:
        click.echo(f"{indent}(lineage shown above)")
        return
    if derived := node.get("derived_from"):
        click.echo(f"{indent}{derived['operation']} of {derived['version']}"
                   f" ({_parameters(derived['parameters'])})")  # fmt: skip
        _print_origin(derived, indent + "  ")
        return
    run = node["produced_by"]
    if run is None:
        click.echo(f"{indent}registered directly, not by a run")
        return
    click.echo(f"{indent}produced by {_run_line(run)}")
    for item in run["inputs"]:
        click.echo(f"{indent}  input {item['name']} = {item['version']} ({item['mode']})"
                   f"{_pruned(item)}")  # fmt: skip
        _print_origin(item, indent + "    ")


def _pruned(node: dict) -> str:
    pruned = node.get("pruned_at")
    return f" [pruned {pruned[:10]}: data deleted]" if pruned else ""


def _parameters(parameters: dict) -> str:
    """`fraction=0.1, seed=0`: a derivation's parameters on one line."""
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in parameters.items())  # fmt: skip


def _run_line(run: dict) -> str:
    exit_code = "" if run["exit_code"] is None else f", exit {run['exit_code']}"
    return (f"run {run['run']} ({run['state']}{exit_code}, {run['started_at']}):"
            f" {_shorten(' '.join(run['command']))}")  # fmt: skip


def _shorten(text: str, width: int = 60) -> str:
    """TEXT on one line (a script given to `sh -c` has several), at most WIDTH long."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
