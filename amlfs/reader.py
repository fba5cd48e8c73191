"""Reading pinned files block by block: memory, then the disk cache, then storage.

Runs on the mount's trio event loop. Every fetch of a block is one background task in
the mount's nursery (single flight: concurrent readers of a missing block share it), so
a reader that gives up after its time bound never cancels a fetch that others wait for,
and a finished fetch lands in the cache either way. Blocking work (storage through
fsspec, the diskcache store) runs in worker threads under capacity limiters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import trio

from amlfs.cache import BlockCache, BlockKey, HotBlocks
from amlfs.errors import SourceChanged, StorageError
from amlfs.storage import Store

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 4.0
MAX_PREFETCHES = 64  # background read-ahead tasks at once; more requests are dropped


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
    errors: int = 0

    def public(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: Exception | None = None


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
    ):
        self.store = store
        self.cache = cache
        self.hot = hot
        self.nursery = nursery
        self.block_size = block_size
        self.io_timeout = io_timeout
        self.stats = ReadStats()
        self._fetch_limiter = trio.CapacityLimiter(fetch_limit)
        self._disk_limiter = trio.CapacityLimiter(4)  # block files read at once
        self._write_limiter = trio.CapacityLimiter(1)  # blocks written behind, one at a time
        self._flights: dict[BlockKey, Flight] = {}
        self._reported_changes: set[str] = set()

    async def read(self, blob: PinnedBlob, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of BLOB, short at its end. Raises ReadFailed."""
        end = min(offset + size, blob.size)
        if offset >= end:
            return b""
        parts = []
        for index in range(offset // self.block_size, (end - 1) // self.block_size + 1):
            block = await self.block(blob, index)
            start = index * self.block_size
            parts.append(block[max(offset, start) - start : min(end, start + len(block)) - start])
        self.stats.reads += 1
        self.stats.bytes_served += end - offset
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    async def block(self, blob: PinnedBlob, index: int) -> bytes:
        key = BlockKey(blob.source, blob.etag, self.block_size, index)
        data = self.hot.get(key)
        if data is not None:
            self.stats.memory_hits += 1
            return data
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            self.nursery.start_soon(self._fly, blob, key, flight)
        with trio.move_on_after(self.io_timeout):
            await flight.done.wait()
        if not flight.done.is_set():
            self.stats.errors += 1
            raise ReadFailed(f"{blob.label}: no data within {self.io_timeout:g} s")
        if flight.error is not None:
            self.stats.errors += 1
            raise ReadFailed(str(flight.error))
        return flight.data

    def prefetch(self, blob: PinnedBlob, indices: range) -> None:
        """Start fetching these blocks in the background, unless cached or under way."""
        for index in indices:
            if self.stats.prefetches >= MAX_PREFETCHES:
                return
            key = BlockKey(blob.source, blob.etag, self.block_size, index)
            if key in self._flights or self.hot.get(key) is not None:
                continue
            self.stats.prefetches += 1
            self.nursery.start_soon(self._prefetch, blob, index)

    async def _prefetch(self, blob: PinnedBlob, index: int) -> None:
        try:
            await self.block(blob, index)
        except ReadFailed:
            pass  # the reader, if it comes, will see the failure itself
        finally:
            self.stats.prefetches -= 1

    async def _fly(self, blob: PinnedBlob, key: BlockKey, flight: Flight) -> None:
        try:
            flight.data = await self._load(blob, key)
            self.hot.put(key, flight.data)
        except (ReadFailed, SourceChanged) as error:
            flight.error = error
        finally:
            del self._flights[key]
            flight.done.set()

    async def _load(self, blob: PinnedBlob, key: BlockKey) -> bytes:
        length = min(self.block_size, blob.size - key.index * self.block_size)
        data = await trio.to_thread.run_sync(
            self.cache.get, key, length, limiter=self._disk_limiter
        )
        if data is not None:
            self.stats.disk_hits += 1
            return data
        self.stats.misses += 1
        data = await self._fetch(blob, key.index * self.block_size, length)
        self.nursery.start_soon(self._keep, key, data)
        return data

    async def _fetch(self, blob: PinnedBlob, start: int, length: int) -> bytes:
        """Fetch from storage, retrying storage failures with backoff until the time
        bound; a changed source is final and is logged once per file."""
        deadline = trio.current_time() + self.io_timeout
        for attempt in range(1, 1000):  # bounded by the deadline long before the count
            self.stats.fetches_in_flight += 1
            try:
                # A request that hangs is abandoned at the deadline (its thread ends when
                # the SDK's own timeout fires), so the flight ends and later readers retry.
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    data = await trio.to_thread.run_sync(
                        self.store.read_pinned, blob.relative, start, start + length,
                        blob.etag, limiter=self._fetch_limiter, abandon_on_cancel=True,
                    )  # fmt: skip
            except trio.TooSlowError:
                log.error("%s: no answer from storage within %g s", blob.label, self.io_timeout)
                raise ReadFailed(f"{blob.label}: storage did not answer in time") from None
            except SourceChanged:
                if blob.source not in self._reported_changes:
                    self._reported_changes.add(blob.source)
                    log.error("%s changed since its version was registered (pinned etag %s); "
                              "reads of it fail", blob.label, blob.etag)  # fmt: skip
                raise
            except StorageError as error:
                pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempt - 1))
                if trio.current_time() + pause >= deadline:
                    log.error("%s: giving up after %d attempts: %s", blob.label, attempt, error)
                    raise ReadFailed(f"{blob.label}: {error}") from None
                log.warning("%s: attempt %d failed (%s); retrying", blob.label, attempt, error)
                await trio.sleep(pause)
                continue
            finally:
                self.stats.fetches_in_flight -= 1
            if len(data) != length:
                raise ReadFailed(f"{blob.label}: got {len(data)} bytes, expected {length}")
            self.stats.fetches += 1
            self.stats.bytes_fetched += length
            return data
        raise ReadFailed(f"{blob.label}: too many attempts")

    async def _keep(self, key: BlockKey, data: bytes) -> None:
        await trio.to_thread.run_sync(self.cache.put, key, data, limiter=self._write_limiter)


def blocks_of(size: int, block_size: int) -> int:
    return math.ceil(size / block_size) if size else 0
