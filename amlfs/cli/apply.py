"""`amlfs apply FILE`: declare datastores and datasets in YAML."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs.apply import apply
from amlfs.cli.context import app, common_options, read_text_file
from amlfs.registry.manifest import load_declaration


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@common_options
@click.pass_context
def apply_command(ctx: click.Context, file: Path) -> None:
    """Make the registry hold the datastores and datasets FILE declares.

    Applying the same file twice changes nothing; a dataset whose paths changed gets a
    new version. Nothing is written unless the whole file can be applied.
    """
    declaration = load_declaration(read_text_file(file), str(file))
    for outcome in apply(app(ctx).registry(), declaration):
        click.echo(str(outcome))
