"""BlockReader: reading pinned files block by block from memory, the disk cache, then storage.

Pure logic with an in-memory store: what is read equals the source, each missing block
is fetched once however many read it at the same time, a fetched block is served again
without storage (a part of it by range from the disk cache), a damaged sub-block is
fetched again alone, every block fetched is written to the disk cache (read-ahead waits
for the writes instead), a changed source is never served nor cached, storage failures
are retried, and every read ends within its time bound.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import diskcache
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amlfs.reader
from amlfs.cache import BlockCache, BlockKey, HotBlocks
from amlfs.cache.blocks import SUB_BLOCK
from amlfs.cache.readahead import DEPTH_MOST
from amlfs.errors import SourceChanged, StorageError
from amlfs.reader import (
    MAX_PREFETCHES,
    RUN_BLOCKS,
    BlockReader,
    PinnedBlob,
    ReadFailed,
    runs,
)
from tests.support.stores import ReadsInPieces
from tests.support.waiting import WAIT_S, eventually

BLOCK = 1024
ETAG = '"0x8DC0FFEE"'


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def pinned(relative: str, size: int) -> PinnedBlob:
    return PinnedBlob(f"az://acct@box/{relative}", relative, size, ETAG, f"ds:1 {relative}")


class FakeStore(ReadsInPieces):
    """Pinned files in memory, with the contract of Store.read_pinned; counts requests.

    FAIL, when set, is consulted before each read and may raise (or block).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.calls: list[tuple[str, int, int]] = []
        self.fail: Callable[[int], None] | None = None
        self._lock = threading.Lock()

    def read_pinned(self, relative: str, start: int, end: int, etag: str) -> bytes:
        with self._lock:
            self.calls.append((relative, start, end))
            attempt = len(self.calls)
        if self.fail is not None:
            self.fail(attempt)
        if etag != ETAG:
            raise SourceChanged(f"{relative} changed since it was pinned")
        return self.files[relative][start:end]


@asynccontextmanager
async def open_reader(
    store: FakeStore,
    folder: Path,
    *,
    hot_bytes: int = 64 * BLOCK,
    io_timeout: float = WAIT_S,
    fetch_limit: int = 4,
    block_size: int = BLOCK,
) -> AsyncIterator[BlockReader]:
    """A reader over STORE with its block cache in FOLDER; its background work is
    cancelled and its cache closed when the block ends."""
    cache = BlockCache(folder, 64 * 1024 * 1024)
    try:
        async with trio.open_nursery() as nursery:
            yield BlockReader(
                store, cache, HotBlocks(hot_bytes), nursery, block_size=block_size,
                fetch_limit=fetch_limit, io_timeout=io_timeout,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    finally:
        cache.close()


def failing(error: Exception, attempts: int | None = None) -> Callable[[int], None]:
    """A FakeStore.fail raising ERROR on the first ATTEMPTS requests (all, if None)."""

    def fail(attempt: int) -> None:
        if attempts is None or attempt <= attempts:
            raise error

    return fail


def on_disk(reader: BlockReader, blob: PinnedBlob, index: int) -> bool:
    key = BlockKey(blob.source, blob.etag, reader.block_size, index)
    length = min(reader.block_size, blob.size - index * reader.block_size)
    return reader.cache.get(key, length) is not None


# --- what is read is the source ---------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 6 * BLOCK),
    reads=st.lists(
        st.tuples(st.integers(0, 7 * BLOCK), st.integers(0, 3 * BLOCK)), min_size=1, max_size=12
    ),
)
async def test_reads_at_any_offset_and_size_equal_the_source(
    size: int, reads: list[tuple[int, int]]
) -> None:
    data = content(size, seed=size)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", size)
    with tempfile.TemporaryDirectory() as folder:
        # Two blocks in memory: later reads come from memory, the disk cache and storage.
        async with open_reader(store, Path(folder), hot_bytes=2 * BLOCK) as reader:
            for offset, length in reads:
                assert await reader.read(blob, offset, length) == data[offset : offset + length]


