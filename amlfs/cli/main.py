"""The `amlfs` command: the root group and the one place errors become exit codes."""

from __future__ import annotations

import importlib
import logging
import sqlite3
import sys
import traceback

import click

from amlfs import __version__
from amlfs.cli.context import AppContext, common_options
from amlfs.errors import EXIT_RUNTIME, EXIT_USAGE, AmlfsError
from amlfs.home import private_files
from amlfs.warm import WarmDaemon

log = logging.getLogger("amlfs")

# Command groups are imported when used: `amlfs mount` need not load YAML schemas or
# the listing code, and every command starts faster.
COMMANDS = {
    "apply": "amlfs.cli.apply:apply_command",
    "cache": "amlfs.cli.cache:cache",
    "catalog": "amlfs.cli.catalog:catalog",
    "daemon": "amlfs.cli.service:daemon",
    "dataset": "amlfs.cli.dataset:dataset",
    "datastore": "amlfs.cli.datastore:datastore",
    "download": "amlfs.cli.transfer:download_command",
    "lineage": "amlfs.cli.jobs:lineage_command",
    "mount": "amlfs.cli.mount:mount",
    "output": "amlfs.cli.outputs:output",
    "pipeline": "amlfs.cli.pipeline:pipeline",
    "run": "amlfs.cli.jobs:run_command",
    "runs": "amlfs.cli.jobs:runs",
    "snapshot": "amlfs.cli.snapshot:snapshot",
    "status": "amlfs.cli.mount:status",
    "unmount": "amlfs.cli.mount:unmount",
    "upload": "amlfs.cli.transfer:upload_command",
}


class LazyGroup(click.Group):
    """click's documented pattern for subcommands loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="amlfs")
@common_options
def cli() -> None:
    """Pinned, versioned datasets from object storage under a local path."""


def main(argv: list[str] | None = None, *, own_process: bool = False,
         warm: WarmDaemon | None = None) -> int:  # fmt: skip
    """Run the CLI; every failure is one `amlfs: error: …` line and an exit code.
    OWN_PROCESS: this process is the command's alone (see AppContext); WARM: the daemon
    started ahead for a mount (amlfs.warm), dismissed unless the command hands it over."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    configure_logging(debug)
    try:
        return _run(argv, AppContext(own_process=own_process, warm=warm), debug)
    finally:
        if warm is not None:
            warm.dismiss()


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="amlfs: %(levelname)s: %(name)s: %(message)s")
    if debug:
        log.setLevel(logging.DEBUG)


def _run(argv: list[str], context: AppContext, debug: bool) -> int:
    try:
        # Everything amlfs creates is private unless made for the user elsewhere (see
        # private_files); its daemons are amlfs processes too and start here as well.
        with private_files():
            # Without standalone mode click returns ctx.exit()'s code, or the command's value.
            code = cli.main(args=argv, prog_name="amlfs", standalone_mode=False,
                            obj=context)  # fmt: skip
    except click.Abort:
        click.echo("amlfs: interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())  # a bare `amlfs` or `amlfs dataset`: show what to type
        return EXIT_USAGE
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        return _fail(exc.format_message() + hint, EXIT_USAGE, debug)
    except click.ClickException as exc:
        return _fail(exc.format_message(), EXIT_USAGE, debug)
    except AmlfsError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except sqlite3.OperationalError as exc:
        return _fail(f"registry: {exc}", EXIT_RUNTIME, debug)
    except BrokenPipeError:
        return EXIT_RUNTIME
    except Exception as exc:
        message = f"internal error: {type(exc).__name__}: {exc}"
        if not debug:
            message += " (run with --debug for details)"
        return _fail(message, EXIT_RUNTIME, debug)
    for warning in context.warnings:
        click.echo(f"amlfs: warning: {' '.join(warning.split())}", err=True)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    first_line = " ".join(message.split())
    click.echo(f"amlfs: error: {first_line}", err=True)
    return code
