"""Serving one output mount in the foreground: files written there are staged, journaled
when closed, and uploaded; at unmount, the uploads are finished before the daemon ends."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from amlfs import mounts
from amlfs.fuse.mount import UnmountOnSignal
from amlfs.fuse.output import OutputOperations
from amlfs.mounts import OutputOptions
from amlfs.storage import Store
from amlfs.transfer import sessions
from amlfs.transfer.journal import Journal, Session, Upload
from amlfs.transfer.outputs import being_settled, orphaned
from amlfs.transfer.outputs import resume as resume_session
from amlfs.transfer.staged import OutputFiles

if TYPE_CHECKING:
    from amlfs.metrics.exporter import Exporter

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0


@dataclass
class Outcome:
    session: Session
    unsettled: list[Upload]
    rows: list[Upload]


def serve_output(home: Path, journal: Journal, store: Store, target: str, mountpoint: Path,
                 options: OutputOptions, record: mounts.MountRecord) -> Outcome:  # fmt: skip
    """Serve until unmounted or signalled, then finish the uploads (see OutputOptions).

    The destination is this mount's alone while it serves (a second output mount of it
    is refused), and the session is this process's until it ends (see transfer/sessions)."""
    destination = f"{store.datastore.name}:{target}"
    exclusive = mounts.hold_destination(home, destination, mountpoint)
    try:
        staging = options.staging_root / f"{os.getpid()}-{time.time_ns()}"  # this mount's own
        staging.mkdir(parents=True, mode=0o700)
        sessions.hold_for_daemon(staging)  # before the journal names it: never seen unheld
        session_id = journal.open_session(
            store.datastore.name, target, str(mountpoint), os.getpid(), str(staging),
            options.register,
        )  # fmt: skip
        record.cache_dir, record.stats = str(staging), {"session": session_id}
        unsettled = trio.run(_serve, record, journal, session_id, staging, store, target,
                             mountpoint, options)  # fmt: skip
    finally:
        exclusive.release()
    return Outcome(journal.session(session_id), unsettled, journal.uploads(session_id))


async def _serve(
    record: mounts.MountRecord,
    journal: Journal,
    session_id: int,
    staging: Path,
    store: Store,
    target: str,
    mountpoint: Path,
    options: OutputOptions,
) -> list[Upload]:
    destination = f"{store.datastore.name}:{target}"
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session_id, staging, store, target, nursery,
                            workers=options.workers)  # fmt: skip
        fuse_options = set(pyfuse3.default_options) | {
            "noatime", f"fsname=amlfs:{destination}", "subtype=amlfs", "default_permissions",
        }  # fmt: skip
        if options.allow_other:
            fuse_options.add("allow_other")
        operations = OutputOperations(files)
        exporter = None  # off by default; on, bound before anything is mounted
        if options.metrics_address is not None:
            exporter = _metrics(options.metrics_address, record, operations)
        pyfuse3.init(operations, str(mountpoint), fuse_options)
        log.info("serving output %s at %s (staging %s)", destination, mountpoint, staging)
        signals = UnmountOnSignal()
        detached_by_kernel = False
        phase = "serving"  # then "uploading" (unmounted), then "finished" or "failed"

        def publish() -> None:
            pending = files.pending()
            failing = [n for n in pending if n.error]
            record.stats = {
                "session": session_id, "state": phase, "pending_uploads": len(pending),
                "pending_bytes": sum(n.size for n in pending), "failing": len(failing),
                "last_error": failing[0].error if failing else None,
                "uploaded": files.stats.uploaded, "bytes_uploaded": files.stats.bytes_uploaded,
                "requests": dict(operations.requests), "storage": files.storage.public(),
            }  # fmt: skip
            mounts.publish_record(record)

        async def publish_status() -> None:
            while True:
                publish()
                await trio.sleep(STATUS_EVERY_S)

        try:
            publish()
            mounts.report_ready("ready")

            nursery.start_soon(signals.watch)
            nursery.start_soon(publish_status)
            nursery.start_soon(_finish_orphans, journal, store, destination)
            await pyfuse3.main()
            detached_by_kernel = not signals.received
        finally:
            pyfuse3.close(unmount=not detached_by_kernel)
        # No writer is left: finish the uploads, then stop.
        await trio.to_thread.run_sync(journal.set_state, session_id, "closing")
        phase = "uploading"
        publish()
        unsettled = await files.settle_all(options.patience_s)
        phase = "finished" if not unsettled else "failed"
        publish()
        files.close()
        nursery.cancel_scope.cancel()
    if exporter is not None:  # up until the uploads are done (on a failure, the daemon ends)
        exporter.close()
    log.info("unmounted %s; %d file(s) not uploaded", mountpoint, len(unsettled))
    return unsettled


def _metrics(address: str, record: mounts.MountRecord, operations: OutputOperations) -> Exporter:
    """The mount's metrics endpoint: its status, as published (every second) for `amlfs
    status`, and its FUSE requests (the metrics library is imported only when asked for)."""
    from amlfs.metrics.collect import MountCollector
    from amlfs.metrics.exporter import Exporter

    return Exporter(address, MountCollector("output", record.what, record.mountpoint,
                                            lambda: record.stats, operations))  # fmt: skip


async def _finish_orphans(journal: Journal, store: Store, destination: str) -> None:
    """Uploads left by an earlier mount of the same destination whose daemon died."""
    found = await trio.to_thread.run_sync(lambda: list(orphaned(journal, destination)))
    for session in await trio.to_thread.run_sync(being_settled, journal, destination):
        log.info("skipped: %s", sessions.SessionBusy(session, sessions.settler(session)))
    for session in found:
        await trio.to_thread.run_sync(_finish_orphan, journal, store, session)


def _finish_orphan(journal: Journal, store: Store, session: Session) -> None:
    try:
        with sessions.claim_session(journal, session) as current:
            if current is None:
                return  # another settler finished it meanwhile
            log.info("finishing the uploads of an earlier mount of %s (session %d)",
                     current.destination, current.id)  # fmt: skip
            failing, _ = resume_session(journal, None, current, lambda _: store)
    except sessions.SessionBusy as busy:
        log.info("skipped: %s", busy)
        return
    except Exception as error:  # never the mount's failure: `output resume` retries
        log.warning("earlier uploads of %s not finished: %s", session.destination, error)
        return
    if failing:
        log.warning("%d earlier upload(s) of %s still failing", len(failing),
                    session.destination)  # fmt: skip
