"""`amlfs mount`, `amlfs unmount`, `amlfs status`: read-only mounts of pinned versions."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from amlfs import mounts
from amlfs.cli.context import app, common_options, json_option
from amlfs.cli.output import emit_json, human_bytes, table
from amlfs.credentials import daemon_environment
from amlfs.home import cache_dir as default_cache_dir
from amlfs.home import default_home, ensure_home, private_folder
from amlfs.registry.models import Version
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry
from amlfs.units import parse_size
from amlfs.warm import hand_over

log = logging.getLogger(__name__)

DEFAULTS = mounts.MOUNT_DEFAULTS


metrics_option = click.option(
    "--metrics-address",
    metavar="IP:PORT",
    help="Serve Prometheus metrics at http://IP:PORT/metrics (e.g. 127.0.0.1:9101; off by"
    " default; see docs/metrics.md).",
)


def checked_metrics_address(address: str | None) -> str | None:
    """ADDRESS once it is known to be one to listen on (amlfs.metrics.exporter)."""
    if address is None:
        return None
    from amlfs.metrics.exporter import check_address

    return check_address(address)


def metrics_args(address: str | None) -> list[str]:
    """The option again, for a daemon started as a command."""
    return ["--metrics-address", address] if address else []


def home_of(ctx: click.Context) -> Path:
    return ensure_home(app(ctx).home or default_home())


@click.command("mount")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Block cache folder, shared by mounts (default: HOME/cache/blocks).",
)
@click.option(
    "--cache-size",
    default=DEFAULTS["cache_size"],
    show_default=True,
    help="Bound of the block cache on disk; least recently used blocks go first.",
)
@click.option(
    "--block-size",
    default=DEFAULTS["block_size"],
    show_default=True,
    help="Size of the blocks fetched and cached.",
)
@click.option(
    "--memory-cache",
    default=DEFAULTS["memory_cache"],
    show_default=True,
    help="Recently used blocks kept in the daemon's memory.",
)
@click.option(
    "--fetch-limit",
    type=click.IntRange(1, 256),
    default=DEFAULTS["fetch_limit"],
    show_default=True,
    help="Fetches from storage at once.",
)
@click.option(
    "--io-timeout",
    type=click.FloatRange(0.5, 3600),
    default=DEFAULTS["io_timeout"],
    show_default=True,
    help="Seconds a read waits for storage before failing (EIO).",
)
@click.option("--allow-other", is_flag=True, help="Let other users read the mount.")
@metrics_option
@click.option("--foreground", is_flag=True, help="Serve in this process (systemd, debugging).")
@common_options
@click.pass_context
def mount(ctx: click.Context, ref: str, mountpoint: Path, cache_dir: Path | None,
          foreground: bool, **options: object) -> None:  # fmt: skip
    """Mount version NAME[:VERSION] read-only at MOUNTPOINT (an empty folder).

    Returns once the mount serves; the daemon keeps running until `amlfs unmount`.
    """
    home = home_of(ctx)
    with mounts.failures_reported(mountpoint, foreground):
        registry = app(ctx).registry()
        version = require_data(registry.resolve(ref))
        path = mounts.check_mountpoint(mountpoint)
        settings = mounts.MountOptions(
            # Blocks found there are served as the version's bytes: only ours will do.
            cache_dir=private_folder(cache_dir or default_cache_dir(home), "cache folder"),
            cache_size=parse_size(options["cache_size"], "--cache-size"),
            block_size=mounts.check_block_size(
                parse_size(options["block_size"], "--block-size"), "--block-size"
            ),
            hot_bytes=parse_size(options["memory_cache"], "--memory-cache"),
            fetch_limit=options["fetch_limit"],
            io_timeout=options["io_timeout"],
            allow_other=options["allow_other"],
            metrics_address=checked_metrics_address(options["metrics_address"]),
        )
    if not foreground:
        env = daemon_environment(registry.list_datastores(), version.datastore)
        log_name = f"mount-{path.name}-{version.ref}"
        if app(ctx).own_process and mounts.can_fork():
            # The daemon is this process, forked (ahead, if it was: amlfs.warm) and given
            # the mount once it is known to be sound: no second interpreter, nothing
            # imported twice. It opens its own registry.
            app(ctx).close_registry()
            warm, app(ctx).warm = app(ctx).warm, None
            handed = {"home": home, "log_name": log_name, "env": env, "version": version,
                      "path": path, "settings": settings}  # fmt: skip
            if warm is not None and hand_over(warm, handed):
                pid = mounts.await_daemon(warm.pid, warm.report)
            else:
                pid = mounts.fork_daemon(home, log_name, env=env)
        else:
            args = ["mount", version.ref, str(path), "--cache-dir", str(settings.cache_dir)]
            for name in ("cache_size", "block_size", "memory_cache", "fetch_limit", "io_timeout"):
                args += [f"--{name.replace('_', '-')}", str(options[name])]
            args += ["--allow-other"] if settings.allow_other else []
            args += metrics_args(settings.metrics_address)
            args += ["--debug"] if "--debug" in sys.argv else []
            pid = mounts.start_daemon(home, args, log_name=log_name, env=env)
        if pid is not None:
            click.echo(f"mounted {version.ref} at {path} (pid {pid})")
            if app(ctx).own_process:
                exit_at_once()
            return
    serve_here(home, app(ctx).registry(), version, path, settings)


def exit_at_once() -> NoReturn:
    """The command is done and its daemon serves: leave without the interpreter's
    teardown (tens of ms of freeing modules, all between the mount serving and the
    caller's next line). Nothing is left to close: the registry was closed at the fork."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve_here(home: Path, registry: Registry, version: Version, path: Path,
               settings: mounts.MountOptions) -> None:  # fmt: skip
    # Opening the store (importing its client, building it) runs while the FUSE side is
    # imported and mounted.
    opening = mounts.open_store_soon(registry.get_datastore(version.datastore))
    from amlfs.fuse.mount import serve_daemon

    serve_daemon(home, registry, version, path, settings, opening)


