"""Serving one read-only mount in the foreground: open what it needs, mount, report
readiness, serve until unmounted or signalled, then clean up.

The datastore is opened here, in the daemon process itself (after the fork, when the
command forked it: neither fsspec filesystems nor obstore's runtime survive a fork), and
pyfuse3 runs on trio.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from amlfs import mounts
from amlfs.allocator import map_large_buffers
from amlfs.cache import BlockCache, HotBlocks
from amlfs.errors import AmlfsError
from amlfs.fuse.hint_server import HintServer
from amlfs.fuse.operations import ReadOnlyOperations, require_read_with_inode
from amlfs.health import StorageWatch
from amlfs.home import private_files, registry_path
from amlfs.metrics.timings import copied
from amlfs.mounts import MountOptions
from amlfs.reader import BlockReader
from amlfs.registry.models import Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.tree import VersionTree

if TYPE_CHECKING:
    from amlfs.metrics.exporter import Exporter

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0


def serve_handed_over(handed: dict, report: int) -> int:
    """In a daemon started ahead (amlfs.warm): serve the mount the command HANDED over,
    as a daemon forked by the command would (amlfs.cli.mount), reporting on REPORT. The
    exit status. Nothing here imports the command line's modules."""
    home, version = handed["home"], handed["version"]
    mounts.become_daemon(mounts.open_log(home, handed["log_name"]), handed["env"], report)
    logging.basicConfig(level=logging.WARNING)
    mounts.daemon_logging()  # serve_daemon sets it again: this line is logged before
    log.info("started ahead of the command's checks")
    with private_files():
        registry = Registry(registry_path(home))
        try:
            opening = mounts.open_store_soon(registry.get_datastore(version.datastore))
            serve_daemon(home, registry, version, handed["path"], handed["settings"], opening)
        except AmlfsError as error:
            log.error("%s", error, exc_info="--debug" in sys.argv)
            return error.exit_code
        finally:
            registry.close()
    return 0


def serve_daemon(home: Path, registry: Registry, version: Version, mountpoint: Path,
                 options: MountOptions, opening: Future[Store]) -> None:  # fmt: skip
    """As a mount daemon: its own log lines, and a failure to serve reported to the
    command that started it (see serve)."""
    mounts.daemon_logging()
    with mounts.failures_reported(mountpoint):
        serve(home, registry, version, mountpoint, options, opening)


def serve(home: Path, registry: Registry, version: Version, mountpoint: Path,
          options: MountOptions, opening: Future[Store]) -> None:  # fmt: skip
    """Mount VERSION at MOUNTPOINT and serve it until unmounted, SIGTERM or SIGINT.

    OPENING is the datastore being opened in another thread; the mount is only reported
    ready (and a failure to open it is a failure to mount) once it is open.
    """
    require_read_with_inode()
    map_large_buffers()  # blocks freed after serving leave the process
    cache = BlockCache(options.cache_dir, options.cache_size)
    tree = VersionTree(registry, version)
    try:
        with mounts.daemon_record(home, "read-only", version.ref, mountpoint,
                                  options.cache_dir) as record:  # fmt: skip
            trio.run(_serve, record, tree, opening, cache, mountpoint, options)
    finally:
        cache.close()


