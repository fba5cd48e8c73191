"""The block caches: the persistent BlockCache on local disk and the in-memory HotBlocks.

Pure logic over a temporary folder: blocks come back intact or not at all, a blob that
changed (another etag) never sees an old block, a damaged block is dropped, a broken
cache folder never fails a read, and both caches stay within their bounds, evicting the
least recently used block first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest

from amlfs.cache import BlockCache, BlockKey, HotBlocks

SOURCE = "az://account@container/data/train.bin"
BLOCK = 64 * 1024  # stored by diskcache as a file of its own (more than 32 KiB)


def key(index: int, *, etag: str = '"0x1"', source: str = SOURCE) -> BlockKey:
    return BlockKey(source, etag, BLOCK, index)


def block(index: int, length: int = BLOCK) -> bytes:
    """Distinct, recognisable bytes for block INDEX."""
    pattern = index.to_bytes(4, "little") + b"amlfs-block"
    return (pattern * (length // len(pattern) + 1))[:length]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlockCache]:
    store = BlockCache(tmp_path / "blocks", 64 * 1024 * 1024)
    yield store
    store.close()


def raw_store(cache: BlockCache) -> diskcache.Cache:
    """The same folder opened with diskcache directly, as another process would."""
    return diskcache.Cache(str(cache.directory))


def damage(cache: BlockCache, block_key: BlockKey) -> None:
    """Flip one data byte of a stored block, its checksum untouched, as a bad disk would."""
    with raw_store(cache) as raw:
        stored, crc = raw.get(block_key.disk_key(), tag=True)
        changed = bytearray(stored)
        changed[1000] ^= 0xFF
        raw.set(block_key.disk_key(), bytes(changed), tag=crc)


# --- BlockCache -------------------------------------------------------------------------


def test_a_stored_block_comes_back_intact(cache: BlockCache) -> None:
    assert cache.put(key(0), block(0))
    assert cache.put(key(1), block(1, 100))  # the short last block of a blob
    assert cache.get(key(0), BLOCK) == block(0)
    assert cache.get(key(1), 100) == block(1, 100)


def test_a_block_never_stored_is_a_miss(cache: BlockCache) -> None:
    assert cache.get(key(7), BLOCK) is None


def test_blocks_persist_for_the_next_user_of_the_folder(tmp_path: Path) -> None:
    first = BlockCache(tmp_path / "blocks")
    first.put(key(0), block(0))
    first.close()
    second = BlockCache(tmp_path / "blocks")
    try:
        assert second.get(key(0), BLOCK) == block(0)
    finally:
        second.close()


def test_another_etag_of_the_same_blob_is_a_miss(cache: BlockCache) -> None:
    cache.put(key(0, etag='"0x1"'), block(0))
    assert cache.get(key(0, etag='"0x2"'), BLOCK) is None
    assert cache.get(key(0, etag='"0x1"'), BLOCK) == block(0)


@pytest.mark.parametrize(
    "other",
    [
        BlockKey(SOURCE + ".other", '"0x1"', BLOCK, 0),  # another blob
        BlockKey(SOURCE, '"0x1"', BLOCK * 2, 0),  # another block size
        BlockKey(SOURCE, '"0x1"', BLOCK, 1),  # another block of the blob
    ],
    ids=["source", "block-size", "index"],
)
def test_every_part_of_the_key_names_the_block(cache: BlockCache, other: BlockKey) -> None:
    cache.put(key(0), block(0))
    assert cache.get(other, BLOCK) is None


def test_a_block_with_damaged_bytes_is_a_miss_and_is_removed(cache: BlockCache) -> None:
    cache.put(key(0), block(0))
    cache.put(key(1), block(1))
    damage(cache, key(0))

    assert cache.get(key(0), BLOCK) is None
    with raw_store(cache) as raw:
        assert key(0).disk_key() not in raw
    assert cache.get(key(1), BLOCK) == block(1)  # the others are untouched


@pytest.mark.parametrize(
    ("change", "keep_checksum"),
    [
        (lambda stored: stored[:-1], True),  # truncated
        (lambda stored: stored + b"\0", True),  # a byte too many
        (lambda stored: stored, False),  # intact bytes, but no checksum to prove it
    ],
    ids=["truncated", "extended", "no-checksum"],
)
def test_a_block_of_the_wrong_length_or_unchecked_is_a_miss_and_is_removed(
    cache: BlockCache, change: Callable[[bytes], object], keep_checksum: bool
) -> None:
    cache.put(key(0), block(0))
    with raw_store(cache) as raw:
        stored, crc = raw.get(key(0).disk_key(), tag=True)
        raw.set(key(0).disk_key(), change(stored), tag=crc if keep_checksum else None)

    assert cache.get(key(0), BLOCK) is None
    with raw_store(cache) as raw:
        assert key(0).disk_key() not in raw


def test_a_foreign_value_under_a_blocks_key_is_a_miss(cache: BlockCache) -> None:
    with raw_store(cache) as raw:
        raw[key(0).disk_key()] = "written by something else"
    assert cache.get(key(0), BLOCK) is None


def test_a_block_asked_for_with_another_length_is_not_served(cache: BlockCache) -> None:
    cache.put(key(0), block(0))
    assert cache.get(key(0), BLOCK - 1) is None
    assert cache.get(key(0), BLOCK) is None  # dropped as damaged: fetched again later


def test_an_unusable_folder_gives_a_cache_that_misses_and_skips_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    regular_file = tmp_path / "not-a-folder"
    regular_file.write_bytes(b"")
    cache = BlockCache(regular_file / "blocks", 1024 * 1024)

    assert cache.put(key(0), block(0)) is False
    assert cache.get(key(0), BLOCK) is None
    cache.discard(key(0))
    cache.close()
    assert "unusable" in caplog.text


def test_an_unusable_folder_raises_when_the_cache_is_required(tmp_path: Path) -> None:
    regular_file = tmp_path / "not-a-folder"
    regular_file.write_bytes(b"")
    with pytest.raises(OSError):
        BlockCache(regular_file / "blocks", required=True)


def test_a_store_broken_underneath_is_a_miss_and_a_skipped_write(cache: BlockCache) -> None:
    cache.put(key(0), block(0))
    cache._store.close()

    class Broken:
        def __getattr__(self, name: str) -> object:
            raise OSError("database disk image is malformed")

    cache._store = Broken()  # type: ignore[assignment]
    assert cache.get(key(0), BLOCK) is None
    assert cache.put(key(1), block(1)) is False
    cache._store = None  # nothing left to close


def test_the_size_limit_bounds_the_volume(tmp_path: Path) -> None:
    limit = 1024 * 1024
    cache = BlockCache(tmp_path / "blocks", limit)
    try:
        for index in range(48):  # three times the limit
            cache.put(key(index), block(index))
            assert cache.stats().size_bytes <= limit + BLOCK
        stats = cache.stats()
        assert stats.limit_bytes == limit
        assert 0 < stats.blocks < limit // BLOCK
        assert cache.get(key(47), BLOCK) == block(47)  # the newest block is kept
        assert cache.get(key(0), BLOCK) is None  # the oldest is gone
    finally:
        cache.close()


def test_the_least_recently_used_block_is_evicted_first(tmp_path: Path) -> None:
    # diskcache evicts ten blocks at a time once over the limit; with 32 blocks fitting,
    # a block read after every write is never among the ten least recently used.
    cache = BlockCache(tmp_path / "blocks", 2 * 1024 * 1024)
    try:
        touched, untouched = key(1000), key(1001)
        cache.put(touched, block(1000))
        cache.put(untouched, block(1001))
        for index in range(80):  # 2.5 times the limit
            cache.put(key(index), block(index))
            assert cache.get(touched, BLOCK) == block(1000)
        assert cache.get(untouched, BLOCK) is None
        assert cache.get(touched, BLOCK) == block(1000)
    finally:
        cache.close()


def test_the_latest_size_limit_wins(tmp_path: Path) -> None:
    BlockCache(tmp_path / "blocks", 5 * 1024 * 1024).close()
    reopened = BlockCache(tmp_path / "blocks")  # as `amlfs cache stats` opens it
    try:
        assert reopened.stats().limit_bytes == 5 * 1024 * 1024
    finally:
        reopened.close()


def test_clear_empties_the_cache(cache: BlockCache) -> None:
    for index in range(5):
        cache.put(key(index), block(index))
    assert cache.clear() == 5
    assert cache.stats().blocks == 0
    assert all(cache.get(key(index), BLOCK) is None for index in range(5))


def test_stats_count_blocks_hits_and_misses(cache: BlockCache) -> None:
    cache.put(key(0), block(0))
    cache.put(key(1), block(1))
    cache.get(key(0), BLOCK)
    cache.get(key(0), BLOCK)
    cache.get(key(2), BLOCK)

    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 1)
    assert stats.hit_ratio == pytest.approx(2 / 3)
    assert stats.blocks == 2
    assert stats.size_bytes >= 2 * BLOCK
    assert stats.directory == str(cache.directory)


def test_an_unused_cache_has_no_hit_ratio(cache: BlockCache) -> None:
    assert cache.stats().hit_ratio is None


def test_a_damaged_block_counts_as_a_miss_in_stats(cache: BlockCache) -> None:
    cache.put(key(0), block(0))
    damage(cache, key(0))
    before = cache.stats()
    assert cache.get(key(0), BLOCK) is None
    after = cache.stats()
    assert (after.hits - before.hits, after.misses - before.misses) == (0, 1)


# --- HotBlocks --------------------------------------------------------------------------


def test_hot_blocks_keep_what_was_put() -> None:
    hot = HotBlocks(4 * BLOCK)
    hot.put(key(0), block(0))
    assert hot.get(key(0)) == block(0)
    assert hot.get(key(1)) is None
    assert len(hot) == 1


def test_hot_blocks_stay_within_their_bytes() -> None:
    hot = HotBlocks(3 * BLOCK + BLOCK // 2)
    for index in range(10):
        hot.put(key(index), block(index))
        assert sum(len(b) for i in range(10) if (b := hot.get(key(i))) is not None) <= (
            hot.limit_bytes
        )
    assert len(hot) == 3
    assert [index for index in range(10) if hot.get(key(index)) is not None] == [7, 8, 9]


def test_hot_blocks_evict_the_least_recently_used_first() -> None:
    hot = HotBlocks(3 * BLOCK)
    for index in range(3):
        hot.put(key(index), block(index))
    assert hot.get(key(0)) is not None  # 0 is now the most recently used
    hot.put(key(3), block(3))
    assert hot.get(key(1)) is None
    assert hot.get(key(0)) == block(0)
    assert hot.get(key(2)) == block(2)
    assert hot.get(key(3)) == block(3)


def test_hot_blocks_replacing_a_block_counts_its_bytes_once() -> None:
    hot = HotBlocks(2 * BLOCK)
    for _ in range(5):
        hot.put(key(0), block(0))
    hot.put(key(1), block(1))
    assert hot.get(key(0)) == block(0)
    assert hot.get(key(1)) == block(1)


def test_a_block_larger_than_hot_blocks_is_not_kept() -> None:
    hot = HotBlocks(BLOCK - 1)
    hot.put(key(0), block(0))
    assert hot.get(key(0)) is None
    assert len(hot) == 0


def test_an_oversized_block_does_not_evict_the_others() -> None:
    hot = HotBlocks(BLOCK)
    hot.put(key(0), block(0, BLOCK // 2))
    hot.put(key(1), block(1, 2 * BLOCK))
    assert hot.get(key(0)) == block(0, BLOCK // 2)


def test_clearing_hot_blocks_frees_their_bytes() -> None:
    hot = HotBlocks(2 * BLOCK)
    hot.put(key(0), block(0))
    hot.put(key(1), block(1))
    hot.clear()
    assert len(hot) == 0
    hot.put(key(2), block(2))
    hot.put(key(3), block(3))
    assert hot.get(key(2)) == block(2) and hot.get(key(3)) == block(3)