@click.command("unmount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@common_options
@click.pass_context
def unmount(ctx: click.Context, mountpoint: Path) -> None:
    """Unmount MOUNTPOINT (also a stale mount whose daemon died) and stop its daemon.

    An output mount first finishes its uploads; if any fails, they stay staged and
    journaled, and the command exits 1.
    """
    from amlfs.cli.outputs import UploadWait, check_uploads
    from amlfs.transfer.outputs import check_dead_sessions

    home = home_of(ctx)
    path = mountpoint.expanduser().absolute()
    record = mounts.unmount(home, path, waiting=UploadWait())  # the live daemon's, if any
    if record is not None and record.kind == "output":
        check_uploads(home, record)
        click.echo(f"unmounted output {record.what} from {record.mountpoint}; all uploaded")
        return
    if record is None:
        check_dead_sessions(home, path)
    click.echo(f"unmounted {f'{record.what} ' if record else ''}from {path}")


@click.command("status")
@json_option
@common_options
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The mounts of this machine (under this state folder) and what they have done.
    The folders of runs killed outright are cleaned up on the way."""
    from amlfs.jobs.lost import clean_lost_runs

    home = home_of(ctx)
    clean_lost_runs(home, lambda line: click.echo(f"amlfs: {line}", err=True),
                    lambda: app(ctx).registry())  # fmt: skip
    table_now = mounts.mounted_paths()
    listed = []
    for record, alive in mounts.current_records(home):
        mounted = record.mountpoint in table_now
        state = "serving" if alive and mounted else (
            "stale: daemon gone, run amlfs unmount" if mounted else "stopping")  # fmt: skip
        listed.append({**record.public(alive), "state": state})
    if as_json:
        emit_json(listed)
        return
    if not listed:
        click.echo("no mounts")
        return
    rows, outages = [], []
    for item in listed:
        stats = item["stats"]
        outage = storage_outage(stats.get("storage"))
        if outage:
            outages.append(f"{item['mountpoint']}: {outage}")
        unreachable = ", storage unreachable" if outage else ""
        if item["kind"] == "output":
            failing = stats.get("failing", 0)
            uploads = f"{stats.get('pending_uploads', 0)} pending" + (
                f", {failing} failing: {stats.get('last_error')}" if failing else "")  # fmt: skip
            rows.append([f"output {item['what']}", item["mountpoint"], item["pid"],
                         (stats.get("state", item["state"]) if item["state"] == "serving"
                          else item["state"]) + unreachable, "-", "-", "-",
                         human_bytes(stats.get("bytes_uploaded", 0)) + " up", uploads])  # fmt: skip
            continue
        rows.append([
            item["what"], item["mountpoint"], item["pid"], item["state"] + unreachable,
            stats.get("memory_hits", 0) + stats.get("disk_hits", 0), stats.get("misses", 0),
            human_bytes(stats.get("bytes_fetched", 0)), human_bytes(stats.get("bytes_served", 0)),
            f"{stats.get('fetches_in_flight', 0)} fetches",
        ])  # fmt: skip
    table(["WHAT", "MOUNTPOINT", "PID", "STATE", "HITS", "MISSES", "FETCHED", "SERVED",
           "IN FLIGHT / UPLOADS"], rows)  # fmt: skip
    for line in outages:
        click.echo(line)


def storage_outage(storage: dict | None) -> str | None:
    """A mount's storage state (amlfs.health) in words, if it cannot reach its storage."""
    if not storage or storage.get("state") != "unreachable":
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(storage.get("since") or 0))
    probes = storage.get("probes")
    tried = f", {probes} probe{'s' if probes != 1 else ''} since" if probes else ""
    return f"storage unreachable since {since}{tried}: {storage.get('error')}"