class UnmountOnSignal:
    """SIGTERM or SIGINT ends the FUSE session; the daemon then detaches the mount itself
    (after `fusermount3 -u` the kernel already has)."""

    def __init__(self) -> None:
        self.received = False

    async def watch(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: unmounting", signal.Signals(signum).name)
                self.received = True
                pyfuse3.terminate()
                return


def tune_kernel(mountpoint: Path, block_size: int) -> None:
    """What the kernel should know before the first user request: how far to read ahead,
    and that folders are never opened here."""
    widen_readahead(mountpoint, block_size)
    # The listing of the folder whose OPENDIR is answered ENOSYS is not cached by the
    # kernel (the later ones are); listed again, its subfolders' attributes are renewed
    # and their cached listings dropped. Spend that first OPENDIR here, on no listing.
    try:
        os.close(os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as error:
        log.debug("could not open the mount's root (%s)", error)


def widen_readahead(mountpoint: Path, block_size: int) -> None:
    """Let the kernel read ahead two blocks instead of its default 128 KiB, so that
    sequential readers send large requests and several at once. Only root may; without
    it the default stays and read-ahead is ours alone."""
    device = os.stat(mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        knob.write_text(str(max(128, 2 * block_size // 1024)))
    except OSError as error:
        log.debug("kernel read-ahead left at its default (%s)", error)


async def _serve(record: mounts.MountRecord, tree: VersionTree, opening: Future[Store],
                 cache: BlockCache, mountpoint: Path, options: MountOptions) -> None:  # fmt: skip
    # The datastore has been opening in a thread while pyfuse3 and trio were imported.
    # Taken here, before the nursery, a failure to open it is a plain failure to mount.
    store = await trio.to_thread.run_sync(opening.result)
    async with trio.open_nursery() as nursery:
        storage = StorageWatch(store.probe)
        reader = BlockReader(
            store, cache, HotBlocks(options.hot_bytes), nursery, block_size=options.block_size,
            fetch_limit=options.fetch_limit, io_timeout=options.io_timeout, storage=storage,
        )  # fmt: skip
        operations = ReadOnlyOperations(
            tree, reader,
            source_url=lambda path: store.source_name(tree.relative_path(path)),
        )  # fmt: skip
        hints = HintServer(tree, reader, operations.blob, near=record.path)
        operations.hint_socket, operations.on_start = hints.address, hints.on_start

        def status() -> dict:  # what `amlfs status` and the metrics read
            return reader.status() | hints.stats | {
                "requests": copied(operations.requests), "storage": storage.health.public(),
            }  # fmt: skip

        exporter = None  # off by default; on, bound before anything is mounted
        if options.metrics_address is not None:
            exporter = _metrics(options.metrics_address, record, status, operations, reader,
                                cache)  # fmt: skip
        fuse_options = set(pyfuse3.default_options) | {
            "ro", "noatime", f"fsname=amlfs:{tree.version.ref}", "subtype=amlfs",
        }  # fmt: skip
        if options.allow_other:
            fuse_options.add("allow_other")
        pyfuse3.init(operations, str(mountpoint), fuse_options)
        log.info("serving %s at %s", tree.version.ref, mountpoint)
        signals = UnmountOnSignal()
        detached_by_kernel = False  # `fusermount3 -u` ended the session: nothing to undo
        try:
            mounts.write_record(record)

            async def ready() -> None:
                # Asks this very filesystem (stat, open): only once it serves. Ready after,
                # so that no user request comes before the kernel is told.
                await trio.to_thread.run_sync(tune_kernel, mountpoint, options.block_size)
                mounts.report_ready("ready")

            async def publish_status() -> None:
                while True:
                    record.stats = status()
                    mounts.publish_record(record)
                    await trio.to_thread.run_sync(cache.flush_counts)
                    await trio.sleep(STATUS_EVERY_S)

            # Background tasks start only now, after pyfuse3.init: a probe task started
            # before it was seen to leave the kernel dropping cached listings and pages
            # (cause not found); keep new tasks here.
            await nursery.start(hints.run)  # listening before the mount reports ready
            nursery.start_soon(ready)
            nursery.start_soon(signals.watch)
            nursery.start_soon(publish_status)
            nursery.start_soon(storage.run)
            await pyfuse3.main()
            detached_by_kernel = not signals.received
        finally:
            # Signalled, or failing after the mount was made: detach it ourselves, never
            # leave a dead mount behind.
            pyfuse3.close(unmount=not detached_by_kernel)
            nursery.cancel_scope.cancel()
            if exporter is not None:
                exporter.close()
    log.info("unmounted %s", mountpoint)


def _metrics(address: str, record: mounts.MountRecord, status: Callable[[], dict],
             operations: ReadOnlyOperations, reader: BlockReader,
             cache: BlockCache) -> Exporter:  # fmt: skip
    """The mount's metrics endpoint: its status and what the live reader has (the metrics
    library is imported only when asked for)."""
    from amlfs.metrics.collect import MountCollector
    from amlfs.metrics.exporter import Exporter

    return Exporter(address, MountCollector(
        "read-only", record.what, record.mountpoint, status, operations,
        fetches=reader.fetch_timings, cache=cache, hot=reader.hot,
    ))  # fmt: skip
