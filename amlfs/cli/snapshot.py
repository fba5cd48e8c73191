"""`amlfs snapshot …`: take, list, show and delete snapshots of versions."""

from __future__ import annotations

import click

from amlfs.cli.context import app, common_options, json_option
from amlfs.cli.mount import home_of
from amlfs.cli.output import emit_json, human_bytes, table
from amlfs.errors import UserError
from amlfs.registry import paths
from amlfs.registry.snapshots import Snapshot, Snapshots


@click.group()
def snapshot() -> None:
    """Snapshots of versions: a profile, and optionally a copy of the data."""


@snapshot.command("create")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--name", "name", metavar="SNAP",
              help="The snapshot's name [default: snapshot-YYYYMMDDHHMMSS, UTC].")  # fmt: skip
@click.option(
    "--copy-to",
    "copy_to",
    metavar="DATASTORE:PATH",
    help="Copy the pinned bytes below this folder; the snapshot reads the copy.",
)
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Files copied at once [default: 16].")  # fmt: skip
@json_option
@common_options
@click.pass_context
def create(ctx: click.Context, ref: str, name: str | None, copy_to: str | None,
           workers: int | None, as_json: bool) -> int:  # fmt: skip
    """Take a snapshot of version NAME[:VERSION] (the latest unless given).

    Every pinned file is checked against its source first: if any changed or vanished,
    they are listed, nothing is recorded and the exit status is 1. Re-running an
    interrupted --copy-to with the same --name keeps the blobs already copied.
    Prints NAME:VERSION@SNAP as the last line (with --json, the snapshot as JSON).
    """
    from amlfs import snapshots
    from amlfs.cli.progress import TransferProgress
    from amlfs.home import ensure_home

    if "@" in ref:
        raise UserError(f"{ref!r} is a snapshot: take a snapshot of a version (NAME[:VERSION])")
    registry = app(ctx).registry()
    version = registry.resolve(ref)
    name = paths.check_name("snapshot", name) if name is not None else snapshots.default_name()
    request = None
    if copy_to is not None:
        datastore, path = paths.parse_location(copy_to)
        pending = ensure_home(home_of(ctx)) / "snapshots" / "pending"
        request = snapshots.CopyRequest(datastore, path, pending,
                                        workers or snapshots.copy.DEFAULT_WORKERS)  # fmt: skip
    try:
        if request is None:
            taken = snapshots.create(registry, version, name)
        else:
            with TransferProgress("copy", version.file_count, version.total_bytes) as progress:
                request.progress = progress.advance
                taken = snapshots.create(registry, version, name, request)
    except snapshots.Drifted as drift:
        for change in drift.report.changed:
            click.echo(
                f"changed  {change.path}  (pinned {change.pinned_size} bytes etag "
                f"{change.pinned_etag}; now {change.size} bytes etag {change.etag})"
            )
        for path in drift.report.missing:
            click.echo(f"missing  {path}")
        raise
    if as_json:
        emit_json(taken.public_dict())  # its "snapshot" is the reference
        return 0
    where = f", copy at {taken.copy_location}" if taken.copy_location else ", no copy"
    click.echo(f"snapshot of {version.file_count:,} files "
               f"({human_bytes(version.total_bytes)}){where}", err=True)  # fmt: skip
    click.echo(taken.ref)
    return 0


@snapshot.command("list")
@click.argument("ref", metavar="[NAME[:VERSION]]", required=False)
@json_option
@common_options
@click.pass_context
def list_(ctx: click.Context, ref: str | None, as_json: bool) -> None:
    """List snapshots: all, those of dataset NAME, or of one of its versions."""
    dataset, number = paths.parse_version_ref(ref) if ref else (None, None)
    found = Snapshots(app(ctx).registry()).list(dataset, number)
    if as_json:
        emit_json([s.public_dict() for s in found])
        return
    table(
        ["SNAPSHOT", "FILES", "SIZE", "CREATED", "COPY"],
        [(s.ref, f"{s.profile['files']:,}", human_bytes(s.profile["bytes"]), s.created_at,
          s.copy_location or "-") for s in found],
    )  # fmt: skip


@snapshot.command("show")
@click.argument("ref", metavar="NAME:VERSION@SNAP")
@json_option
@common_options
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show a snapshot: its profile, taken when it was created, and where its copy is."""
    from amlfs.cli.reports import render_profile
    from amlfs.profile import Profile

    found = _snapshot(ctx, ref)
    if as_json:
        emit_json({**found.public_dict(), "profile": found.profile})
        return
    click.echo(f"snapshot:     {found.ref}")
    click.echo(f"created:      {found.created_at}")
    if found.copy is not None:
        click.echo(f"copy:         {found.copy_location} ({found.copy.file_count:,} files)")
    else:
        click.echo(f"copy:         none (reads the source, like {found.version.ref})")
    click.echo("\n".join(render_profile(Profile.from_json(found.profile))))


@snapshot.command("delete")
@click.argument("ref", metavar="NAME:VERSION@SNAP")
@common_options
@click.pass_context
def delete(ctx: click.Context, ref: str) -> None:
    """Delete a snapshot and the blobs its copy wrote (nothing else). Refused while a
    mount or a running run reads it."""
    from amlfs import snapshots

    found = _snapshot(ctx, ref)
    removed = snapshots.delete(app(ctx).registry(), found, home_of(ctx))
    blobs = f", {removed} blob(s) of its copy removed" if found.copy is not None else ""
    click.echo(f"deleted {found.ref}{blobs}")


def _snapshot(ctx: click.Context, ref: str) -> Snapshot:
    if "@" not in ref:
        raise UserError(f"{ref!r}: expected NAME:VERSION@SNAP")
    return Snapshots(app(ctx).registry()).by_ref(ref)
