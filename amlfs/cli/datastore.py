"""`amlfs datastore …`: named storage roots and where their credentials come from."""

from __future__ import annotations

import click

from amlfs.cli.context import app, common_options, json_option
from amlfs.cli.output import emit_json, table
from amlfs.datastores import make_datastore
from amlfs.registry.models import Datastore


@click.group()
def datastore() -> None:
    """Register and inspect datastores."""


@datastore.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--connection-string-env", metavar="VAR", help="Env var with a connection string.")
@click.option("--account-key-env", metavar="VAR", help="Env var with the account key.")
@click.option("--sas-token-env", metavar="VAR", help="Env var with a SAS token.")
@click.option("--anonymous", is_flag=True, help="Read a public container without credentials.")
@click.option("--account-name", help="Azure storage account (when the URL does not name it).")
@common_options
@click.pass_context
def add(ctx: click.Context, name: str, url: str, **credentials: object) -> None:
    """Register datastore NAME at fsspec URL (az://container/prefix, file:///path, …).

    Without a credential option an Azure datastore uses the Azure SDK's default
    credential chain. Secrets stay in the environment: only the variable's name is kept.
    """
    ds = app(ctx).registry().add_datastore(make_datastore(name, url, **credentials))
    click.echo(f"datastore {ds.name} added ({ds.url}, credentials: {_credential_text(ds)})")


@datastore.command("list")
@json_option
@common_options
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List datastores."""
    stores = app(ctx).registry().list_datastores()
    if as_json:
        emit_json([ds.public_dict() for ds in stores])
        return
    table(["NAME", "URL", "CREDENTIALS"], [(d.name, d.url, _credential_text(d)) for d in stores])


@datastore.command("show")
@click.argument("name")
@json_option
@common_options
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one datastore."""
    ds = app(ctx).registry().get_datastore(name)
    if as_json:
        emit_json(ds.public_dict())
        return
    click.echo(f"name:         {ds.name}")
    click.echo(f"url:          {ds.url}")
    click.echo(f"credentials:  {_credential_text(ds)}")
    if ds.account_name:
        click.echo(f"account:      {ds.account_name}")
    click.echo(f"created:      {ds.created_at}")


@datastore.command("remove")
@click.argument("name")
@common_options
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove a datastore that no dataset version uses."""
    app(ctx).registry().remove_datastore(name)
    click.echo(f"datastore {name} removed")


def _credential_text(ds: Datastore) -> str:
    return f"{ds.credential} ${ds.credential_env}" if ds.credential_env else ds.credential
