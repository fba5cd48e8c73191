"""`amlfs dataset …`: register, inspect, export/import and verify dataset versions."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm import tqdm

from amlfs import datasets
from amlfs.cli import subsets
from amlfs.cli.context import app, common_options, json_option, read_text_file
from amlfs.cli.output import emit_json, human_bytes, table
from amlfs.errors import EXIT_RUNTIME, UserError
from amlfs.home import callers_files
from amlfs.registry.derivations import Derivations
from amlfs.registry.manifest import export_manifest, load_manifest, manifest_to_new_version
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.snapshots import Snapshots


@click.group()
def dataset() -> None:
    """Register and inspect file datasets and their versions."""


def _parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise UserError(f"invalid --tag {value!r}: use KEY=VALUE")
        tags[key] = text
    return tags


@dataset.command("register")
@click.argument("name")
@click.option("--datastore", "datastore_name", required=True, help="Datastore to read from.")
@click.option(
    "--path", "sources", multiple=True, required=True,
    help="Folder, file or glob in the datastore; repeat for more.",
)  # fmt: skip
@click.option("--description", default="", help="What this version holds.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag; repeatable.")
@common_options
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    datastore_name: str,
    sources: tuple[str, ...],
    description: str,
    tags: tuple[str, ...],
) -> None:
    """Pin every file under the given paths and register them as the next version of NAME.

    Prints NAME:VERSION as the last line.
    """
    registry = app(ctx).registry()
    with tqdm(unit=" files", desc="listing", disable=not sys.stdout.isatty(), leave=False) as bar:
        version = datasets.register(
            registry, name, datastore_name, list(sources), description=description,
            tags=_parse_tags(tags), progress=bar.update,
        )  # fmt: skip
    click.echo(
        f"registered {version.file_count:,} files ({human_bytes(version.total_bytes)}) "
        f"from {version.datastore}:{version.root or '/'}",
        err=True,
    )
    click.echo(version.ref)


@dataset.command("list")
@json_option
@common_options
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List datasets with their latest version."""
    latest = app(ctx).registry().list_datasets()
    if as_json:
        emit_json([v.public_dict() for v in latest])
        return
    table(
        ["NAME", "LATEST", "FILES", "SIZE", "DATASTORE", "CREATED"],
        [(v.dataset, v.version, f"{v.file_count:,}", human_bytes(v.total_bytes), v.datastore,
          v.created_at) for v in latest],
    )  # fmt: skip


@dataset.command("versions")
@click.argument("name")
@json_option
@common_options
@click.pass_context
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """List the versions of dataset NAME."""
    found = app(ctx).registry().list_versions(name)
    if as_json:
        emit_json([v.public_dict() for v in found])
        return
    table(
        ["VERSION", "FILES", "SIZE", "SOURCES", "CREATED", "DESCRIPTION"],
        [(v.version, f"{v.file_count:,}", human_bytes(v.total_bytes), " ".join(v.sources),
          v.created_at, ("[pruned] " if v.pruned_at else "") + v.description) for v in found],
    )  # fmt: skip


@dataset.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--files", "with_files", is_flag=True, help="Also list every pinned file.")
@json_option
@common_options
@click.pass_context
def show(ctx: click.Context, ref: str, with_files: bool, as_json: bool) -> None:
    """Show one version (the latest unless VERSION is given)."""
    registry = app(ctx).registry()
    version = registry.resolve(ref)
    files = registry.iter_files(version) if with_files else iter(())
    derivation = Derivations(registry).of(version)
    snapshots = [] if version.snapshot else Snapshots(registry).of(version)
    if as_json:
        document = version.public_dict()
        document["derived_from"] = derivation.public_dict() if derivation else None
        document["snapshots"] = [s.public_dict() for s in snapshots]
        if with_files:
            document["files"] = [_file_json(f) for f in files]
        emit_json(document)
        return
    _print_version(version)
    if derivation:
        click.echo(f"derived:      {derivation.describe()}")
    for s in snapshots:
        copy = f"copy at {s.copy_location}" if s.copy_location else "no copy"
        click.echo(f"snapshot:     {s.ref} ({s.created_at}, {copy})")
    if with_files:
        click.echo("files:")
        table(
            ["  PATH", "SIZE", "ETAG", "MD5"],
            [(f"  {f.path}", f.size, f.etag, f.md5.hex() if f.md5 else "-") for f in files],
        )


