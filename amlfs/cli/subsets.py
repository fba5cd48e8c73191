"""`amlfs dataset sample|split|filter`: subsets of a version registered as new versions."""

from __future__ import annotations

from datetime import datetime

import click

from amlfs import subsets
from amlfs.cli.context import app, common_options
from amlfs.cli.output import human_bytes
from amlfs.errors import UserError
from amlfs.registry.models import Version
from amlfs.units import parse_size, parse_time

_seed = click.option(
    "--seed", type=int, default=subsets.DEFAULT_SEED, show_default=True,
    help="Key of the hash that decides; the same seed keeps the same files.",
)  # fmt: skip
_fraction = click.option(
    "--fraction", type=float, required=True, help="Share of the files to keep (0 < F < 1)."
)


@click.command("sample")
@click.argument("ref", metavar="NAME[:VERSION]")
@_fraction
@_seed
@click.option("--register", "name", required=True, metavar="NEW", help="Dataset to register.")
@common_options
@click.pass_context
def sample(ctx: click.Context, ref: str, fraction: float, seed: int, name: str) -> None:
    """Keep each file with probability F (a hash of the seed and its path decides) and
    register the kept files, as pinned, as the next version of NEW.

    Prints NEW:VERSION as the last line.
    """
    registry = app(ctx).registry()
    selection = subsets.Sample(fraction, seed)
    parent = registry.resolve(ref)
    _report(parent, subsets.derive(registry, parent, selection, name))


@click.command("split")
@click.argument("ref", metavar="NAME[:VERSION]")
@_fraction
@_seed
@click.option("--register", "names", required=True, multiple=True, metavar="NAME",
              help="Give twice: FIRST (about F of the files), then SECOND (the rest).")  # fmt: skip
@common_options
@click.pass_context
def split(ctx: click.Context, ref: str, fraction: float, seed: int, names: tuple[str, ...]) -> None:
    """Split the files in two by the same hash as `sample`: about F of them in FIRST,
    the rest in SECOND, registered together (both or neither).

    Prints FIRST:VERSION then SECOND:VERSION as the last two lines.
    """
    if len(names) != 2:
        raise UserError(f"give --register twice (FIRST, then SECOND), not {len(names)} time(s)")
    registry = app(ctx).registry()
    parent = registry.resolve(ref)
    first, second = subsets.split(registry, parent, fraction, seed, first=names[0],
                                  second=names[1])  # fmt: skip
    _report(parent, first, second)


@click.command("filter")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Keep files matching a GLOB (repeatable; default: all).")  # fmt: skip
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Drop files matching a GLOB (repeatable).")  # fmt: skip
@click.option("--min-size", metavar="SIZE", help="Keep files of at least SIZE (10MB, 1MiB).")
@click.option("--max-size", metavar="SIZE", help="Keep files of at most SIZE.")
@click.option("--modified-after", metavar="TIME", help="Keep files modified after TIME (ISO 8601).")
@click.option("--modified-before", metavar="TIME", help="Keep files modified before TIME.")
@click.option("--skip", type=int, default=0, help="Drop the first N (in path order).")
@click.option("--take", type=int, help="Keep at most N (in path order, after --skip).")
@click.option("--register", "name", required=True, metavar="NEW", help="Dataset to register.")
@common_options
@click.pass_context
def filter_(
    ctx: click.Context, ref: str, include: tuple[str, ...], exclude: tuple[str, ...],
    min_size: str | None, max_size: str | None, modified_after: str | None,
    modified_before: str | None, skip: int, take: int | None, name: str,
) -> None:  # fmt: skip
    """Keep the files that pass every test given and register them, as pinned, as the
    next version of NEW. Globs are relative to the version's root; `**` crosses folders.

    Prints NEW:VERSION as the last line.
    """
    rule = subsets.FileFilter(
        include=include, exclude=exclude,
        min_size=None if min_size is None else parse_size(min_size, "--min-size"),
        max_size=None if max_size is None else parse_size(max_size, "--max-size"),
        modified_after=_time(modified_after, "--modified-after"),
        modified_before=_time(modified_before, "--modified-before"),
        skip=skip, take=take,
    )  # fmt: skip
    registry = app(ctx).registry()
    parent = registry.resolve(ref)
    _report(parent, subsets.derive(registry, parent, rule, name))


def _time(text: str | None, option: str) -> datetime | None:
    return None if text is None else parse_time(text, option)


def _report(parent: Version, *made: Version) -> None:
    for version in made:
        click.echo(
            f"{version.ref}: {version.file_count:,} of {parent.file_count:,} files "
            f"({human_bytes(version.total_bytes)}) of {parent.ref}",
            err=True,
        )
    for version in made:
        click.echo(version.ref)