async def test_a_read_across_block_boundaries_joins_the_blocks(tmp_path: Path) -> None:
    data = content(5 * BLOCK + 17)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        assert await reader.read(blob, BLOCK - 1, 2) == data[BLOCK - 1 : BLOCK + 1]
        assert await reader.read(blob, 100, 4 * BLOCK) == data[100 : 100 + 4 * BLOCK]
        assert await reader.read(blob, 0, 1 << 20) == data
    # Each block was fetched once, with exactly its own range (the last one short).
    assert sorted(store.calls) == [
        ("f.bin", i * BLOCK, min((i + 1) * BLOCK, len(data))) for i in range(6)
    ]


async def test_reads_at_or_past_the_end_are_short_or_empty(tmp_path: Path) -> None:
    data = content(2 * BLOCK + 5)
    store = FakeStore({"f.bin": data, "empty": b""})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        assert await reader.read(blob, len(data) - 3, 100) == data[-3:]
        assert await reader.read(blob, len(data), 100) == b""
        assert await reader.read(blob, 10 * BLOCK, 100) == b""
        assert await reader.read(blob, 0, 0) == b""
        assert await reader.read(pinned("empty", 0), 0, 4096) == b""
    assert all(start < len(data) for _, start, _ in store.calls)


def test_neighbouring_blocks_are_grouped_into_bounded_runs() -> None:
    assert runs([5, 1, 2, 3, 7, 8], 2) == [[1, 2], [3], [5], [7, 8]]
    assert runs([], 4) == []


# --- each block is fetched once ---------------------------------------------------------


async def test_concurrent_readers_of_a_missing_block_share_one_fetch(tmp_path: Path) -> None:
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    gate = threading.Event()
    store.fail = lambda _attempt: gate.wait(WAIT_S)  # hold the fetch until all wait on it
    blob = pinned("f.bin", len(data))
    results: list[bytes] = []

    async def read_one(offset: int) -> None:
        results.append(await reader.read(blob, offset, 100))

    async with open_reader(store, tmp_path) as reader, trio.open_nursery() as readers:
        for offset in range(0, 1000, 50):
            readers.start_soon(read_one, offset)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert len(store.calls) == 1
    assert sorted(map(bytes, results)) == sorted(data[o : o + 100] for o in range(0, 1000, 50))
    assert reader.stats.fetches == 1