def _print_version(v: Version) -> None:
    click.echo(f"dataset:      {v.dataset}")
    click.echo(f"version:      {v.version}")
    if v.snapshot:
        click.echo(f"snapshot:     {v.snapshot} (files as read: {v.datastore}:{v.root or '/'})")
    click.echo(f"datastore:    {v.datastore}")
    click.echo(f"root:         {v.root or '/'}")
    click.echo(f"sources:      {' '.join(v.sources) or '/'}")
    click.echo(f"files:        {v.file_count:,} ({human_bytes(v.total_bytes)})")
    click.echo(f"description:  {v.description}")
    click.echo(f"tags:         {', '.join(f'{k}={val}' for k, val in v.tags.items())}")
    click.echo(f"created:      {v.created_at}")
    click.echo(f"manifest:     sha256:{v.manifest_sha256}")
    if v.pruned_at:
        click.echo(f"pruned:       {v.pruned_at} (`amlfs pipeline prune`: data deleted)")


def _file_json(f: PinnedFile) -> dict:
    return {
        "path": f.path,
        "size": f.size,
        "etag": f.etag,
        "md5": f.md5.hex() if f.md5 else None,
        "last_modified": f.last_modified,
    }


@dataset.command("export")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")  # fmt: skip
@common_options
@click.pass_context
def export(ctx: click.Context, ref: str, output: Path | None) -> None:
    """Write a version's manifest (every pinned file) as YAML."""
    registry = app(ctx).registry()
    version = registry.resolve(ref)
    url = registry.get_datastore(version.datastore).url
    text = export_manifest(version, url, registry.iter_files(version))
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    with callers_files():  # the user's file, with the modes the user expects
        tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)
    click.echo(f"wrote {version.ref} ({version.file_count:,} files) to {output}", err=True)


@dataset.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", help="Register under this dataset name instead of the manifest's.")
@common_options
@click.pass_context
def import_(ctx: click.Context, file: Path, name: str | None) -> None:
    """Register a YAML manifest as the next version of its dataset.

    The files are taken as pinned in the manifest (run `dataset verify` to compare them
    with the store). Importing a manifest equal to the latest version changes nothing.
    """
    registry = app(ctx).registry()
    manifest = load_manifest(read_text_file(file), str(file))
    new = manifest_to_new_version(manifest, name)
    datastore = registry.get_datastore(new.datastore)
    if manifest.datastore_url and manifest.datastore_url != datastore.url:
        raise UserError(
            f"{file}: datastore {datastore.name!r} is {datastore.url!r} here, but the manifest "
            f"was made for {manifest.datastore_url!r}"
        )
    version, created = registry.import_version(new)
    if not created:
        click.echo(f"unchanged: {version.ref} already pins these files", err=True)
    click.echo(version.ref)


@dataset.command("verify")
@click.argument("ref", metavar="NAME[:VERSION]")
@json_option
@common_options
@click.pass_context
def verify(ctx: click.Context, ref: str, as_json: bool) -> int:
    """Check every pinned file against its store: exit 1 if any changed or vanished."""
    registry = app(ctx).registry()
    report = datasets.verify(registry, registry.resolve(ref))
    if as_json:
        emit_json({
            "version": report.version.ref,
            "ok": report.ok,
            "checked": report.checked,
            "changed": [vars(c) for c in report.changed],
            "missing": report.missing,
        })  # fmt: skip
    else:
        for change in report.changed:
            click.echo(
                f"changed  {change.path}  (pinned {change.pinned_size} bytes etag "
                f"{change.pinned_etag}; now {change.size} bytes etag {change.etag})"
            )
        for path in report.missing:
            click.echo(f"missing  {path}")
        summary = (
            f"{report.version.ref}: {report.checked:,} files checked, "
            f"{len(report.changed)} changed, {len(report.missing)} missing"
        )
        click.echo(summary, err=not report.ok)
    return 0 if report.ok else EXIT_RUNTIME


@dataset.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@json_option
@common_options
@click.pass_context
def diff_command(ctx: click.Context, a: str, b: str, as_json: bool) -> int:
    """Compare two versions (NAME[:VERSION] each) from the registry alone: the files added,
    removed, changed and renamed from A to B. Exit 0 when they pin the same files, else 1."""
    # Imported here: only this command needs them.
    from amlfs.cli.reports import render_diff
    from amlfs.diff import diff

    registry = app(ctx).registry()
    result = diff(registry, registry.resolve(a), registry.resolve(b))
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo("\n".join(render_diff(result)))
    return 0 if result.same else EXIT_RUNTIME


# Subsets live in their own module; they are `dataset` subcommands all the same.
dataset.add_command(subsets.sample)
dataset.add_command(subsets.split)
dataset.add_command(subsets.filter_)
