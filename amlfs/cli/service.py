"""`amlfs daemon`: serve the mounts a YAML file declares, in the foreground, for systemd."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs import mounts
from amlfs.cli.context import common_options
from amlfs.cli.mount import checked_metrics_address, home_of, metrics_option


@click.command("daemon")
@click.option("--config", "config_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file with a `mounts:` list (see docs/systemd.md).")  # fmt: skip
@metrics_option
@common_options
@click.pass_context
def daemon(ctx: click.Context, config_path: Path, metrics_address: str | None) -> None:
    """Serve every mount declared in FILE until SIGTERM; SIGHUP reads FILE again.

    Each mount is served by a daemon of its own; a bad entry is reported and skipped.
    Readiness and a status line go to systemd (Type=notify) when it started us.
    """
    from amlfs.service.daemon import serve

    home = home_of(ctx)
    mounts.daemon_logging()
    serve(home, config_path.absolute(), checked_metrics_address(metrics_address))
