"""Pinned bytes for synchronous callers (the amlfs:// filesystem, `Dataset.open`), read
as a mount reads them: through the block reader, its memory of hot blocks and the block
cache shared with the mounts of the same state folder, with no FUSE.

The reader runs on trio. One thread per process runs one trio event loop, started on the
first read; it owns the nursery, one block cache per cache folder and one reader per
datastore and settings. Callers in any other thread hand it their reads with
`trio.from_thread.run` and wait for the answer; the reader bounds each read in time, so
a caller never waits for ever.

After a fork (a data loader's workers) the child starts a loop of its own on its first
read: the parent's loop thread does not exist there, and neither its storage clients
(obstore's runtime) nor its SQLite connections may be used in the child. Their objects
are kept referenced in the child, never closed there, so that no finalizer of theirs
runs in a process they do not belong to.

At interpreter exit the blocks still being written to the disk cache are given a few
seconds, then the loop is cancelled and the caches closed; the thread is a daemon
thread and each wait is bounded, so the exit never hangs.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path

import trio

from amlfs.cache import BlockCache, HotBlocks
from amlfs.cache.readahead import SequentialReads
from amlfs.health import StorageWatch
from amlfs.mounts import MountOptions
from amlfs.reader import BlockReader, PinnedBlob
from amlfs.registry.models import Datastore
from amlfs.storage import Store

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # the loop thread reports its token within this, or reads fail
SETTLE_S = 10.0  # at exit: how long blocks still being written to the cache may take
STOP_TIMEOUT_S = 5.0  # at exit: how long the loop thread may take to end once cancelled


class Reads:
    """Reads of one datastore with one set of settings, on the process's loop."""

    def __init__(self, loop: _Loop, store: Store, reader: BlockReader):
        self._loop = loop
        self.store = store
        self.reader = reader

    def blob(self, relative: str, size: int, etag: str, label: str) -> PinnedBlob:
        """The pinned file at RELATIVE (to the datastore's root) as the reader knows it."""
        return PinnedBlob(self.store.source_name(relative), relative, size, etag, label)

    def read(self, blob: PinnedBlob, offset: int, size: int,
             stream: SequentialReads | None = None) -> bytes:  # fmt: skip
        """Bytes [OFFSET, OFFSET+SIZE) of BLOB, short at its end. STREAM, the reads of one
        open file so far, decides what to fetch ahead (as a mount's read-ahead does).
        Raises ReadFailed or SourceChanged."""
        data = self._loop.call(self._read, blob, offset, size, stream)
        return data if isinstance(data, bytes) else bytes(data)

    def prefetch_whole(self, blobs: list[PinnedBlob]) -> None:
        """Fetch each of BLOBS (files of one block at most) ahead, with read-ahead's
        budget: what demand reads leave."""
        self._loop.call(self._prefetch_whole, blobs)

    async def _prefetch_whole(self, blobs: list[PinnedBlob]) -> None:
        for blob in blobs:
            self.reader.prefetch(blob, range(1))

    def read_many(self, wanted: list[tuple[PinnedBlob, int, int]]) -> list[bytes | Exception]:
        """Bytes [START, END) of each (BLOB, START, END), read at once; a range that failed
        is its error (ReadFailed, SourceChanged) in its place."""
        found = self._loop.call(self._read_many, wanted)
        return [part if isinstance(part, bytes | Exception) else bytes(part) for part in found]

    async def _read(self, blob: PinnedBlob, offset: int, size: int,
                    stream: SequentialReads | None) -> bytes | memoryview:  # fmt: skip
        # STREAM is only touched here, on the loop: no lock for it.
        ahead = range(0)
        if stream is not None:
            ahead = stream.on_read(offset, size, self.reader.block_size, blob.size,
                                   self.reader.depth, self.reader.room_ahead)  # fmt: skip
        if ahead:  # under way beside this read's own fetch, not after it
            self.reader.prefetch(blob, ahead)
        return await self._span(blob, offset, size)

    async def _span(self, blob: PinnedBlob, offset: int, size: int) -> bytes | memoryview:
        """As reader.read, but a read of many blocks (a whole file, a column chunk) has the
        blocks of the next stretch fetched together, not one after the other: a stretch
        of what memory holds for one reader at a time, so none is evicted before use."""
        block_size = self.reader.block_size
        end = min(offset + size, blob.size)
        if end <= offset or (end - 1) // block_size == offset // block_size:
            return await self.reader.read(blob, offset, size)
        parts: list[bytes | memoryview] = []
        position = offset
        while position < end:  # bounded: each turn moves on by at least one block
            first = position // block_size
            upto = min(end, (first + self.reader.room_ahead) * block_size)
            self.reader.prefetch(blob, range(first + 1, (upto - 1) // block_size + 1))
            parts.append(await self.reader.read(blob, position, upto - position))
            position = upto
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_many(self, wanted: list[tuple[PinnedBlob, int, int]]
                         ) -> list[bytes | memoryview | Exception]:  # fmt: skip
        found: list[bytes | memoryview | Exception] = [b""] * len(wanted)

        async def one(index: int, blob: PinnedBlob, start: int, end: int) -> None:
            try:
                found[index] = await self._span(blob, start, max(0, end - start))
            except Exception as error:  # the caller decides what a failed range means
                found[index] = error

        async with trio.open_nursery() as nursery:
            for index, (blob, start, end) in enumerate(wanted):
                nursery.start_soon(one, index, blob, start, end)
        return found


class _Loop:
    """The loop thread of one process and what lives on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # guards starting the thread and the tables below
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self.thread: threading.Thread | None = None
        self.caches: dict[tuple[Path, int], BlockCache] = {}
        self.reads: dict[tuple[Datastore, MountOptions], Reads] = {}

    def call(self, function: object, *args: object) -> object:
        """Await FUNCTION(*ARGS) on the loop and return what it returned."""
        return trio.from_thread.run(function, *args, trio_token=self.token)

    def reads_of(self, datastore: Datastore, settings: MountOptions) -> Reads:
        key = (datastore, settings)
        found = self.reads.get(key)
        if found is not None:
            return found
        with self.lock:
            found = self.reads.get(key)
            if found is not None:
                return found
            self._start()
            cache_key = (settings.cache_dir, settings.cache_size)
            cache = self.caches.get(cache_key)
            if cache is None:
                cache = self.caches[cache_key] = BlockCache(*cache_key)
            # Opening the store may take a while (importing its client); not on the loop.
            store = Store(datastore, reads_only=True)
            reader = trio.from_thread.run_sync(self._reader, store, cache, settings,
                                               trio_token=self.token)  # fmt: skip
            self.reads[key] = found = Reads(self, store, reader)
            return found

    def _reader(self, store: Store, cache: BlockCache, settings: MountOptions) -> BlockReader:
        """On the loop: a reader of STORE, and the probe of its storage, as a mount has."""
        storage = StorageWatch(store.probe)
        reader = BlockReader(
            store, cache, HotBlocks(settings.hot_bytes), self.nursery,
            block_size=settings.block_size, fetch_limit=settings.fetch_limit,
            io_timeout=settings.io_timeout, storage=storage,
        )  # fmt: skip
        self.nursery.start_soon(storage.run)
        return reader

    def _start(self) -> None:
        """Start the loop thread, once (the caller holds the lock)."""
        if self.thread is not None:
            return
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,),
                                       name="amlfs-pinned-reads", daemon=True)  # fmt: skip
        self.thread.start()
        if not started.wait(START_TIMEOUT_S) or self.token is None:
            raise RuntimeError("the amlfs read loop did not start")
        atexit.register(self.stop)

    def _run(self, started: threading.Event) -> None:
        try:
            trio.run(self._main, started)
        except BaseException:
            log.exception("the amlfs read loop ended with an error")
        finally:
            started.set()  # a loop that failed to start does not keep its caller waiting

    async def _main(self, started: threading.Event) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            started.set()
            await trio.sleep_forever()

    async def _settle(self) -> None:
        """Wait, boundedly, for the blocks read to be written to the disk cache."""
        with trio.move_on_after(SETTLE_S):
            while any(r.reader.stats.pending_writes for r in self.reads.values()):
                await trio.sleep(0.01)

    def stop(self) -> None:
        """At exit: let pending cache writes finish, end the loop, close the caches."""
        if self.pid != os.getpid() or self.thread is None or not self.thread.is_alive():
            return
        try:
            trio.from_thread.run(self._settle, trio_token=self.token)
            trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
        except (trio.RunFinishedError, RuntimeError):
            return
        self.thread.join(STOP_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning("the amlfs read loop did not end within %g s", STOP_TIMEOUT_S)
            return
        for cache in self.caches.values():
            cache.close()


_loop: _Loop | None = None
_loop_lock = threading.Lock()
_left_behind: list[_Loop] = []  # a parent's loops, in a forked child: never used, never closed


def reads(datastore: Datastore, settings: MountOptions) -> Reads:
    """The reads of DATASTORE with SETTINGS in this process (its loop started if need be)."""
    global _loop
    loop = _loop
    if loop is None:
        with _loop_lock:
            if _loop is None:
                _loop = _Loop()
            loop = _loop
    return loop.reads_of(datastore, settings)


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop is not running here; start afresh."""
    global _loop, _loop_lock
    if _loop is not None:
        _left_behind.append(_loop)
    _loop = None
    _loop_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_after_fork)
