"""The persistent block cache: fixed-size blocks of pinned blobs in a diskcache store.

A block is named by what makes it immutable: the blob's account-qualified URL, its
etag, the block size and the block's index, under a cache-format prefix. A blob that
changed has a new etag, so an old block can never be served for it, and nothing ever
needs invalidating. The store is shared by every mount using the same folder (diskcache
is safe across processes) and bounded in bytes, evicting the least recently used block.

Each stored block carries its length and CRC-32; a block that fails the check is
dropped and reported as a miss. Any failure of the store itself (disk full, a damaged
database, a file removed underneath) is a miss or a skipped write, never an error for
the reader. Methods block on disk I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import diskcache

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the key or the stored layout changes
WARN_EVERY_S = 60.0  # a failing disk is reported at most once a minute
HITS, MISSES = "amlfs:lookups:hits", "amlfs:lookups:misses"  # totals kept in the store
# Blocks smaller than this (whole small files) live inside the index database: no file to
# create, name and remove for each, which is most of the cost of caching a small file.
INLINE_BELOW = 256 * 1024
COUNT_FLUSH_EVERY = 64  # lookups counted in memory before the totals are updated


@dataclass(frozen=True)
class BlockKey:
    source: str  # account-qualified URL of the blob
    etag: str
    block_size: int
    index: int

    def disk_key(self) -> str:
        return f"v{CACHE_FORMAT}|{self.source}|{self.etag}|{self.block_size}|{self.index}"


@dataclass(frozen=True)
class CacheStats:
    directory: str
    size_bytes: int
    limit_bytes: int
    blocks: int
    hits: int
    misses: int

    @property
    def hit_ratio(self) -> float | None:
        looked = self.hits + self.misses
        return self.hits / looked if looked else None


class BlockCache:
    def __init__(self, directory: Path, size_limit: int | None = None, *, required: bool = False):
        """Open (or create) the store. If it cannot be opened (a full or read-only disk),
        the cache is off: every get misses and every put is skipped, unless REQUIRED."""
        self.directory = directory
        self._last_warning: dict[str, float] = {}
        # Our threads take turns in the SQLite index (each turn is short: block files are
        # read and written outside it), so they never sleep in SQLite's busy handler
        # waiting for each other.
        self._index_lock = threading.Lock()
        self._counts = {HITS: 0, MISSES: 0}  # not yet added to the store's totals
        settings = {"eviction_policy": "least-recently-used", "disk_min_file_size": INLINE_BELOW}
        if size_limit is not None:
            settings["size_limit"] = size_limit  # kept by the store: the latest limit wins
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._store: diskcache.Cache | None = diskcache.Cache(
                str(directory), timeout=10, **settings
            )
        except Exception as error:
            if required:
                raise
            log.warning("block cache %s unusable (%s); serving without it", directory, error)
            self._store = None

    def close(self) -> None:
        if self._store is not None:
            self.flush_counts()
            self._store.close()

    def get(self, key: BlockKey, length: int) -> bytes | None:
        """The block's bytes if stored intact with the expected length; None otherwise."""
        if self._store is None:
            return None
        try:
            with self._index_lock:
                stored, crc = self._store.get(key.disk_key(), read=True, tag=True)
            if stored is not None and not isinstance(stored, bytes):
                with stored:  # a block file: read outside the lock, in parallel with others
                    stored = stored.read()
        except Exception as error:  # a damaged store is a miss
            self._warn("block cache read failed (%s); fetching from storage instead", error)
            stored = crc = None
        data = None if stored is None else self._check(stored, crc, length)
        if stored is not None and data is None:
            log.warning("dropping a damaged cached block of %s (block %d)", key.source, key.index)
            self.discard(key)
        self._count(HITS if data is not None else MISSES)
        return data

    def contains(self, key: BlockKey) -> bool:
        """Whether a block is stored (not checked, not counted as a lookup)."""
        if self._store is None:
            return False
        try:
            with self._index_lock:
                return key.disk_key() in self._store
        except Exception:
            return False

    def put(self, key: BlockKey, data: bytes) -> bool:
        """Store a block; False (and a warning, rate-limited) when the disk refuses."""
        if self._store is None:
            return False
        try:
            crc = zlib.crc32(data)
            with self._index_lock:
                self._store.set(key.disk_key(), data, tag=crc)
            return True
        except Exception as error:  # full disk, read-only disk, damaged database
            self._warn("block cache write failed (%s); serving without caching", error)
            return False

    def discard(self, key: BlockKey) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.delete(key.disk_key())

    def clear(self) -> int:
        """Remove every block (safe while mounts read: they see misses). Blocks removed."""
        blocks = self._block_count()
        self._store.clear()
        return blocks

    def stats(self) -> CacheStats:
        self.flush_counts()
        hits, misses = self._store.get(HITS, 0), self._store.get(MISSES, 0)
        return CacheStats(
            directory=str(self.directory),
            size_bytes=self._store.volume(),
            limit_bytes=self._store.size_limit,
            blocks=self._block_count(),
            hits=hits,
            misses=misses,
        )

    def _block_count(self) -> int:
        """Entries of the store, less the lookup totals kept beside the blocks."""
        return len(self._store) - sum(key in self._store for key in (HITS, MISSES))

    def _count(self, which: str) -> None:
        with self._index_lock:
            self._counts[which] += 1
            due = sum(self._counts.values()) >= COUNT_FLUSH_EVERY
        if due:
            self.flush_counts()

    def flush_counts(self) -> None:
        """Add this process's lookups to the totals every process shares (in the store)."""
        with self._index_lock:
            counts, self._counts = self._counts, {HITS: 0, MISSES: 0}
            for name, delta in counts.items():
                if delta:
                    with contextlib.suppress(Exception):  # counting must never fail a read
                        self._store.incr(name, delta)

    @staticmethod
    def _check(stored: bytes, crc: object, length: int) -> bytes | None:
        """The block if it has the expected length and its CRC-32 (kept as the entry's
        tag, so that the data is stored and read back without a header to cut off)."""
        if not isinstance(stored, bytes) or len(stored) != length or not isinstance(crc, int):
            return None
        return stored if zlib.crc32(stored) == crc else None

    def _warn(self, message: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(message, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._last_warning[message] = now
            log.warning(message, error)
