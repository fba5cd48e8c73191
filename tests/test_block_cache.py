"""The block caches: the persistent BlockCache on local disk and the in-memory HotBlocks.

Pure logic over a temporary folder: blocks come back intact or not at all, a blob that
changed (another etag) never sees an old block, a read of a range checks only the
sub-blocks it covers and reports damaged ones, a folder of an older format is never read
as this one, a broken cache folder never fails a read, and both caches stay within
their bounds, evicting the least recently used block first.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest

import amlfs.cache.blocks
from amlfs.cache import BlockCache, BlockKey, HotBlocks
from amlfs.cache.blocks import FORMAT_KEY, INLINE_BELOW, SUB_BLOCK

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


# --- reads by range, sub-block checksums ------------------------------------------------

BIG = 4 * SUB_BLOCK + 1000  # a block file of its own: four whole sub-blocks and a short one
assert BIG >= INLINE_BELOW


def flip_in_file(cache: BlockCache, block_key: BlockKey, offset: int) -> None:
    """Flip one byte of a block's file in place, as a bad disk would."""
    with raw_store(cache) as raw, raw.read(block_key.disk_key()) as stored:
        path = stored.name
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_range_of_a_block_comes_back_intact(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    for start, end in [(0, 1), (100, 4196), (SUB_BLOCK - 1, SUB_BLOCK + 1), (4 * SUB_BLOCK, BIG),
                       (0, BIG)]:  # fmt: skip
        cached = cache.read(key(0), BIG, start, end)
        assert cached.data == block(0, BIG)[start:end] and cached.damaged == ()


def test_a_range_read_checks_only_the_sub_blocks_it_covers(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    flip_in_file(cache, key(0), 2 * SUB_BLOCK + 5)  # in the third sub-block

    before = cache.read(key(0), BIG, 100, 4196)  # in the first: neither read nor checked
    assert before.data == block(0, BIG)[100:4196] and before.damaged == ()
    across = cache.read(key(0), BIG, SUB_BLOCK + 10, 3 * SUB_BLOCK + 10)
    assert across.damaged == ((2 * SUB_BLOCK, 3 * SUB_BLOCK),)  # reported, not served whole
    whole = cache.read(key(0), BIG)
    assert whole.damaged == ((2 * SUB_BLOCK, 3 * SUB_BLOCK),)
    assert whole.data[: 2 * SUB_BLOCK] == block(0, BIG)[: 2 * SUB_BLOCK]  # the rest is good
    assert cache.get(key(0), BIG) is None  # the whole-block read drops it
    assert cache.read(key(0), BIG, 100, 4196) is None


def test_neighbouring_damaged_sub_blocks_are_reported_as_one_range(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    for offset in (SUB_BLOCK, 2 * SUB_BLOCK + 1, 4 * SUB_BLOCK + 999):
        flip_in_file(cache, key(0), offset)
    assert cache.read(key(0), BIG).damaged == ((SUB_BLOCK, 3 * SUB_BLOCK), (4 * SUB_BLOCK, BIG))


def test_a_block_stored_again_replaces_a_damaged_one(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    flip_in_file(cache, key(0), 7)
    assert cache.read(key(0), BIG).damaged
    assert cache.put(key(0), block(0, BIG))
    assert cache.read(key(0), BIG) == amlfs.cache.blocks.Cached(block(0, BIG))


def test_an_inline_block_is_read_by_range_too(cache: BlockCache) -> None:
    small = block(1, 3 * SUB_BLOCK + 7)
    assert len(small) < INLINE_BELOW
    cache.put(key(1), small)
    assert cache.read(key(1), len(small), SUB_BLOCK, SUB_BLOCK + 10).data == small[SUB_BLOCK:][:10]


def test_a_block_read_again_is_not_looked_up_in_the_index(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.put(key(0), block(0, BIG))
    lookups = []
    peek = cache._store.peek
    monkeypatch.setattr(cache._store, "peek", lambda name: lookups.append(name) or peek(name))
    for offset in range(0, BIG - 4096, 50_000):
        assert cache.read(key(0), BIG, offset, offset + 4096).data == block(0, BIG)[offset:][:4096]
    assert len(lookups) == 1


def test_reads_do_not_write_and_mark_their_blocks_used_in_one_go(
    cache: BlockCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(3):
        cache.put(key(index), block(index))
    marked: list[set[str]] = []
    mark_used = cache._store.mark_used
    monkeypatch.setattr(cache._store, "mark_used", lambda keys: marked.append(set(keys)) or (
        mark_used(keys)))  # fmt: skip
    with monkeypatch.context() as writes:
        writes.setattr(cache._store, "set", None)  # any write would fail the test
        writes.setattr(cache._store, "get", None)
        for _ in range(5):
            for index in range(3):
                assert cache.get(key(index), BLOCK) == block(index)
    assert marked == []
    cache.flush_counts()  # as a mount does every second
    assert marked == [{key(index).disk_key() for index in range(3)}]


def test_a_remembered_block_removed_meanwhile_is_a_miss(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    assert cache.read(key(0), BIG, 0, 10) is not None  # remembered from now on
    with raw_store(cache) as raw:  # evicted or cleared by another process
        raw.delete(key(0).disk_key())
    assert cache.read(key(0), BIG, 0, 10) is None


def test_a_remembered_block_stored_again_is_read_from_its_new_file(cache: BlockCache) -> None:
    cache.put(key(0), block(0, BIG))
    assert cache.read(key(0), BIG, 0, 10) is not None
    other = BlockCache(cache.directory)  # another process stores it again: a new file
    try:
        other.put(key(0), block(9, BIG))  # (distinct bytes, to tell which file was read)
    finally:
        other.close()
    assert cache.read(key(0), BIG, 0, BIG).data == block(9, BIG)


def test_an_entry_with_a_single_crc32_under_a_blocks_key_is_a_miss(cache: BlockCache) -> None:
    """The first format's tag (one CRC-32 of the whole block), were it ever found where
    this format's entries are, is not taken for this format's checksums."""
    data = block(0, BIG)
    with raw_store(cache) as raw:
        raw.set(key(0).disk_key(), data, tag=zlib.crc32(data))
    assert cache.read(key(0), BIG) is None
    with raw_store(cache) as raw:
        assert key(0).disk_key() not in raw


# --- a folder of the first format ------------------------------------------------------


def write_first_format(folder: Path, blocks: dict[BlockKey, bytes]) -> None:
    """A cache folder exactly as format 1 wrote it: the same diskcache settings, keys
    under "v1|", the block's bytes as the value and its zlib CRC-32 as the tag, and the
    lookup totals beside them."""
    settings = {"eviction_policy": "least-recently-used", "disk_min_file_size": 256 * 1024}
    with diskcache.Cache(str(folder), size_limit=64 * 1024 * 1024, **settings) as old:
        for k, data in blocks.items():
            name = f"v1|{k.source}|{k.etag}|{k.block_size}|{k.index}"
            old.set(name, data, tag=zlib.crc32(data))
        old.incr("amlfs:lookups:hits", 3)


def test_a_folder_of_the_first_format_is_emptied_and_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    old_blocks = {key(0): block(0, BIG), key(1): block(1, 100)}  # a block file, an inline one
    write_first_format(folder, old_blocks)

    cache = BlockCache(folder)
    try:
        assert cache.stats().blocks == 0
        assert list(folder.glob("*/*/*.val")) == []  # its block files are gone too
        assert cache.read(key(0), BIG) is None
        assert cache.read(key(1), 100) is None
        assert cache.put(key(0), block(0, BIG))  # and it serves as this format from now on
        assert cache.get(key(0), BIG) == block(0, BIG)
    finally:
        cache.close()
    reopened = BlockCache(folder)  # not emptied again
    try:
        assert reopened.get(key(0), BIG) == block(0, BIG)
    finally:
        reopened.close()


def test_a_full_folder_whose_format_marker_was_culled_keeps_its_blocks(tmp_path: Path) -> None:
    """Culling takes the oldest entries, the format marker among them: reopened, the
    folder is still recognised by its blocks' keys, not emptied."""
    folder = tmp_path / "blocks"
    cache = BlockCache(folder, size_limit=30 * BIG)
    try:
        for index in range(60):  # twice the limit: the first entries are culled
            cache.put(key(index), block(index, BIG))
        assert FORMAT_KEY not in cache._store  # what culling did to the marker
        kept = [i for i in range(60) if cache.read(key(i), BIG) is not None]
    finally:
        cache.close()
    assert kept
    reopened = BlockCache(folder, size_limit=30 * BIG)
    try:
        assert [i for i in range(60) if reopened.get(key(i), BIG) == block(i, BIG)] == kept
    finally:
        reopened.close()


def test_an_older_daemon_writing_the_first_format_beside_this_one_is_never_read(
    cache: BlockCache,
) -> None:
    """A mount of an older amlfs still running on the same folder adds format-1 entries
    after it was emptied: they live under other keys and are never served."""
    write_first_format(cache.directory, {key(0): block(5, BIG)})
    assert cache.read(key(0), BIG) is None
    cache.put(key(0), block(0, BIG))
    assert cache.get(key(0), BIG) == block(0, BIG)


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
