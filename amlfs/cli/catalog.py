"""`amlfs catalog …`: share this state folder's registry through objects in a datastore."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs import catalog as team_catalog
from amlfs.cli.context import app, common_options, json_option
from amlfs.cli.output import emit_json
from amlfs.home import default_home


@click.group()
def catalog() -> None:
    """Share datastores, datasets, versions, runs and lineage with other machines."""


def _home(ctx: click.Context) -> Path:
    return app(ctx).home or default_home()


@catalog.command("attach")
@click.argument("location", metavar="DATASTORE:PATH")
@json_option
@common_options
@click.pass_context
def attach(ctx: click.Context, location: str, as_json: bool) -> None:
    """Share this registry through the catalog at DATASTORE:PATH (created if empty).

    What this registry has and the catalog lacks is published; what the catalog has is
    read. Records both hold with other content are refused, by name. From then on every
    command reads the catalog first and writes to it before it writes here.
    """
    result = team_catalog.attach(_home(ctx), location)
    if as_json:
        emit_json(result.public_dict())
        return
    made = "created" if result.created else "joined"
    click.echo(f"catalog {result.location} {made}: {result.published} object(s) published,"
               f" {result.read} read; {result.listed} in the catalog")  # fmt: skip


@catalog.command("status")
@json_option
@common_options
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Where this registry is shared, and whether the catalog can be read now."""
    result = team_catalog.status(_home(ctx))
    if as_json:
        emit_json(result.public_dict())
        return
    if not result.attached:
        click.echo("not attached to a catalog (this registry is local)")
        return
    click.echo(f"catalog:      {result.location}")
    click.echo(f"attached:     {result.attached_at}")
    if result.reachable:
        click.echo(f"reachable:    yes ({result.objects} objects,"
                   f" caught up in {result.refresh_seconds:.3f} s)")  # fmt: skip
    else:
        click.echo(f"reachable:    no ({result.error})")
    click.echo(f"caught up:    {result.refreshed_at}")


@catalog.command("detach")
@common_options
@click.pass_context
def detach(ctx: click.Context) -> None:
    """Stop sharing: this registry keeps everything it holds, and stays local."""
    location = team_catalog.detach(_home(ctx))
    click.echo(f"detached from {location}; the local registry keeps its copy")
