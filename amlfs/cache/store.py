"""diskcache, extended for blocks: block files written by us, lookups that do not write.

Two costs of diskcache's own calls, measured on the block cache:
- `set` writes a bytes value to its file by iterating a BytesIO, line by line: about
  16,000 writes for a 4 MiB block of random bytes. A block file is now written by the
  cache in one call, before the index is taken, and handed to `set` as a BlockFile.
- `get`, under the least-recently-used policy, updates the entry's access time in a
  write transaction on every lookup: a lookup of a 100 KiB block took 0.23-0.30 ms,
  against 0.03 ms without it. `peek` reads without writing, and `mark_used` writes the access
  times of many lookups in one transaction, so eviction stays least recently used.

`peek` and `mark_used` use diskcache's table and helpers (`_sql`, `_transact`, `_disk`),
which are not its public API: pyproject pins diskcache 5, and tests/test_block_cache.py
covers both (a stored block comes back, the least recently used block goes first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN


@dataclass(frozen=True)
class BlockFile:
    """A block's file in the store: NAME relative to the folder, its full PATH, SIZE."""

    name: str
    path: str
    size: int = 0


class BlockDisk(diskcache.Disk):
    """diskcache's serialisation, with two changes for block files: a BlockFile written
    beforehand becomes an entry's file, and a lookup returns a BlockFile (the file's
    path) instead of opening it, so that a read opens it and reads only what it needs."""

    def __init__(self, directory: str, **settings: object):
        super().__init__(directory, **settings)
        self.folder = directory

    def store(self, value: object, read: bool, key: object = UNKNOWN) -> tuple:
        if isinstance(value, BlockFile):
            return value.size, MODE_BINARY, value.name, None
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str, value: object, read: bool) -> object:
        if mode == MODE_BINARY and read:
            return BlockFile(filename, os.path.join(self.folder, filename))
        return super().fetch(mode, filename, value, read)


class BlockStore(diskcache.Cache):
    """diskcache's Cache (with BlockDisk), plus lookups that do not write."""

    def __init__(self, directory: str, **settings: object):
        super().__init__(directory, disk=BlockDisk, **settings)
        self.evicted = 0  # entries this process's writes evicted (for metrics)

    def _cull(self, now: float, sql: object, cleanup: Callable[[str | None], None],
              limit: int | None = None) -> None:  # fmt: skip
        """diskcache's eviction after a write, counting the entries it removes: it calls
        CLEANUP once for each (with its file's name, or None), so counting costs no query."""

        def counted(filename: str | None) -> None:
            self.evicted += 1
            cleanup(filename)

        super()._cull(now, sql, counted, limit)

    def holds_key_starting(self, prefix: str) -> bool:
        """Whether any entry's key (a str) starts with PREFIX: a range over diskcache's
        index of keys, one probe, no lock."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        row = self._sql("SELECT 1 FROM Cache WHERE key >= ? AND key < ? LIMIT 1",
                        (prefix, upper)).fetchone()  # fmt: skip
        return row is not None

    def peek(self, key: str) -> tuple[object, object] | None:
        """The value (a BlockFile for a file) and tag stored under KEY, without marking
        it used; None if nothing is. A plain read: no transaction, no lock."""
        db_key, raw = self._disk.put(key)
        rows = self._sql(
            "SELECT mode, filename, value, tag FROM Cache WHERE key = ? AND raw = ?",
            (db_key, raw),
        ).fetchall()
        if not rows:
            return None
        ((mode, filename, value, tag),) = rows
        return self._disk.fetch(mode, filename, value, True), tag

    def mark_used(self, keys: Iterable[str]) -> None:
        """Record KEYS as used now, in one transaction (what `get` does for each key)."""
        now = time.time()
        with self._transact(retry=True) as (sql, _):
            for key in keys:
                db_key, raw = self._disk.put(key)
                sql(
                    "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = ?",
                    (now, db_key, raw),
                )
