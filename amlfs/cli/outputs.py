"""`amlfs output mount` and `amlfs output resume`: writable mounts uploaded on close."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import click

from amlfs import mounts
from amlfs.cli.context import app, common_options
from amlfs.cli.mount import checked_metrics_address, home_of, metrics_args, metrics_option
from amlfs.cli.output import human_bytes
from amlfs.credentials import daemon_environment
from amlfs.errors import AmlfsError
from amlfs.home import private_folder
from amlfs.registry import paths

DEFAULT_WORKERS = 8
DEFAULT_PATIENCE_S = 60.0


@click.group("output")
def output() -> None:
    """Writable mounts whose files are uploaded when closed."""


@output.command("mount")
@click.argument("location", metavar="DATASTORE:PATH")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option(
    "--register",
    "dataset",
    metavar="NAME",
    help="On a clean unmount, register the uploaded files as the next version.",
)
@click.option(
    "--staging-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where written files wait for their upload (default: HOME/staging).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Uploads at once.",
)
@click.option(
    "--patience",
    type=click.FloatRange(1, 86400),
    default=DEFAULT_PATIENCE_S,
    show_default=True,
    help="At unmount, seconds to keep retrying uploads while none succeeds.",
)
@click.option("--allow-other", is_flag=True, help="Let other users write to the mount.")
@metrics_option
@click.option("--foreground", is_flag=True, help="Serve in this process (systemd, debugging).")
@common_options
@click.pass_context
def output_mount(ctx: click.Context, location: str, mountpoint: Path, dataset: str | None,
                 staging_dir: Path | None, workers: int, patience: float, allow_other: bool,
                 metrics_address: str | None, foreground: bool) -> None:  # fmt: skip
    """Mount a writable folder at MOUNTPOINT whose files go to DATASTORE:PATH.

    Each file is journaled when closed and uploaded in the background; `amlfs unmount`
    waits for the uploads. Files left by a daemon that died are uploaded by the next
    mount of the same destination, or by `amlfs output resume`.
    """
    home = home_of(ctx)
    with mounts.failures_reported(mountpoint, foreground):
        datastore, target = paths.parse_location(location)
        if dataset is not None:
            paths.check_name("dataset", dataset)
        datastore_record = app(ctx).registry().get_datastore(datastore)
        path = mounts.check_mountpoint(mountpoint)
        options = mounts.OutputOptions(
            staging_root=private_folder(staging_dir or home / "staging", "staging folder"),
            workers=workers,
            patience_s=patience, register=dataset, allow_other=allow_other,
            metrics_address=checked_metrics_address(metrics_address),
        )  # fmt: skip
    if not foreground:
        args = [
            "output",
            "mount",
            location,
            str(path),
            "--staging-dir",
            str(options.staging_root),
            "--workers",
            str(workers),
            "--patience",
            str(patience),
        ]
        args += ["--register", dataset] if dataset else []
        args += ["--allow-other"] if allow_other else []
        args += metrics_args(metrics_address)
        args += ["--debug"] if "--debug" in sys.argv else []
        env = daemon_environment(app(ctx).registry().list_datastores(), datastore)
        pid = mounts.start_daemon(home, args, log_name=f"output-{path.name}", env=env)
        click.echo(f"mounted output {datastore}:{target or '/'} at {path} (pid {pid})")
        return
    mounts.daemon_logging()
    from amlfs.fuse.output_mount import serve_output
    from amlfs.storage import Store
    from amlfs.transfer.journal import Journal
    from amlfs.transfer.outputs import UploadsPending, pinned_files, register_session

    with mounts.failures_reported(path):
        store = Store(datastore_record)
        journal = Journal(home)
    # Alive (for `amlfs unmount`, which waits) until the session is registered and done.
    with mounts.daemon_record(home, "output", f"{datastore}:{target}", path,
                              options.staging_root) as record:  # fmt: skip
        with mounts.failures_reported(path):
            outcome = serve_output(home, journal, store, target, path, options, record)
        if outcome.unsettled:
            raise UploadsPending(outcome.session, outcome.unsettled)
        log = logging.getLogger("amlfs")
        if dataset is not None and pinned_files(outcome.rows):
            version = register_session(app(ctx).registry(), outcome.session, outcome.rows)
            log.info("registered %s", version.ref)
        elif dataset is not None:
            log.warning("nothing was written: no version of %s registered", dataset)
        journal.set_state(outcome.session.id, "done")
        shutil.rmtree(outcome.session.staging, ignore_errors=True)


@output.command("resume")
@click.argument("location", metavar="[DATASTORE:PATH]", required=False)
@common_options
@click.pass_context
def output_resume(ctx: click.Context, location: str | None) -> None:
    """Finish the uploads of output mounts that stopped (killed, machine restarted)."""
    from amlfs.storage import Store
    from amlfs.transfer.journal import Journal
    from amlfs.transfer.outputs import UploadsPending, being_settled, orphaned, resume
    from amlfs.transfer.sessions import SessionBusy, claim_session, settler

    home = home_of(ctx)
    registry = app(ctx).registry()
    destination = None
    if location is not None:
        datastore, target = paths.parse_location(location)
        destination = f"{datastore}:{target}"
    journal = Journal(home)
    stores: dict[str, Store] = {}

    def open_store(name: str) -> Store:
        if name not in stores:
            stores[name] = Store(registry.get_datastore(name))
        return stores[name]

    sessions = list(orphaned(journal, destination))
    skipped = [SessionBusy(s, settler(s)) for s in being_settled(journal, destination)]
    for busy in skipped:
        click.echo(f"skipped: {busy}")
    if not sessions and not skipped:
        click.echo("nothing to resume")
        return
    failures: list[UploadsPending] = []
    for session in sessions:
        sent = [0, 0]

        def heard(row, sent=sent) -> None:
            sent[0] += 1
            sent[1] += row.size

        try:
            with claim_session(journal, session) as current:
                if current is None:
                    continue  # another settler finished it since it was listed
                failing, version = resume(journal, registry, current, open_store, heard)
        except SessionBusy as busy:  # claimed by another since it was listed
            click.echo(f"skipped: {busy}")
            skipped.append(busy)
            continue
        click.echo(f"{session.destination}: {sent[0]} file(s) settled ({human_bytes(sent[1])})"
                   + (f"; registered {version.ref}" if version else ""))  # fmt: skip
        if failing:
            failures.append(UploadsPending(session, failing))
    if failures:
        raise failures[0]
    if skipped:  # not known to be settled: not a success
        raise AmlfsError(f"{len(skipped)} session(s) skipped while another process settles"
                         " them; run `amlfs output resume` again once it is done")  # fmt: skip


class UploadWait:
    """What `amlfs unmount` shows while an output daemon finishes its uploads: a line
    whenever the count of pending uploads or the failure changes."""

    def __init__(self) -> None:
        self._last = ""

    def __call__(self, record: mounts.MountRecord) -> None:
        stats = record.stats
        if stats.get("state") != "uploading":
            return
        failing = f", failing: {stats['last_error']}" if stats.get("failing") else ""
        line = (
            f"amlfs: waiting for {stats.get('pending_uploads', 0)} upload(s)"
            f" ({human_bytes(stats.get('pending_bytes', 0))}){failing}"
        )
        if line != self._last:
            self._last = line
            click.echo(line, err=True)


def check_uploads(home: Path, record: mounts.MountRecord) -> None:
    """After an output daemon ended: exit non-zero if any of its files is not uploaded."""
    from amlfs.transfer.outputs import ended_session

    session_id = record.stats.get("session")
    if session_id is None:
        raise AmlfsError("the output mount left no session to check")
    ended_session(home, session_id)
