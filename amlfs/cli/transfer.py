"""`amlfs download` and `amlfs upload`: whole datasets between a datastore and local disk."""

from __future__ import annotations

from pathlib import Path

import click

from amlfs.cli.context import app, common_options
from amlfs.cli.mount import home_of, parse_size
from amlfs.cli.output import human_bytes
from amlfs.cli.progress import TransferProgress
from amlfs.home import callers_files


@click.command("download")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Files fetched at once [default: 16].")  # fmt: skip
@click.option("--overwrite", is_flag=True,
              help="Replace files under DEST that differ from the version.")  # fmt: skip
@click.option("--block-size", default="4MiB", show_default=True,
              help="Block size of the mounts whose cached blocks may be reused.")  # fmt: skip
@common_options
@click.pass_context
def download_command(ctx: click.Context, ref: str, dest: Path, workers: int | None,
                     overwrite: bool, block_size: str) -> None:  # fmt: skip
    """Materialise version NAME[:VERSION] under DEST, every file verified.

    Re-running after an interruption skips the files already in place. Files of DEST
    that are not part of the version are left alone.
    """
    from amlfs.transfer.download import DEFAULT_WORKERS, DownloadFailed, download_version

    home = home_of(ctx)
    registry = app(ctx).registry()
    version = registry.resolve(ref)
    # DEST is the user's: its files get the user's umask, not amlfs's private one.
    with callers_files(), TransferProgress("download", version.file_count,
                                           version.total_bytes) as progress:  # fmt: skip
        report = download_version(
            home, registry, version, dest, workers=workers or DEFAULT_WORKERS,
            overwrite=overwrite, block_size=parse_size(block_size, "--block-size"),
            progress=lambda f: progress.advance(f.size),
        )  # fmt: skip
    cached = f", {report.from_cache} from the block cache" if report.from_cache else ""
    if report.bytes_resumed:
        cached += f", {human_bytes(report.bytes_resumed)} resumed from partial files"
    click.echo(
        f"downloaded {version.ref} to {report.dest}: {report.fetched} file(s) fetched"
        f" ({_amount(report.bytes_fetched, report.seconds)}{cached}),"
        f" {report.present} already in place"
    )
    if report.failed:
        _list_failures(report.failed)
        raise DownloadFailed(report)


def _amount(nbytes: int, seconds: float) -> str:
    rate = nbytes / seconds if seconds else 0
    return f"{human_bytes(nbytes)}, {human_bytes(int(rate))}/s"


def _list_failures(failed: dict[str, str]) -> None:
    """Every failed file on its own line; the one-line error that follows names a few."""
    for path, reason in sorted(failed.items()):
        click.echo(f"amlfs: failed: {path}: {reason}", err=True)


@click.command("upload")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("location", metavar="DATASTORE:PATH")
@click.option("--register", "dataset", metavar="NAME",
              help="Register the uploaded files as the next version of NAME.")  # fmt: skip
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Files uploaded at once [default: 8].")  # fmt: skip
@click.option("--follow-links", is_flag=True,
              help="Upload what symbolic links inside SRC point to, if that is inside SRC"
                   " too (without it, any link is refused).")  # fmt: skip
@common_options
@click.pass_context
def upload_command(ctx: click.Context, src: Path, location: str, dataset: str | None,
                   workers: int | None, follow_links: bool) -> None:  # fmt: skip
    """Upload the local folder SRC to DATASTORE:PATH.

    Files already identical at the destination (size and MD5) are skipped. With
    --register, the files are registered only once every one is uploaded. Symbolic
    links are refused, naming them, unless --follow-links is given; a link pointing
    outside SRC is refused either way.
    """
    from amlfs.registry import paths
    from amlfs.storage import Store
    from amlfs.transfer.upload import DEFAULT_WORKERS, UploadFailed, local_files, upload

    datastore, target = paths.parse_location(location)
    if dataset is not None:
        paths.check_name("dataset", dataset)
    registry = app(ctx).registry()
    store = Store(registry.get_datastore(datastore))
    files = local_files(src, follow_links=follow_links)
    with TransferProgress("upload", len(files), sum(f.size for f in files)) as progress:
        report = upload(
            files, store, target, workers=workers or DEFAULT_WORKERS,
            progress=lambda f: progress.advance(f.size),
        )  # fmt: skip
    click.echo(
        f"uploaded {src} to {datastore}:{target or '/'}: {report.sent} file(s) sent"
        f" ({_amount(report.bytes_sent, report.seconds)}),"
        f" {report.identical} already identical"
    )
    if report.failed:
        _list_failures(report.failed)
        raise UploadFailed(report)
    if dataset is not None:
        from amlfs.transfer.upload import uploaded_version

        version = registry.register(uploaded_version(store, dataset, target, report.pinned))
        click.echo(version.ref)
