"""The persistent block cache: fixed-size blocks of pinned blobs in a diskcache store.

A block is named by what makes it immutable: the blob's account-qualified URL, its
etag, the block size and the block's index, under a cache-format prefix. A blob that
changed has a new etag, so an old block can never be served for it, and nothing ever
needs invalidating. The store is shared by every mount using the same folder (diskcache
is safe across processes) and bounded in bytes, evicting the least recently used block.

Layout (format 2): an entry's value is the block's bytes exactly, in a file of its own
from INLINE_BELOW up (so that a read can seek into it), inline in the index database
below that; its tag is the block's length and the CRC32C of each SUB_BLOCK of it. A read
of a range reads and checks only the sub-blocks it covers; a sub-block that fails its
check is reported with the others' bytes, so that the reader fetches only it again. A
folder of another format is emptied when opened, never read as this one.

Where a block's file is and what its checksums are is remembered for the blocks read
lately, so that reading one block again and again does not query the index each time.
diskcache never rewrites a file: a block stored again, or evicted, gets a new random
name or none, and the old file is removed. A remembered file that is gone is looked up
again; one removed while being read still holds the bytes it was written with. Lookups
do not write: the blocks read are marked used in one transaction, before the next write
(which is when the store evicts) and every second a mount reports its figures.

Any failure of the store itself (disk full, a damaged database, a file removed
underneath) is a miss or a skipped write, never an error for the reader. Methods block
on disk I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from amlfs.cache.direct import DirectFiles
from amlfs.cache.store import BlockFile, BlockStore

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the key or the stored layout changes
FORMAT_KEY = "amlfs:format"  # which format the entries of the folder are in
WARN_EVERY_S = 60.0  # a failing disk is reported at most once a minute
HITS, MISSES = "amlfs:lookups:hits", "amlfs:lookups:misses"  # totals kept in the store
# Blocks smaller than this (whole small files) live inside the index database: no file to
# create, name and remove for each.
INLINE_BELOW = 256 * 1024
SUB_BLOCK = 64 * 1024  # the unit a read checks: one CRC32C each
REMEMBERED = 1024  # block files whose place and checksums are kept in memory
OPEN_TRIES = 10  # another process may remove an empty folder of block files meanwhile
# The index's write-ahead log: SQLite checkpoints it every 1,000 pages (4 KiB each) and
# keeps the file at its high-water mark unless told to cut it back; cut back to this.
WAL_LIMIT = 4 * 1024 * 1024
# Beyond its bytes, a block file takes up to a filesystem block of rounding and, at
# worst, two folders of diskcache's two-level layout of its own: the limit does not count
# these.
FILE_OVERHEAD = 3 * 4096


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


@dataclass(frozen=True)
class Cached:
    """What the cache has of a range of a block: its bytes, and the ranges of them (block
    offsets, whole sub-blocks) that failed their checksum and must not be served."""

    data: bytes
    damaged: tuple[tuple[int, int], ...] = ()


def checksums(data: bytes) -> tuple[int, ...]:
    """The CRC32C of each SUB_BLOCK of DATA."""
    if len(data) <= SUB_BLOCK:
        return (google_crc32c.value(data),)
    return tuple(
        google_crc32c.value(data[at : at + SUB_BLOCK]) for at in range(0, len(data), SUB_BLOCK)
    )


def sub_blocks(length: int) -> int:
    return max(1, -(-length // SUB_BLOCK))


def pack_tag(length: int, crcs: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(crcs) + 1}I", length, *crcs)


def unpack_tag(tag: object, length: int) -> tuple[int, ...] | None:
    """The sub-block CRCs of a block of LENGTH bytes, or None if TAG is not a tag of this
    format for such a block (another format's, damaged, or missing)."""
    count = sub_blocks(length)
    if not isinstance(tag, bytes) or len(tag) != 4 * (count + 1):
        return None
    stored_length, *crcs = struct.unpack(f"<{count + 1}I", tag)
    return tuple(crcs) if stored_length == length else None


@dataclass(frozen=True)
class _Located:
    """Where a block's bytes are (a file, or inline bytes) and its sub-block CRCs."""

    crcs: tuple[int, ...]
    path: str | None = None
    inline: bytes | None = None


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
        self._used: set[str] = set()  # blocks read, not yet marked used in the store
        self._counts_lock = threading.Lock()  # for both
        self._located: OrderedDict[str, _Located] = OrderedDict()  # recently read files
        self._located_lock = threading.Lock()
        self._files = DirectFiles()  # block files past the page cache (see cache.direct)
        settings = {"eviction_policy": "least-recently-used", "disk_min_file_size": INLINE_BELOW,
                    "sqlite_journal_size_limit": WAL_LIMIT}  # fmt: skip
        if size_limit is not None:
            settings["size_limit"] = size_limit  # kept by the store: the latest limit wins
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._store: BlockStore | None = BlockStore(str(directory), timeout=10, **settings)
            self._adopt_format()
        except Exception as error:
            if required:
                raise
            log.warning("block cache %s unusable (%s); serving without it", directory, error)
            self._store = None

    def _adopt_format(self) -> None:
        """Empty a folder whose entries are of another format (or of none recorded: the
        first format recorded none), then record this one. In one transaction, so that
        two processes opening an old folder at once do not empty it after each other."""
        with self._store.transact(retry=True):
            found = self._store.get(FORMAT_KEY)
            if found == CACHE_FORMAT:
                return
            if found is None and self._holds_this_format():
                # The marker is an entry like any other, and culling may take it once
                # the folder is full: the entries say which format the folder is in.
                self._store.set(FORMAT_KEY, CACHE_FORMAT, retry=True)
                return
            if len(self._store):
                log.info("block cache %s is of format %s; emptying it for format %d",
                         self.directory, found or 1, CACHE_FORMAT)  # fmt: skip
                self._store.clear(retry=True)
            self._store.set(FORMAT_KEY, CACHE_FORMAT, retry=True)

    def _holds_this_format(self) -> bool:
        """Whether any entry is a block of this format (its key starts `vN|`)."""
        return self._store.holds_key_starting(f"v{CACHE_FORMAT}|")

    def close(self) -> None:
        if self._store is not None:
            self.flush_counts()
            self._store.close()

    def get(self, key: BlockKey, length: int) -> bytes | None:
        """The whole block if stored intact with the expected length; None otherwise (a
        damaged block is dropped)."""
        cached = self.read(key, length)
        if cached is not None and cached.damaged:
            self.discard(key)
            return None
        return None if cached is None else cached.data

    def read(self, key: BlockKey, length: int, start: int = 0, end: int | None = None
             ) -> Cached | None:  # fmt: skip
        """Bytes [START, END) of a block of LENGTH bytes (all of it by default), reading
        and checking only the sub-blocks they lie in; None if the block is not stored, or
        not as a block of that length. Damaged sub-blocks are reported, not served."""
        end = length if end is None else end
        first, last = start // SUB_BLOCK, (end - 1) // SUB_BLOCK
        lo, hi = first * SUB_BLOCK, min(length, (last + 1) * SUB_BLOCK)
        chunk = located = None
        try:
            for remembered in (True, False):  # a remembered file may be gone: look again
                located = self._locate(key, length, remembered)
                if located is None:
                    break
                chunk = self._bytes(located, length, lo, hi)
                if chunk is not None:
                    break
                self._forget(key)
        except OSError as error:  # a failing disk is a miss
            self._warn("block cache read failed (%s); fetching from storage instead", error)
            self._count(MISSES, key)
            return None
        if chunk is None:
            if located is not None:  # stored, but unreadable or of another length
                log.warning("dropping an unreadable cached block of %s (block %d)",
                            key.source, key.index)  # fmt: skip
                self.discard(key)
            self._count(MISSES, key)
            return None
        damaged = []
        for index in range(first, last + 1):
            at = index * SUB_BLOCK
            piece = chunk[at - lo : min(hi, at + SUB_BLOCK) - lo]
            if google_crc32c.value(piece) != located.crcs[index]:
                if damaged and damaged[-1][1] == at:
                    damaged[-1] = (damaged[-1][0], at + len(piece))
                else:
                    damaged.append((at, at + len(piece)))
        self._count(MISSES if damaged else HITS, key)
        if start == lo and end == hi:
            return Cached(chunk, tuple(damaged))
        return Cached(chunk[start - lo : end - lo], tuple(damaged))

    def _locate(self, key: BlockKey, length: int, remembered: bool) -> _Located | None:
        """Where the block is and its CRCs: REMEMBERED if allowed, else from the index.
        None if not stored, or not as a block of LENGTH bytes of this format (such an
        entry is dropped)."""
        name = key.disk_key()
        if remembered:
            with self._located_lock:
                located = self._located.get(name)
                if located is not None:
                    self._located.move_to_end(name)
                    return located
        if self._store is None:
            return None
        try:
            found = self._store.peek(name)  # a plain read: no lock needed
        except Exception as error:  # a damaged store is a miss
            self._warn("block cache read failed (%s); fetching from storage instead", error)
            return None
        if found is None:
            return None
        stored, tag = found
        crcs = unpack_tag(tag, length)
        if crcs is None or not isinstance(stored, (bytes, BlockFile)):
            log.warning("dropping a cached block of %s (block %d) without valid checksums",
                        key.source, key.index)  # fmt: skip
            self.discard(key)
            return None
        if isinstance(stored, bytes):
            return _Located(crcs, inline=stored)
        located = _Located(crcs, path=stored.path)
        with self._located_lock:
            self._located[name] = located
            self._located.move_to_end(name)
            while len(self._located) > REMEMBERED:
                self._located.popitem(last=False)
        return located

    @staticmethod
    def _bytes(located: _Located, length: int, lo: int, hi: int) -> bytes | None:
        """Bytes [LO, HI) of the block; None if its file is gone or not LENGTH long."""
        if located.inline is not None:
            return located.inline[lo:hi] if len(located.inline) == length else None
        try:
            fd = os.open(located.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size != length:
                return None
            chunk = os.pread(fd, hi - lo, lo)
            return chunk if len(chunk) == hi - lo else None
        finally:
            os.close(fd)

    def _forget(self, key: BlockKey) -> None:
        with self._located_lock:
            self._located.pop(key.disk_key(), None)

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
        """Store a block (replacing what was stored under KEY); False (and a warning,
        rate-limited) when the disk refuses."""
        if self._store is None:
            return False
        written = None
        try:
            tag = pack_tag(len(data), checksums(data))
            if len(data) >= INLINE_BELOW:
                written = self._write_file(data)
            self._forget(key)
            # One transaction: the blocks read marked used, then the block stored (and the
            # least recently used evicted, if the store is over its limit).
            with self._index_lock, self._store.transact():
                self._mark_used()
                self._store.set(key.disk_key(), written or data, tag=tag)
            return True
        except Exception as error:  # full disk, read-only disk, damaged database
            if written is not None:
                self._store.disk.remove(written.name)
            self._warn("block cache write failed (%s); serving without caching", error)
            return False

    def _write_file(self, data: bytes) -> BlockFile:
        """A new block file holding DATA (past the page cache where the disk allows:
        amlfs.cache.direct), named as diskcache names its files (random, never reused)."""
        name, path = self._store.disk.filename()
        for attempt in range(1, OPEN_TRIES + 1):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                self._files.create(path, data)
                break
            except FileNotFoundError:  # its folder was removed as empty meanwhile
                if attempt == OPEN_TRIES:
                    raise
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(path)
                raise
        return BlockFile(name, path, len(data))

    def discard(self, key: BlockKey) -> None:
        self._forget(key)
        if self._store is not None:
            with contextlib.suppress(Exception), self._index_lock:
                self._store.delete(key.disk_key())

    def clear(self) -> int:
        """Remove every block (safe while mounts read: they see misses). Blocks removed."""
        blocks = self._block_count()
        self._store.clear()
        self._store.set(FORMAT_KEY, CACHE_FORMAT)
        with self._located_lock:
            self._located.clear()
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

    def usage(self) -> tuple[int, int, int] | None:
        """Bytes stored, the bound and the blocks, without counting or marking anything
        (for metrics, from any thread); None when the cache is off or cannot say."""
        if self._store is None:
            return None
        try:
            return self._store.volume(), self._store.size_limit, self._block_count()
        except Exception:
            return None

    @property
    def evictions(self) -> int:
        """Entries this process's writes evicted: blocks (and, rarely, the totals and the
        format kept beside them, which diskcache evicts as any other entry)."""
        return self._store.evicted if self._store is not None else 0

    def _block_count(self) -> int:
        """Entries of the store, less the totals and the format kept beside the blocks."""
        return len(self._store) - sum(key in self._store for key in (HITS, MISSES, FORMAT_KEY))

    def _count(self, which: str, key: BlockKey) -> None:
        with self._counts_lock:
            self._counts[which] += 1
            if which == HITS:
                self._used.add(key.disk_key())

    def flush_counts(self) -> None:
        """Add this process's lookups to the totals every process shares, and mark the
        blocks read as used, in the store. A mount does so every second; stats() and
        close() do too."""
        if self._store is None:
            return
        with self._counts_lock:
            counts, self._counts = self._counts, {HITS: 0, MISSES: 0}
        with self._index_lock, contextlib.suppress(Exception), self._store.transact():
            self._mark_used()  # counting must never fail a read: errors are ignored
            for name, delta in counts.items():
                if delta:
                    self._store.incr(name, delta)

    def _mark_used(self) -> None:
        """Mark the blocks read since last time as used (least recently used goes first).
        Called holding the index lock, in a transaction."""
        with self._counts_lock:
            used, self._used = self._used, set()
        if used:
            self._store.mark_used(used)

    def _warn(self, message: str, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(message, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._last_warning[message] = now
            log.warning(message, error)


def on_disk_margin(limit: int, writing: int, block_size: int) -> int:
    """How much more than LIMIT a cache folder may take on disk (as du counts it) while
    WRITING blocks of up to BLOCK_SIZE are being written into it at once, by all the
    processes sharing it (a mount writes up to reader.WRITERS at once): those blocks, the
    index's write-ahead log, and the filesystem's own share of each block file (docs/cache.md,
    "The bound on disk")."""
    files = limit // INLINE_BELOW + writing
    return writing * block_size + WAL_LIMIT + files * FILE_OVERHEAD
