"""Reading pinned files block by block: memory, then the disk cache, then storage.

Runs on the mount's trio event loop. Every fetch of a block is one background task in
the mount's nursery (single flight: concurrent readers of a missing block share it), so
a reader that gives up after its time bound never cancels a fetch that others wait for,
and a finished fetch lands in the cache either way. Blocking work (storage through
obstore or fsspec, the diskcache store) runs in worker threads under capacity limiters.
Requests to storage take slots of two budgets (amlfs.slots): a fetch a reader waits for
never queues behind read-ahead, and read-ahead reaches further the longer storage takes
to answer and less far while memory between storage and the disk cache fills.
Neighbouring blocks missing together are asked for in one request; on Azure, from 1 MiB
up, it is streamed, and each block lands (and wakes its readers) as soon as its bytes
are in.

A read of part of a block that is neither in memory nor under way is served by range
from the disk cache, which reads and checks only the sub-blocks it covers; a block read
straight through, or asked for whole, is loaded whole into memory instead. Sub-blocks
of a cached block that fail their checksum are fetched again from storage, and the
mended block replaces the damaged one.

Every block fetched from storage is written to the disk cache behind the reader. While
writes are behind, read-ahead waits for them rather than fetching more (back-pressure),
so memory stays bounded and nothing read is left out of the cache; only a disk that
refuses a write (full, failing) skips it, and the cache logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from amlfs.cache import BlockCache, BlockKey, Cached, HotBlocks
from amlfs.cache.readahead import RUN_BLOCKS, BlockRanges, depth
from amlfs.errors import SourceChanged, StorageError, StorageUnreachable
from amlfs.health import StorageWatch
from amlfs.metrics.timings import FETCH_BOUNDS, Timings
from amlfs.registry import pins
from amlfs.slots import FetchSlots
from amlfs.storage import Store
from amlfs.whole_files import WholeFiles, patience

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 4.0
MAX_PREFETCHES = 16  # background read-ahead runs at once; more requests are dropped
# Read-ahead fetches nothing from storage while this many bytes of blocks are being
# fetched or wait to be written to the disk cache; a fetch that a reader waits for only
# waits at twice that. This bounds the memory they take.
WRITE_BEHIND_BYTES = 64 * 1024 * 1024
WRITERS = 2  # blocks written to the disk cache at once (the index is taken in turns)
LATENCY_WEIGHT = 0.2  # of each request's time in the running latency estimate


class ReadFailed(Exception):
    """A block could not be had within the time bound, or its source changed."""


@dataclass(frozen=True)
class PinnedBlob:
    """What the reader needs of one pinned file."""

    source: str  # account-qualified URL: the cache key's name for the blob
    relative: str  # path relative to the datastore root
    size: int
    etag: str
    label: str  # for log lines: "dataset:version path"


@dataclass
class ReadStats:
    reads: int = 0
    bytes_served: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    fetches: int = 0
    bytes_fetched: int = 0
    fetches_in_flight: int = 0
    prefetches: int = 0
    pending_writes: int = 0
    writes_skipped: int = 0  # blocks the disk cache refused (full or failing disk)
    mended: int = 0  # cached blocks whose damaged sub-blocks were fetched again
    errors: int = 0
    read_aheads: int = 0  # read-ahead fetches started
    # Bytes answered to reads, by where their block was when the read asked for it
    bytes_from_memory: int = 0
    bytes_from_disk: int = 0
    bytes_from_storage: int = 0

    def public(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: Exception | None = None
    wanted: bool = False  # a reader waits for it: it waits for room as a read, not read-ahead
    from_disk: bool = False  # found in the disk cache, not fetched from storage


class BlockReader:
    def __init__(
        self,
        store: Store,
        cache: BlockCache,
        hot: HotBlocks,
        nursery: trio.Nursery,
        *,
        block_size: int,
        fetch_limit: int,
        io_timeout: float,
        storage: StorageWatch | None = None,
    ):
        """STORAGE, when given, is told what fetches find and tells whether the store is
        reachable: while it is not, fetches fail at once (see amlfs.health)."""
        self.store = store
        self.storage = storage
        self.cache = cache
        self.hot = hot
        self.nursery = nursery
        self.block_size = block_size
        self.io_timeout = io_timeout
        self.stats = ReadStats()
        self.slots = FetchSlots(fetch_limit)
        self._fetch_threads = trio.CapacityLimiter(2 * fetch_limit)  # both budgets' requests
        self.latency_s = 0.0  # running estimate of a request's time, 0 until one is done
        self.fetch_timings = Timings(FETCH_BOUNDS)  # of the requests answered (for metrics)
        self._disk_limiter = trio.CapacityLimiter(4)  # block files read at once
        self._write_limiter = trio.CapacityLimiter(WRITERS)
        self._flights: dict[BlockKey, Flight] = {}
        self._reported_changes: set[str] = set()
        self._ranges = BlockRanges()
        self._fetching_bytes = 0  # of blocks being fetched from storage
        self._pending_bytes = 0  # of blocks waiting to be written to the disk cache
        self._writes_moved = trio.Event()  # set (and replaced) when room may have been made
        self._wholes = WholeFiles(store, cache, nursery, block_size=block_size,
                                  io_timeout=io_timeout, request=self._request, stats=self.stats,
                                  failed=ReadFailed, write_limiter=self._write_limiter)  # fmt: skip

    async def read(self, blob: PinnedBlob, offset: int, size: int) -> bytes | memoryview:
        """Bytes [offset, offset+size) of BLOB, short at its end (a view into a cached
        block when they lie in one). Raises ReadFailed."""
        end = min(offset + size, blob.size)
        if offset >= end:
            return b""
        parts = []
        for index in range(offset // self.block_size, (end - 1) // self.block_size + 1):
            start = index * self.block_size
            parts.append(await self._part(blob, index, max(offset, start) - start,
                                          min(end, start + self.block_size) - start))  # fmt: skip
        self.stats.reads += 1
        self.stats.bytes_served += end - offset
        # pyfuse3 replies from any buffer: a slice of a block goes out without a copy.
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _part(self, blob: PinnedBlob, index: int, start: int, end: int
                    ) -> bytes | memoryview:  # fmt: skip
        """Bytes [START, END) of block INDEX: from memory; else by range from the disk
        cache, unless the block is under way or worth loading whole; else the block."""
        key = self._key(blob, index)
        data = self.hot.get(key)
        if data is not None:
            self.stats.memory_hits += 1
            self.stats.bytes_from_memory += end - start
            return memoryview(data)[start:end]
        looked_up = False
        length = self._length(blob, index)
        if key not in self._flights and not self._ranges.whole(key, start, end, length):
            cached = await trio.to_thread.run_sync(
                self.cache.read, key, length, start, end, limiter=self._disk_limiter
            )
            if cached is not None and not cached.damaged:
                self.stats.disk_hits += 1
                self.stats.bytes_from_disk += end - start
                return cached.data
            looked_up = cached is None  # not stored: the fetch need not look again
        data, tier = await self._block(blob, index, looked_up)
        setattr(self.stats, tier, getattr(self.stats, tier) + end - start)
        return memoryview(data)[start:end]

    async def block(self, blob: PinnedBlob, index: int, *, looked_up: bool = False) -> bytes:
        """The whole block INDEX. LOOKED_UP: the disk cache was just found not to have it."""
        return (await self._block(blob, index, looked_up))[0]

    async def _block(self, blob: PinnedBlob, index: int, looked_up: bool) -> tuple[bytes, str]:
        """The whole block INDEX, and the ReadStats field of the bytes from where it was."""
        key = self._key(blob, index)
        data = self.hot.get(key)
        if data is not None:
            self.stats.memory_hits += 1
            return data, "bytes_from_memory"
        flight = self._flights.get(key)
        if flight is None:
            self._launch(blob, [index], looked_up=looked_up)
            flight = self._flights[key]
        elif not flight.wanted:  # read-ahead that a reader now waits for: no longer waits
            flight.wanted = True  # behind writes nor for a slot as read-ahead does
            self._nudge()
        bound = self._bound(blob)
        with trio.move_on_after(bound):
            await flight.done.wait()
        if not flight.done.is_set():
            self.stats.errors += 1
            raise ReadFailed(f"{blob.label}: no data within {bound:g} s")
        if flight.error is not None:
            self.stats.errors += 1
            raise ReadFailed(str(flight.error))
        return flight.data, "bytes_from_disk" if flight.from_disk else "bytes_from_storage"

    def prefetch(self, blob: PinnedBlob, indices: range) -> None:
        """Start fetching these blocks in the background, unless cached or under way.
        Neighbouring blocks are fetched together, up to RUN_BLOCKS in one request."""
        wanted = []
        for index in indices:
            key = self._key(blob, index)
            if key not in self._flights and self.hot.get(key) is None:
                wanted.append(index)
        for run in runs(wanted, RUN_BLOCKS):
            if self.stats.prefetches >= MAX_PREFETCHES:
                return
            self._launch(blob, run, prefetch=True)

    def status(self) -> dict:
        """The counters, and what decides read-ahead now, for `amlfs status`."""
        return self.stats.public() | {
            "latency_ms": round(self.latency_s * 1000, 1),
            "read_ahead_depth": round(self.depth, 2),
            "requests_for_reads": self.slots.counts.demand,
            "requests_for_read_ahead": self.slots.counts.speculative,
        }

    @property
    def depth(self) -> float:
        """How many times the base read-ahead to go ahead now (see readahead.depth). The
        pressure is the blocks fetched that wait to be written (the disk cache is behind
        storage), not those being fetched: read-ahead under way is what depth is for."""
        return depth(self.latency_s, self._pending_bytes / WRITE_BEHIND_BYTES)

    @property
    def room_ahead(self) -> int:
        """Blocks one reader may have fetched ahead: half of what memory holds, so that
        they are not evicted before they are read."""
        return max(1, self.hot.limit_bytes // (2 * self.block_size))

    def _key(self, blob: PinnedBlob, index: int) -> BlockKey:
        return BlockKey(blob.source, blob.etag, self.block_size, index)

    def _bound(self, blob: PinnedBlob) -> float:
        """How long a read waits for a block of BLOB: a file pinned by content is fetched
        whole first."""
        if pins.pinned_md5(blob.etag) is None:
            return self.io_timeout
        return patience(self.io_timeout, blob.size, self.block_size)

    def _length(self, blob: PinnedBlob, index: int) -> int:
        return min(self.block_size, blob.size - index * self.block_size)

    def _launch(self, blob: PinnedBlob, run: list[int], prefetch: bool = False,
                looked_up: bool = False) -> None:  # fmt: skip
        """One background task loads the consecutive blocks RUN. Their flights are
        registered now, before any await, so that no second fetch of them can start."""
        flights = {index: Flight(wanted=not prefetch) for index in run}
        for index, flight in flights.items():
            self._flights[self._key(blob, index)] = flight
        if prefetch:
            self.stats.prefetches += 1
            self.stats.read_aheads += 1
        self.nursery.start_soon(self._fly, blob, flights, prefetch, looked_up)

    async def _fly(self, blob: PinnedBlob, flights: dict[int, Flight], prefetch: bool,
                   looked_up: bool) -> None:  # fmt: skip
        failure: Exception | None = None
        try:
            await self._load(blob, flights, looked_up)
        except (ReadFailed, SourceChanged) as error:
            failure = error
        except Exception as error:  # a fault of ours: its readers get EIO, the mount goes on
            log.exception("%s: fetching blocks %s failed", blob.label, list(flights))
            failure = ReadFailed(f"{blob.label}: {type(error).__name__}: {error}")
        finally:
            for flight in flights.values():
                if not flight.done.is_set():  # blocks that landed before the failure stay good
                    flight.error = failure or ReadFailed(
                        f"{blob.label}: its fetch ended without it"
                    )
            for index, flight in flights.items():
                self._flights.pop(self._key(blob, index), None)
                flight.done.set()
            if prefetch:
                self.stats.prefetches -= 1

    async def _load(self, blob: PinnedBlob, flights: dict[int, Flight], looked_up: bool) -> None:
        """Blocks from the disk cache where it has them (mending damaged ones); the rest
        from storage, each run of missing neighbours in one request, once writes are not
        behind. Each flight ends as soon as its block is in. LOOKED_UP: the disk cache was
        just found not to have them."""

        def land(index: int, data: bytes) -> None:
            flight = flights[index]
            flight.data = data
            self.hot.put(self._key(blob, index), data)
            flight.done.set()

        found: dict[int, Cached | None] = dict.fromkeys(flights)

        async def look(index: int) -> None:
            found[index] = cached = await trio.to_thread.run_sync(
                self.cache.read, self._key(blob, index), self._length(blob, index),
                limiter=self._disk_limiter,
            )  # fmt: skip
            if cached is not None and not cached.damaged:
                self.stats.disk_hits += 1
                flights[index].from_disk = True
                land(index, cached.data)

        if not looked_up:  # each block lands as soon as it is read, not after its run
            async with trio.open_nursery() as looks:
                for index in flights:
                    looks.start_soon(look, index)
        missing = [index for index, cached in found.items() if cached is None]
        damaged = {index: cached for index, cached in found.items() if cached and cached.damaged}
        if pins.pinned_md5(blob.etag) is not None:
            # Pinned by content: no range of it can be checked (see amlfs.whole_files).
            missing = sorted(missing + list(damaged))
            self.stats.misses += len(missing)
            if missing:
                await self._wholes.load(blob, missing, land, waited_for(list(flights.values())))
            return
        for index, cached in damaged.items():
            block = await self._mend(blob, index, cached, flights[index])
            land(index, block)
            self._keep_later(self._key(blob, index), block)
        self.stats.misses += len(missing)
        if not missing:
            return
        await self._room_to_write([flights[index] for index in missing])
        owed = sum(self._length(blob, index) for index in missing)
        self._fetching_bytes += owed  # no await since the check: counted before any fetch

        def fetched(index: int, block: bytes) -> None:
            nonlocal owed
            land(index, block)
            owed -= len(block)  # from fetching to waiting to be written, no await
            self._fetching_bytes -= len(block)
            self._keep_later(self._key(blob, index), block)

        try:
            for run in runs(missing, len(missing)):
                wanted = waited_for([flights[index] for index in run])
                await self._fetch_run(blob, run, wanted, fetched)
        finally:
            if owed:  # blocks that never came: no longer owed
                self._fetching_bytes -= owed
                self._nudge()

    async def _fetch_run(self, blob: PinnedBlob, run: list[int], wanted: Callable[[], bool],
                         fetched: Callable[[int, bytes], None]) -> None:  # fmt: skip
        """The consecutive blocks RUN of BLOB from storage in one request (see _request),
        each handed to FETCHED as soon as its bytes are in, so that a reader waiting for
        the first of a long run does not wait for the rest; the last once the request is
        counted as answered. A retry asks only for the blocks not yet in."""
        handed = 0  # blocks of RUN handed over, in order
        ended = False  # this fetch returned or gave up: a stream still going hands nothing

        def hand(block: bytes) -> None:  # on the event loop
            nonlocal handed
            if ended:
                return
            index = run[handed]
            if len(block) != self._length(blob, index):
                raise ReadFailed(f"{blob.label}: got {len(block)} bytes of block {index}, "
                                 f"expected {self._length(blob, index)}")  # fmt: skip
            handed += 1
            self.stats.bytes_fetched += len(block)
            fetched(index, block)

        def stream() -> bytes | None:  # in a worker thread; returns the last
            rest = run[handed:]
            lengths = [self._length(blob, index) for index in rest]
            pieces = self.store.read_pinned_pieces(blob.relative, rest[0] * self.block_size,
                                                   lengths, blob.etag)  # fmt: skip
            count = 0
            for count, block in enumerate(pieces, 1):
                if count == len(rest):
                    return block
                if ended:
                    return None
                trio.from_thread.run_sync(hand, block)
            raise ReadFailed(f"{blob.label}: the answer ended after {count} of {len(rest)} "
                             "blocks")  # fmt: skip

        try:
            last = await self._request(blob, wanted, self.io_timeout, stream)
            if last is not None:
                hand(last)
        finally:
            ended = True

    async def _fetch(self, blob: PinnedBlob, start: int, length: int,
                     wanted: Callable[[], bool]) -> Buffer:  # fmt: skip
        """Bytes [start, start + length) of BLOB from storage (see _request)."""
        data = await self._request(blob, wanted, self.io_timeout, self.store.read_pinned,
                                   blob.relative, start, start + length, blob.etag)  # fmt: skip
        if len(data) != length:
            raise ReadFailed(f"{blob.label}: got {len(data)} bytes, expected {length}")
        self.stats.bytes_fetched += length
        return data

    async def _request(self, blob: PinnedBlob, wanted: Callable[[], bool], bound: float,
                       call: Callable, *args: object) -> object:  # fmt: skip
        """CALL(*ARGS), a request to storage about BLOB, in a worker thread and a slot of
        the budget WANTED() names (demand or read-ahead), retrying storage failures with
        backoff until BOUND seconds have passed; a changed source is final and is logged
        once per file."""
        deadline = trio.current_time() + bound
        attempt = 0
        while True:  # bounded by the deadline
            attempt += 1
            if self.storage is not None and not self.storage.reachable:
                # A known outage: fail now rather than wait out the bound again.
                raise ReadFailed(f"{blob.label}: {self.storage.health.describe()}")
            self.stats.fetches_in_flight += 1
            try:
                # A request that hangs is abandoned at the deadline (its thread ends when
                # the SDK's own timeout fires), so the flight ends and later readers retry.
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    async with self.slots.slot(wanted):
                        asked = trio.current_time()
                        data = await trio.to_thread.run_sync(
                            call, *args, limiter=self._fetch_threads, abandon_on_cancel=True
                        )
                        self._took(trio.current_time() - asked)
            except trio.TooSlowError:
                log.error("%s: no answer from storage within %g s", blob.label, bound)
                if self.storage is not None:
                    self.storage.suspect(blob.relative)
                raise ReadFailed(f"{blob.label}: storage did not answer in time") from None
            except SourceChanged:
                if blob.source not in self._reported_changes:
                    self._reported_changes.add(blob.source)
                    log.error("%s changed since its version was registered (pinned etag %s); "
                              "reads of it fail", blob.label, blob.etag)  # fmt: skip
                raise
            except StorageError as error:
                if isinstance(error, StorageUnreachable) and self.storage is not None:
                    # This read found the outage (or was under way when it began): it waits,
                    # to its bound, for the probe to find the store back; later reads fail
                    # at once.
                    self.storage.lost(error, blob.relative)
                    with trio.move_on_at(deadline):
                        await self.storage.back()
                    if not self.storage.reachable:
                        log.error("%s: giving up: %s", blob.label, error)
                        raise ReadFailed(f"{blob.label}: {error}") from None
                    continue
                pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1))
                if trio.current_time() + pause >= deadline:
                    log.error("%s: giving up after %d attempts: %s", blob.label, attempt, error)
                    raise ReadFailed(f"{blob.label}: {error}") from None
                log.warning("%s: attempt %d failed (%s); retrying", blob.label, attempt, error)
                await trio.sleep(pause)
                continue
            finally:
                self.stats.fetches_in_flight -= 1
            if self.storage is not None:
                self.storage.answered()
            self.stats.fetches += 1
            return data

    def _took(self, seconds: float) -> None:
        """One more request's time in the running latency estimate."""
        self.fetch_timings.observe(seconds)
        weight = LATENCY_WEIGHT if self.latency_s else 1.0
        self.latency_s += weight * (seconds - self.latency_s)

    async def _mend(self, blob: PinnedBlob, index: int, cached: Cached,
                    flight: Flight) -> bytes:  # fmt: skip
        """Block INDEX from its cached bytes, with the sub-blocks that failed their
        checksum fetched again from storage."""
        block = bytearray(cached.data)
        start = index * self.block_size
        for lo, hi in cached.damaged:
            log.warning("%s: cached block %d is damaged (bytes %d-%d of it); fetching them "
                        "again", blob.label, index, lo, hi)  # fmt: skip
            block[lo:hi] = await self._fetch(blob, start + lo, hi - lo, waited_for([flight]))
        self.stats.mended += 1
        return bytes(block)

    async def _room_to_write(self, flights: list[Flight]) -> None:
        """Wait while the disk cache is behind: read-ahead while WRITE_BEHIND_BYTES are
        being fetched or wait to be written, a fetch a reader waits for only at twice
        that. Bounded: each fetch and each write ends (or fails) in its time."""
        while True:
            wanted = any(flight.wanted for flight in flights)
            behind = self._fetching_bytes + self._pending_bytes
            if behind < WRITE_BEHIND_BYTES * (2 if wanted else 1):
                return
            await self._writes_moved.wait()

    def _nudge(self) -> None:
        """Wake the fetches waiting for room, to look again."""
        self._writes_moved.set()
        self._writes_moved = trio.Event()
        self.slots.changed()

    def _keep_later(self, key: BlockKey, data: bytes) -> None:
        """Write the block to the disk cache behind the reader. Never dropped: read-ahead
        waits instead while writes are behind (_room_to_write)."""
        self.stats.pending_writes += 1
        self._pending_bytes += len(data)
        self.nursery.start_soon(self._keep, key, data)

    async def _keep(self, key: BlockKey, data: bytes) -> None:
        try:
            kept = await trio.to_thread.run_sync(
                self.cache.put, key, data, limiter=self._write_limiter
            )
            if not kept:  # the disk refused it; the cache logs why
                self.stats.writes_skipped += 1
        finally:
            self.stats.pending_writes -= 1
            self._pending_bytes -= len(data)
            self._nudge()

    def landing(self, blob: PinnedBlob, indices: range) -> list[trio.Event] | None:
        """For hinted read-ahead, which keeps a bounded number of files ahead: the events
        set when the fetches under way of these blocks end (none when all are in memory),
        or None when one of them is neither in memory nor under way (read-ahead was full)."""
        events = []
        for index in indices:
            key = self._key(blob, index)
            flight = self._flights.get(key)
            if flight is not None:
                events.append(flight.done)
            elif self.hot.get(key) is None:
                return None
        return events


def waited_for(flights: list[Flight]) -> Callable[[], bool]:
    """Whether a reader waits for any of FLIGHTS now (read-ahead may become waited for)."""
    return lambda: any(flight.wanted for flight in flights)


def runs(indices: list[int], longest: int) -> list[list[int]]:
    """Sorted INDICES cut into runs of consecutive numbers, each at most LONGEST long."""
    cut: list[list[int]] = []
    for index in sorted(indices):
        if cut and cut[-1][-1] == index - 1 and len(cut[-1]) < longest:
            cut[-1].append(index)
        else:
            cut.append([index])
    return cut
