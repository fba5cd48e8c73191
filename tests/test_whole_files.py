"""BlockReader on files pinned by content: each is fetched whole and checked before any
byte of it is served; readers of it at once share one fetch; a checked file's blocks land
in the disk cache and are served from there; a file that differs is never served nor
cached, and is never read by range.

Pure logic with an in-memory store and a real disk cache.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from amlfs.cache import BlockKey
from amlfs.errors import SourceChanged
from amlfs.reader import PinnedBlob, ReadFailed
from amlfs.registry import pins
from tests.support.waiting import WAIT_S, eventually
from tests.test_reader import BLOCK, content, open_reader


class FakeWeb:
    """Files in memory behind a store that cannot read ranges of them conditionally:
    Store.download_pinned's contract for pins by content; counts whole fetches."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.downloads: list[str] = []
        self.gate: threading.Event | None = None  # when set, fetches wait for it

    def read_pinned(self, relative: str, start: int, end: int, etag: str) -> bytes:
        raise AssertionError(f"{relative} read by range")

    def download_pinned(self, relative: str, etag: str, local: Path) -> None:
        self.downloads.append(relative)
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        data = self.files[relative]
        local.write_bytes(data)
        if hashlib.md5(data).digest() != pins.pinned_md5(etag):
            raise SourceChanged(f"{relative} changed since it was pinned (its MD5 differs)")


def by_content(relative: str, data: bytes) -> PinnedBlob:
    etag = pins.content_etag(hashlib.md5(data).digest())
    return PinnedBlob(
        f"http://@127.0.0.1/{relative}", relative, len(data), etag, f"ds:1 {relative}"
    )


async def test_readers_of_several_blocks_at_once_share_one_whole_fetch(tmp_path: Path) -> None:
    data = content(5 * BLOCK + 17)
    store = FakeWeb({"f.bin": data})
    store.gate = threading.Event()
    blob = by_content("f.bin", data)
    results: dict[int, bytes] = {}

    async def read_one(offset: int) -> None:
        results[offset] = bytes(await reader.read(blob, offset, 300))

    async with open_reader(store, tmp_path) as reader, trio.open_nursery() as readers:
        for offset in range(0, len(data), 700):
            readers.start_soon(read_one, offset)
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
    assert store.downloads == ["f.bin"]
    assert results == {offset: data[offset : offset + 300] for offset in results}


async def test_a_checked_file_is_cached_block_by_block_and_served_without_storage(
    tmp_path: Path,
) -> None:
    data = content(3 * BLOCK + 5)
    store = FakeWeb({"f.bin": data})
    blob = by_content("f.bin", data)
    async with open_reader(store, tmp_path) as reader:
        assert bytes(await reader.read(blob, BLOCK + 3, 10)) == data[BLOCK + 3 : BLOCK + 13]
        keys = [BlockKey(blob.source, blob.etag, BLOCK, i) for i in range(4)]
        await eventually(lambda: all(reader.cache.contains(k) for k in keys), "blocks cached")
    store.files["f.bin"] = b"rewritten at the source"
    async with open_reader(store, tmp_path) as later:  # a new daemon: the disk cache only
        assert bytes(await later.read(blob, 0, len(data))) == data
    assert store.downloads == ["f.bin"]


async def test_a_file_that_differs_from_its_pin_fails_every_read_and_nothing_is_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pinned_data = content(2 * BLOCK)
    store = FakeWeb({"f.bin": content(2 * BLOCK, seed=1)})  # same size, other bytes
    blob = by_content("f.bin", pinned_data)
    async with open_reader(store, tmp_path) as reader:
        for offset in (0, BLOCK):
            with pytest.raises(ReadFailed, match="changed"):
                await reader.read(blob, offset, 10)
        keys = [BlockKey(blob.source, blob.etag, BLOCK, i) for i in range(2)]
        assert not any(reader.cache.contains(k) for k in keys)
        assert reader.hot.get(keys[0]) is None
    reported = [r for r in caplog.records if "changed since its version" in r.getMessage()]
    assert len(reported) == 1 and "ds:1 f.bin" in reported[0].getMessage()


async def test_a_file_shorter_than_its_pin_is_refused(tmp_path: Path) -> None:
    data = content(BLOCK)
    store = FakeWeb({"f.bin": data[:-1]})
    blob = by_content("f.bin", data)
    store.download_pinned = lambda relative, etag, local: local.write_bytes(data[:-1])
    async with open_reader(store, tmp_path) as reader:
        with pytest.raises(ReadFailed, match="bytes, pinned"):
            await reader.read(blob, 0, 10)


async def test_a_whole_fetch_past_its_bound_fails_the_read_and_a_later_read_fetches_again(
    tmp_path: Path,
) -> None:
    data = content(2 * BLOCK)
    store = FakeWeb({"f.bin": data})
    store.gate = threading.Event()  # storage holds the first fetch past its bound
    blob = by_content("f.bin", data)
    async with open_reader(store, tmp_path, io_timeout=0.2) as reader:
        with pytest.raises(ReadFailed):
            await reader.read(blob, 0, 10)
        await eventually(lambda: reader.stats.fetches_in_flight == 0, "the fetch given up")
        store.gate.set()
        assert bytes(await reader.read(blob, BLOCK, 10)) == data[BLOCK : BLOCK + 10]
    assert store.downloads == ["f.bin", "f.bin"]


async def test_a_reader_that_looked_while_a_fetch_ended_takes_its_blocks_from_the_cache(
    tmp_path: Path,
) -> None:
    """A reader that found no block in the cache, then reached its turn to fetch after
    another reader's whole fetch had ended, fetches nothing again: that fetch wrote every
    block to the cache before it let go."""
    data = content(3 * BLOCK + 5)
    store = FakeWeb({"f.bin": data})
    blob = by_content("f.bin", data)
    landed: dict[int, bytes] = {}
    async with open_reader(store, tmp_path) as reader:
        assert bytes(await reader.read(blob, 0, 100)) == data[:100]
        await eventually(lambda: not reader._wholes._fetches, "the fetch let go")
        # The late reader's turn, as BlockReader._load gives it (its look came first).
        await reader._wholes.load(blob, [2], landed.__setitem__, lambda: True)
    assert store.downloads == ["f.bin"]
    assert bytes(landed[2]) == data[2 * BLOCK : 3 * BLOCK]
