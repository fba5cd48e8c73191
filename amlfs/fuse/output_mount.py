"""Serving one output mount in the foreground: files written there are staged, journaled
when closed, and uploaded; at unmount, the uploads are finished before the daemon ends."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from amlfs import mounts
from amlfs.fuse.mount import UnmountOnSignal
from amlfs.fuse.output import OutputOperations
from amlfs.mounts import OutputOptions
from amlfs.storage import Store
from amlfs.transfer.journal import Journal, Session, Upload
from amlfs.transfer.outputs import orphaned
from amlfs.transfer.outputs import resume as resume_session
from amlfs.transfer.staged import OutputFiles

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0


@dataclass
class Outcome:
    session: Session
    unsettled: list[Upload]
    rows: list[Upload]


def serve_output(home: Path, journal: Journal, store: Store, target: str, mountpoint: Path,
                 options: OutputOptions) -> Outcome:  # fmt: skip
    """Serve until unmounted or signalled, then finish the uploads (see OutputOptions)."""
    staging = options.staging_root / f"{os.getpid()}-{time.time_ns()}"  # this mount's own
    staging.mkdir(parents=True, mode=0o700)
    session_id = journal.open_session(
        store.datastore.name, target, str(mountpoint), os.getpid(), str(staging),
        options.register,
    )  # fmt: skip
    unsettled = trio.run(_serve, home, journal, session_id, staging, store, target,
                         mountpoint, options)  # fmt: skip
    return Outcome(journal.session(session_id), unsettled, journal.uploads(session_id))


async def _serve(
    home: Path,
    journal: Journal,
    session_id: int,
    staging: Path,
    store: Store,
    target: str,
    mountpoint: Path,
    options: OutputOptions,
) -> list[Upload]:
    destination = f"{store.datastore.name}:{target}"
    record = mounts.MountRecord(
        pid=os.getpid(), kind="output", what=destination, mountpoint=str(mountpoint),
        started_at=time.time(), cache_dir=str(staging), stats={"session": session_id},
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session_id, staging, store, target, nursery,
                            workers=options.workers)  # fmt: skip
        fuse_options = set(pyfuse3.default_options) | {
            "noatime", f"fsname=amlfs:{destination}", "subtype=amlfs", "default_permissions",
        }  # fmt: skip
        if options.allow_other:
            fuse_options.add("allow_other")
        pyfuse3.init(OutputOperations(files), str(mountpoint), fuse_options)
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
            }  # fmt: skip
            mounts.write_record(home, record)

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
    log.info("unmounted %s; %d file(s) not uploaded", mountpoint, len(unsettled))
    return unsettled


async def _finish_orphans(journal: Journal, store: Store, destination: str) -> None:
    """Uploads left by an earlier mount of the same destination whose daemon died."""
    for session in orphaned(journal, destination):
        log.info("finishing the uploads of an earlier mount of %s (session %d)",
                 destination, session.id)  # fmt: skip
        try:
            failing, _ = await trio.to_thread.run_sync(
                lambda session=session: resume_session(journal, None, session, lambda _: store)
            )
        except Exception as error:  # never the mount's failure: `output resume` retries
            log.warning("earlier uploads of %s not finished: %s", destination, error)
            continue
        if failing:
            log.warning("%d earlier upload(s) of %s still failing", len(failing), destination)
