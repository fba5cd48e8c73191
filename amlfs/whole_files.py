"""Reads of files pinned by content: fetched whole and checked before a byte is served.

A file whose store reports no etag (an http server that sends no ETag) is pinned by its
MD5 (amlfs.registry.pins). No request for a range of it can be made conditional, and no
range can be checked against a whole-file hash, so the first read of a block of it that
no cache holds fetches the whole file, in one request, into an unnamed spill file in the
block cache's folder (on disk, never in memory: the kernel frees it when it is closed,
also if the daemon dies), hashing it on the way. Only when its size and MD5 equal the pin
are its blocks served, one at a time from the spill file, and written to the block cache;
a file that differs fails every read of it (storage.download_pinned raises SourceChanged,
the reader logs it once) and nothing of it is cached. The cache key holds the MD5, so the
blocks cached after a check are trusted like any other cached block afterwards.

Readers of one file at once share its fetch. A file that does not fit the block cache is
fetched whole again for the blocks that were evicted: correct, not fast.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from amlfs.cache import BlockCache, BlockKey
from amlfs.errors import SourceChanged
from amlfs.storage import Store

if TYPE_CHECKING:
    from amlfs.reader import PinnedBlob, ReadStats

# The reader's request to storage: (blob, wanted, bound in seconds, call, *args) -> result;
# it raises the reader's ReadFailed or SourceChanged.
Request = Callable[..., Awaitable[object]]
Land = Callable[[int, bytes], None]


def patience(io_timeout: float, size: int, block_size: int) -> float:
    """How long the fetch of a whole file of SIZE bytes may take: IO_TIMEOUT per block, as
    the same bytes read block by block would be allowed."""
    return io_timeout * max(1, -(-size // block_size))


@dataclass
class _Fetch:
    """One whole-file fetch and the readers of its spill file."""

    done: trio.Event = field(default_factory=trio.Event)
    spill: int | None = None  # fd of the checked copy, while someone reads it
    error: Exception | None = None
    users: int = 0  # readers, and the task writing it to the block cache
    # The worker thread hands the checked copy over under this lock, unless the fetch
    # was given up meanwhile (its time bound passed): then the thread closes it itself.
    handover: threading.Lock = field(default_factory=threading.Lock)
    given_up: bool = False


class WholeFiles:
    """The whole-file fetches of one reader, its REQUEST making them. FAILED is the
    reader's error type for a read that cannot be served."""

    def __init__(self, store: Store, cache: BlockCache, nursery: trio.Nursery, *,
                 block_size: int, io_timeout: float, request: Request, stats: ReadStats,
                 failed: type[Exception], write_limiter: trio.CapacityLimiter):  # fmt: skip
        self.store = store
        self.stats = stats
        self.cache = cache
        self.nursery = nursery
        self.block_size = block_size
        self.io_timeout = io_timeout
        self._request = request
        self._failed = failed
        self._write_limiter = write_limiter
        self._fetches: dict[tuple[str, str], _Fetch] = {}

    async def load(self, blob: PinnedBlob, indices: list[int], land: Land,
                   wanted: Callable[[], bool]) -> None:  # fmt: skip
        """LAND(index, bytes) each block of INDICES once the whole of BLOB has been fetched
        and found as pinned. Raises what the fetch raised (ReadFailed, SourceChanged)."""
        key = (blob.source, blob.etag)
        if key not in self._fetches:
            # A fetch that ended while this reader looked for its blocks elsewhere wrote
            # them all to the block cache before it let go: take them from there.
            found = await self._cached(blob, indices)
            if found is not None:
                for index in indices:
                    land(index, found[index])
                return
        fetch = self._fetches.get(key)  # one may have started during that look
        if fetch is None:
            # Registered before any await: a second reader joins this fetch.
            fetch = self._fetches[key] = _Fetch(users=1)  # the task writing the cache
            self.nursery.start_soon(self._fetch, blob, fetch, wanted)
        fetch.users += 1
        try:
            await fetch.done.wait()
            if fetch.error is not None:
                raise fetch.error
            for index in indices:
                land(index, await trio.to_thread.run_sync(self._block, fetch.spill, blob, index))
        finally:
            self._release(key, fetch)

    async def _cached(self, blob: PinnedBlob, indices: list[int]) -> dict[int, bytes] | None:
        """The blocks INDICES of BLOB, if the block cache holds every one, sound."""
        found = {}
        for index in indices:
            length = min(self.block_size, blob.size - index * self.block_size)
            block = BlockKey(blob.source, blob.etag, self.block_size, index)
            cached = await trio.to_thread.run_sync(self.cache.read, block, length)
            if cached is None or cached.damaged:
                return None
            found[index] = cached.data
        return found

    async def _fetch(self, blob: PinnedBlob, fetch: _Fetch, wanted: Callable[[], bool]) -> None:
        key = (blob.source, blob.etag)
        try:
            bound = patience(self.io_timeout, blob.size, self.block_size)
            await self._request(blob, wanted, bound, self._download, blob, fetch)
            self.stats.bytes_fetched += blob.size
        except BaseException as error:  # the readers waiting for it learn why, then
            with fetch.handover:  # a thread still running (abandoned) keeps its copy
                fetch.given_up = True
            ended = isinstance(error, self._failed | SourceChanged)  # it ends as it would
            fetch.error = error if ended else self._failed(
                f"{blob.label}: cannot fetch it whole: {error!r}")  # fmt: skip
            self._fetches.pop(key, None)  # a later read tries again
            fetch.done.set()
            self._release(key, fetch)
            if not (ended or isinstance(error, OSError)):  # OSError: no room to spill it
                raise
            return
        fetch.done.set()
        try:
            for index in range(-(-blob.size // self.block_size)):
                data = await trio.to_thread.run_sync(self._block, fetch.spill, blob, index)
                block = BlockKey(blob.source, blob.etag, self.block_size, index)
                await trio.to_thread.run_sync(self.cache.put, block, data,
                                              limiter=self._write_limiter)  # fmt: skip
        finally:
            self._release(key, fetch)

    def _release(self, key: tuple[str, str], fetch: _Fetch) -> None:
        fetch.users -= 1
        if fetch.users == 0:
            if fetch.spill is not None:
                os.close(fetch.spill)
                fetch.spill = None
            if self._fetches.get(key) is fetch:
                del self._fetches[key]

    def _spill(self) -> int:
        """A new unnamed file in the block cache's folder (else the system's temporary
        folder), open for reading and writing."""
        try:
            with tempfile.TemporaryFile(dir=self.cache.directory) as spill:
                return os.dup(spill.fileno())
        except OSError:  # a cache folder that is gone or read-only
            with tempfile.TemporaryFile() as spill:
                return os.dup(spill.fileno())

    def _download(self, blob: PinnedBlob, fetch: _Fetch) -> None:
        """The whole of BLOB into a new spill file, checked, handed over to FETCH (runs in
        a worker thread, which owns the file until it is handed over)."""
        spill = self._spill()
        try:
            self.store.download_pinned(blob.relative, blob.etag, Path(spill_path(spill)))
            size = os.fstat(spill).st_size
            if size != blob.size:
                raise SourceChanged(f"{blob.relative}: {size} bytes, pinned {blob.size}")
            with fetch.handover:
                if not fetch.given_up:
                    fetch.spill, spill = spill, None
        finally:
            if spill is not None:
                os.close(spill)

    def _block(self, spill: int, blob: PinnedBlob, index: int) -> bytes:
        start = index * self.block_size
        return os.pread(spill, min(self.block_size, blob.size - start), start)


def spill_path(fd: int) -> str:
    """A path naming the file open at FD (storage clients take paths)."""
    return f"/proc/self/fd/{fd}"