async def test_a_block_read_again_comes_from_memory(tmp_path: Path) -> None:
    data = content(3 * BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        await reader.read(blob, 0, len(data))
        assert await reader.read(blob, 10, 2 * BLOCK) == data[10 : 10 + 2 * BLOCK]
        assert len(store.calls) == 3
        assert reader.stats.memory_hits == 3


async def test_a_block_fetched_once_is_served_from_disk_to_the_next_mount(
    tmp_path: Path,
) -> None:
    data = content(2 * BLOCK + 100)
    blob = pinned("f.bin", len(data))
    first_store = FakeStore({"f.bin": data})
    async with open_reader(first_store, tmp_path) as first:
        assert await first.read(blob, 0, len(data)) == data
        await eventually(lambda: all(on_disk(first, blob, i) for i in range(3)), "blocks kept")

    unreachable = FakeStore({})  # another mount of the same folder: storage is not needed
    unreachable.fail = failing(StorageError("offline"))
    async with open_reader(unreachable, tmp_path) as second:
        assert await second.read(blob, 0, len(data)) == data
        assert await second.read(blob, BLOCK, 10) == data[BLOCK : BLOCK + 10]  # then memory
    assert unreachable.calls == []
    assert (second.stats.disk_hits, second.stats.memory_hits, second.stats.misses) == (3, 1, 0)


LARGE = 4 * SUB_BLOCK  # a block of four sub-blocks, kept in a file of its own


async def cache_blocks(folder: Path, blob: PinnedBlob, data: bytes) -> None:
    """Read BLOB once through a reader on FOLDER, so that all its blocks are on disk."""
    async with open_reader(FakeStore({blob.relative: data}), folder, block_size=LARGE) as first:
        assert await first.read(blob, 0, len(data)) == data
        blocks = range(-(-len(data) // LARGE))
        await eventually(lambda: all(on_disk(first, blob, i) for i in blocks), "blocks kept")


async def test_a_part_of_a_cached_block_is_read_by_range_and_not_kept_in_memory(
    tmp_path: Path,
) -> None:
    data = content(2 * LARGE)
    blob = pinned("f.bin", len(data))
    await cache_blocks(tmp_path, blob, data)
    unreachable = FakeStore({})
    unreachable.fail = failing(StorageError("offline"))
    async with open_reader(unreachable, tmp_path, block_size=LARGE, hot_bytes=4 * LARGE) as reader:
        for offset in (LARGE + 70_000, 1000, 3 * SUB_BLOCK - 10):
            assert await reader.read(blob, offset, 4096) == data[offset : offset + 4096]
        assert (reader.stats.disk_hits, len(reader.hot)) == (3, 0)
        # Going on from where the last read of the block ended: the block is read whole.
        offset = 3 * SUB_BLOCK - 10 + 4096
        assert await reader.read(blob, offset, 4096) == data[offset : offset + 4096]
        assert len(reader.hot) == 1
        assert await reader.read(blob, 10, 100) == data[10:110]  # now from memory
        assert reader.stats.memory_hits == 1
    assert unreachable.calls == []


async def test_a_damaged_sub_block_alone_is_fetched_again_and_the_block_mended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = content(2 * LARGE)
    blob = pinned("f.bin", len(data))
    await cache_blocks(tmp_path, blob, data)
    with open(block_path(tmp_path, blob, 1), "r+b") as f:
        f.seek(2 * SUB_BLOCK + 3)  # in the third sub-block of block 1
        f.write(b"\xff" if data[LARGE + 2 * SUB_BLOCK + 3] != 0xFF else b"\x00")

    store = FakeStore({"f.bin": data})
    async with open_reader(store, tmp_path, block_size=LARGE) as reader:
        offset = LARGE + 2 * SUB_BLOCK  # a read by range of the damaged sub-block
        assert await reader.read(blob, offset, 4096) == data[offset : offset + 4096]
        assert store.calls == [("f.bin", LARGE + 2 * SUB_BLOCK, LARGE + 3 * SUB_BLOCK)]
        assert (reader.stats.bytes_fetched, reader.stats.mended) == (SUB_BLOCK, 1)
        await eventually(lambda: reader.stats.pending_writes == 0, "mended block written")
        reader.hot.clear()
        assert await reader.read(blob, 0, len(data)) == data  # the mended block is kept
        assert len(store.calls) == 1
    assert "ds:1 f.bin: cached block 1 is damaged (bytes 131072-196608 of it)" in caplog.text


def block_path(folder: Path, blob: PinnedBlob, index: int) -> str:
    """The file the disk cache keeps block INDEX of BLOB in (blocks of LARGE bytes)."""
    name = BlockKey(blob.source, blob.etag, LARGE, index).disk_key()
    with diskcache.Cache(str(folder)) as raw, raw.read(name) as stored:
        return stored.name


# --- writing behind the reader ----------------------------------------------------------


def slow_writes(reader: BlockReader) -> threading.Event:
    """Make the disk cache's writes wait until the returned event is set."""
    gate = threading.Event()
    put = reader.cache.put

    def held_put(key: BlockKey, data: bytes) -> bool:
        gate.wait(WAIT_S)
        return put(key, data)

    reader.cache.put = held_put  # type: ignore[method-assign]
    return gate


async def test_read_ahead_waits_for_writes_behind_and_no_block_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amlfs.reader, "WRITE_BEHIND_BYTES", 3 * BLOCK)
    data = content(3 * RUN_BLOCKS * BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        gate = slow_writes(reader)
        reader.prefetch(blob, range(RUN_BLOCKS))
        await eventually(lambda: reader.stats.pending_writes == RUN_BLOCKS, "first run fetched")
        reader.prefetch(blob, range(RUN_BLOCKS, 3 * RUN_BLOCKS))
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.calls) == 1  # the next runs wait: the disk is behind
        gate.set()
        await eventually(lambda: reader.stats.prefetches == 0, "prefetches done")
        await eventually(lambda: reader.stats.pending_writes == 0, "writes done")
        assert all(on_disk(reader, blob, i) for i in range(3 * RUN_BLOCKS))
        assert (len(store.calls), reader.stats.writes_skipped) == (3, 0)


async def test_read_ahead_under_way_counts_toward_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks being fetched take memory as much as blocks waiting to be written."""
    monkeypatch.setattr(amlfs.reader, "WRITE_BEHIND_BYTES", 3 * BLOCK)
    data = content(2 * RUN_BLOCKS * BLOCK)
    store = FakeStore({"f.bin": data})
    gate = threading.Event()
    store.fail = lambda _attempt: gate.wait(WAIT_S)  # storage holds the first fetch
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        reader.prefetch(blob, range(RUN_BLOCKS))
        await eventually(lambda: len(store.calls) == 1, "first run under way")
        reader.prefetch(blob, range(RUN_BLOCKS, 2 * RUN_BLOCKS))
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.calls) == 1  # nothing waits to be written, yet the next run waits
        gate.set()
        await eventually(lambda: reader.stats.prefetches == 0, "prefetches done")
        assert len(store.calls) == 2


async def test_a_read_does_not_wait_behind_writes_as_read_ahead_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amlfs.reader, "WRITE_BEHIND_BYTES", 3 * BLOCK)
    data = content(2 * RUN_BLOCKS * BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        gate = slow_writes(reader)
        reader.prefetch(blob, range(RUN_BLOCKS))
        await eventually(lambda: reader.stats.pending_writes == RUN_BLOCKS, "first run fetched")
        reader.prefetch(blob, range(RUN_BLOCKS, 2 * RUN_BLOCKS))  # waits for the writes
        await trio.testing.wait_all_tasks_blocked()
        offset = RUN_BLOCKS * BLOCK + 10  # a reader needs a block of the waiting run
        assert await reader.read(blob, offset, 100) == data[offset : offset + 100]
        assert len(store.calls) == 2
        gate.set()


async def test_a_write_the_disk_refuses_is_counted_as_skipped(tmp_path: Path) -> None:
    data = content(3 * BLOCK)
    store = FakeStore({"f.bin": data})
    async with open_reader(store, tmp_path) as reader:
        reader.cache.put = lambda key, data: False  # type: ignore[method-assign]
        assert await reader.read(pinned("f.bin", len(data)), 0, len(data)) == data
        await eventually(lambda: reader.stats.pending_writes == 0, "writes done")
        assert reader.stats.writes_skipped == 3


async def test_another_etag_of_a_blob_is_never_served_from_the_cache(tmp_path: Path) -> None:
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        await reader.read(blob, 0, BLOCK)
        await eventually(lambda: on_disk(reader, blob, 0), "block kept")
        changed = PinnedBlob(blob.source, blob.relative, blob.size, '"0xNEW"', blob.label)
        with pytest.raises(ReadFailed):
            await reader.read(changed, 0, BLOCK)  # fetched with its own etag: refused
    assert len(store.calls) == 2


async def test_prefetched_blocks_need_no_fetch_when_read(tmp_path: Path) -> None:
    data = content(4 * BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        reader.prefetch(blob, range(4))
        reader.prefetch(blob, range(4))  # asking again while under way fetches nothing more
        await eventually(lambda: reader.stats.prefetches == 0, "prefetches done")
        assert store.calls == [("f.bin", 0, 4 * BLOCK)]  # neighbours in one request
        assert await reader.read(blob, 0, len(data)) == data
        assert len(store.calls) == 1
        assert reader.stats.memory_hits == 4
        reader.prefetch(blob, range(4))  # already in memory: nothing to do
        assert reader.stats.prefetches == 0


async def test_prefetches_under_way_are_bounded(tmp_path: Path) -> None:
    blocks = 2 * MAX_PREFETCHES * RUN_BLOCKS  # twice as many runs as may be under way
    size = blocks * BLOCK
    store = FakeStore({"f.bin": content(size)})
    gate = threading.Event()
    store.fail = lambda _attempt: gate.wait(WAIT_S)
    blob = pinned("f.bin", size)
    async with open_reader(store, tmp_path) as reader:
        reader.prefetch(blob, range(blocks))
        assert reader.stats.prefetches == MAX_PREFETCHES
        gate.set()
        await eventually(lambda: reader.stats.prefetches == 0, "prefetches done")
    assert len(store.calls) == MAX_PREFETCHES


async def test_a_failed_prefetch_leaves_the_failure_to_the_reader(tmp_path: Path) -> None:
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    store.fail = failing(SourceChanged("f.bin changed since it was pinned"), attempts=1)
    async with open_reader(store, tmp_path) as reader:
        reader.prefetch(blob, range(1))
        await eventually(lambda: reader.stats.prefetches == 0, "prefetch done")
        assert await reader.read(blob, 0, BLOCK) == data  # tried again, not a remembered error


# --- failures ---------------------------------------------------------------------------


async def test_a_changed_source_fails_the_read_and_nothing_is_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FakeStore({"f.bin": content(2 * BLOCK)})
    store.fail = failing(SourceChanged("f.bin changed since it was pinned"))
    blob = pinned("f.bin", 2 * BLOCK)
    async with open_reader(store, tmp_path) as reader:
        with pytest.raises(ReadFailed, match="changed"):
            await reader.read(blob, 0, 10)
        assert len(store.calls) == 1  # final at once: not retried
        await trio.testing.wait_all_tasks_blocked()
        assert len(reader.hot) == 0
        assert reader.cache.stats().blocks == 0
        with pytest.raises(ReadFailed):
            await reader.read(blob, 0, 10)  # still refused, never served from a cache
        assert reader.stats.errors == 2
        assert reader.stats.bytes_served == 0
    reported = [r for r in caplog.records if "changed since its version" in r.getMessage()]
    assert len(reported) == 1  # logged once per file, however often it is read


async def test_storage_errors_are_retried_until_a_fetch_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amlfs.reader, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(amlfs.reader, "RETRY_MAX_S", 0.04)
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    store.fail = failing(StorageError("connection reset"), attempts=3)
    async with open_reader(store, tmp_path, io_timeout=5.0) as reader:
        assert await reader.read(pinned("f.bin", BLOCK), 0, BLOCK) == data
    assert len(store.calls) == 4
    assert (reader.stats.fetches, reader.stats.errors) == (1, 0)


async def test_storage_that_keeps_failing_fails_the_read_within_the_time_bound(
    tmp_path: Path,
) -> None:
    # A real clock: the fetch runs in a worker thread, which a mock clock's autojump
    # would race with. The default backoff (0.5 s, then 1 s) gives up after 0.5 s here.
    io_timeout = 1.0
    store = FakeStore({"f.bin": content(BLOCK)})
    store.fail = failing(StorageError("503 server busy"))
    async with open_reader(store, tmp_path, io_timeout=io_timeout) as reader:
        started = trio.current_time()
        with pytest.raises(ReadFailed, match="server busy"):
            await reader.read(pinned("f.bin", BLOCK), 0, BLOCK)
        assert trio.current_time() - started <= io_timeout + 0.2
    assert len(store.calls) >= 2  # retried before giving up
    assert reader.cache.stats().blocks == 0


async def test_storage_that_hangs_fails_the_read_within_the_time_bound(tmp_path: Path) -> None:
    io_timeout = 0.3
    store = FakeStore({"f.bin": content(BLOCK)})
    hung = threading.Event()
    store.fail = lambda _attempt: hung.wait(WAIT_S)
    try:
        async with open_reader(store, tmp_path, io_timeout=io_timeout) as reader:
            started = trio.current_time()
            with pytest.raises(ReadFailed, match=r"no data within|did not answer"):
                await reader.read(pinned("f.bin", BLOCK), 0, BLOCK)
            assert io_timeout - 0.05 <= trio.current_time() - started <= io_timeout + 0.3
    finally:
        hung.set()  # let the abandoned worker thread end


class HeldAfterFirstPiece(FakeStore):
    """Each request hands its first piece at once and the rest only once RELEASE is set."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(files)
        self.release = threading.Event()
        self.rest_handed = False

    def read_pinned_pieces(self, relative: str, start: int, lengths: list[int], etag: str
                           ) -> Iterator[bytes]:  # fmt: skip
        for n, piece in enumerate(super().read_pinned_pieces(relative, start, lengths, etag)):
            if n == 1:
                self.release.wait(WAIT_S)
                self.rest_handed = True
            yield piece


async def test_the_first_block_of_a_run_is_served_before_the_rest_of_the_run_is_in(
    tmp_path: Path,
) -> None:
    data = content(4 * BLOCK)
    store = HeldAfterFirstPiece({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        reader.prefetch(blob, range(4))  # one request for the four blocks
        assert await reader.read(blob, 0, BLOCK) == data[:BLOCK]
        assert not store.rest_handed
        store.release.set()
        assert await reader.read(blob, BLOCK, 3 * BLOCK) == data[BLOCK:]
    assert len(store.calls) == 1


async def test_a_fault_in_the_fetch_itself_fails_its_reads_and_not_the_reader(
    tmp_path: Path,
) -> None:
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    store.fail = failing(RuntimeError("a bug, not a storage error"), attempts=1)
    async with open_reader(store, tmp_path) as reader:
        with pytest.raises(ReadFailed, match="RuntimeError: a bug"):
            await reader.read(pinned("f.bin", BLOCK), 0, BLOCK)
        assert await reader.read(pinned("f.bin", BLOCK), 0, BLOCK) == data


async def test_a_short_answer_from_storage_fails_the_read(tmp_path: Path) -> None:
    store = FakeStore({"f.bin": content(BLOCK // 2)})  # shorter than what was pinned
    async with open_reader(store, tmp_path) as reader:
        with pytest.raises(ReadFailed, match="expected"):
            await reader.read(pinned("f.bin", BLOCK), 0, BLOCK)
        assert len(reader.hot) == 0


async def test_a_reader_that_gives_up_does_not_cancel_the_fetch_for_others(
    tmp_path: Path,
) -> None:
    data = content(BLOCK)
    store = FakeStore({"f.bin": data})
    slow = threading.Event()
    store.fail = lambda _attempt: slow.wait(WAIT_S)
    blob = pinned("f.bin", BLOCK)
    async with open_reader(store, tmp_path, io_timeout=5.0) as reader:
        with trio.move_on_after(0.2) as gave_up:  # e.g. the reader was interrupted
            await reader.read(blob, 0, BLOCK)
        assert gave_up.cancelled_caught
        slow.set()  # storage answers after the first reader gave up
        await eventually(lambda: len(reader.hot) == 1, "the fetch landed")
        assert await reader.read(blob, 0, BLOCK) == data
        await eventually(lambda: on_disk(reader, blob, 0), "block kept")
    assert len(store.calls) == 1


# --- demand before speculation ---------------------------------------------------------


class StalledReadAhead(FakeStore):
    """Storage that holds every request for files named ahead-* until RELEASE is set."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(files)
        self.release = threading.Event()

    def read_pinned(self, relative: str, start: int, end: int, etag: str) -> bytes:
        if relative.startswith("ahead-"):
            self.release.wait(WAIT_S)
        return super().read_pinned(relative, start, end, etag)


@pytest.mark.parametrize("files_ahead", [8, 64])
async def test_a_read_is_served_while_read_ahead_of_many_files_is_stalled(
    tmp_path: Path, files_ahead: int
) -> None:
    files = {f"ahead-{i}": content(BLOCK, i) for i in range(files_ahead)}
    store = StalledReadAhead({**files, "wanted.bin": content(BLOCK, 999)})
    async with open_reader(store, tmp_path, fetch_limit=4) as reader:
        for name, data in files.items():
            reader.prefetch(pinned(name, len(data)), range(1))
        await eventually(lambda: reader.slots.counts.speculative == 4, "read-ahead stalled")
        # Read-ahead holds all its slots and more queue behind them: the read has its own.
        with trio.fail_after(WAIT_S):
            data = await reader.read(pinned("wanted.bin", BLOCK), 0, BLOCK)
        assert data == store.files["wanted.bin"]
        assert reader.slots.counts.speculative == 4  # and took none of read-ahead's
        store.release.set()


async def test_read_ahead_a_reader_starts_waiting_for_stops_queueing_as_read_ahead(
    tmp_path: Path,
) -> None:
    files = {f"ahead-{i}": content(BLOCK, i) for i in range(8)}
    store = StalledReadAhead({**files, "later.bin": content(BLOCK, 7)})
    later = pinned("later.bin", BLOCK)
    async with open_reader(store, tmp_path, fetch_limit=2) as reader:
        for name, data in files.items():
            reader.prefetch(pinned(name, len(data)), range(1))
        reader.prefetch(later, range(1))  # queued behind the stalled read-ahead
        await eventually(lambda: reader.slots.counts.speculative == 2, "read-ahead stalled")
        with trio.fail_after(WAIT_S):
            assert await reader.read(later, 0, BLOCK) == store.files["later.bin"]
        assert store.calls.count(("later.bin", 0, BLOCK)) == 1  # the same fetch, moved up
        store.release.set()


async def test_read_ahead_goes_deeper_when_storage_is_slow_to_answer(tmp_path: Path) -> None:
    store = FakeStore({"f.bin": content(4 * BLOCK)})
    store.fail = lambda _attempt: time.sleep(0.030)  # 30 ms a request, like a cloud store
    blob = pinned("f.bin", 4 * BLOCK)
    async with open_reader(store, tmp_path) as reader:
        assert reader.depth == 1.0  # nothing measured yet: the base read-ahead
        await reader.read(blob, 0, BLOCK)
        assert reader.latency_s >= 0.030
        assert reader.depth >= 0.99 * DEPTH_MOST  # six times the base latency: the deepest


# --- statistics -------------------------------------------------------------------------


async def test_stats_count_hits_misses_and_bytes(tmp_path: Path) -> None:
    data = content(2 * BLOCK + 512)
    store = FakeStore({"f.bin": data})
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path) as reader:
        await reader.read(blob, 0, len(data))  # three misses, fetched
        await reader.read(blob, 100, 200)  # one memory hit
        await eventually(lambda: all(on_disk(reader, blob, i) for i in range(3)), "kept")
        reader.hot.clear()
        await reader.read(blob, BLOCK, BLOCK + 512)  # two disk hits
        await eventually(lambda: reader.stats.pending_writes == 0, "writes done")
        stats = reader.stats.public()
    assert stats == {
        "reads": 3,
        "bytes_served": len(data) + 200 + BLOCK + 512,
        "memory_hits": 1,
        "disk_hits": 2,
        "misses": 3,
        "fetches": 3,
        "bytes_fetched": len(data),
        "fetches_in_flight": 0,
        "prefetches": 0,
        "pending_writes": 0,
        "writes_skipped": 0,
        "mended": 0,
        "errors": 0,
        "read_aheads": 0,
        # by where each block was: the bytes served add up
        "bytes_from_storage": len(data),
        "bytes_from_memory": 200,
        "bytes_from_disk": BLOCK + 512,
    }


async def test_fetches_from_storage_run_at_most_fetch_limit_at_once(tmp_path: Path) -> None:
    blocks = 12
    data = content(blocks * BLOCK)
    store = FakeStore({"f.bin": data})
    gate = threading.Event()
    lock = threading.Lock()
    running, most = [0], [0]

    def hold(_attempt: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(WAIT_S)
        with lock:
            running[0] -= 1

    store.fail = hold
    blob = pinned("f.bin", len(data))
    async with open_reader(store, tmp_path, fetch_limit=3) as reader:
        for index in range(0, blocks, 2):  # no neighbours: one request each, six at once
            reader.prefetch(blob, range(index, index + 1))
        await eventually(lambda: most[0] == 3, "three fetches under way")
        await trio.sleep(0.2)  # time for a fourth to start, were it allowed
        assert most[0] == 3
        gate.set()
        await eventually(lambda: len(store.calls) == blocks // 2, "all fetched")
    assert most[0] == 3
