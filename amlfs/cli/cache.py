"""`amlfs cache stats|clear`: the block cache shared by the mounts of this machine."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs.cache import BlockCache
from amlfs.cli.context import common_options, json_option
from amlfs.cli.mount import home_of
from amlfs.cli.output import emit_json, human_bytes
from amlfs.errors import AmlfsError
from amlfs.home import cache_dir, private_folder

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Block cache folder (default: HOME/cache/blocks).",
)  # fmt: skip


@click.group("cache")
def cache() -> None:
    """Inspect or empty the block cache."""


@cache.command("stats")
@cache_dir_option
@json_option
@common_options
@click.pass_context
def stats(ctx: click.Context, cache_dir: Path | None, as_json: bool) -> None:
    """Size, limit, blocks and hit ratio of the block cache."""
    store = open_cache(cache_dir or default_dir(ctx))
    try:
        figures = store.stats()
    finally:
        store.close()
    if as_json:
        emit_json({**figures.__dict__, "hit_ratio": figures.hit_ratio})
        return
    ratio = "—" if figures.hit_ratio is None else f"{figures.hit_ratio:.1%}"
    click.echo(f"folder:    {figures.directory}")
    click.echo(
        f"size:      {human_bytes(figures.size_bytes)} of {human_bytes(figures.limit_bytes)}"
    )
    click.echo(f"blocks:    {figures.blocks}")
    click.echo(f"hit ratio: {ratio} ({figures.hits} hits, {figures.misses} misses)")


@cache.command("clear")
@cache_dir_option
@common_options
@click.pass_context
def clear(ctx: click.Context, cache_dir: Path | None) -> None:
    """Remove every cached block (safe while mounts run: they fetch again)."""
    store = open_cache(cache_dir or default_dir(ctx))
    try:
        removed = store.clear()
    finally:
        store.close()
    click.echo(f"removed {removed} blocks")


def open_cache(folder: Path) -> BlockCache:
    folder = private_folder(folder, "cache folder")
    try:
        return BlockCache(folder, required=True)
    except Exception as error:
        raise AmlfsError(f"cannot open the block cache {folder}: {error}") from None


def default_dir(ctx: click.Context) -> Path:
    return cache_dir(home_of(ctx))
