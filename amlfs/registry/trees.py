"""Queries over whole version trees, for profiles and diffs: SQLite walks the trees.

Both walk a version from its root through `entries_by_parent`, so their cost follows the
size of the versions asked about, never that of the whole registry, and rows that need
no Python (unchanged files, the aggregated bulk of a profile) stay inside SQLite.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.store import Registry

# Every file of the version whose root is ?, with its top-level folder ('.' at the root).
_FILES_OF = """
WITH RECURSIVE walk(id, is_dir, top) AS (
    SELECT ?, 1, NULL
    UNION ALL
    SELECT e.id, e.is_dir, COALESCE(w.top, CASE WHEN e.is_dir THEN e.name ELSE '.' END)
    FROM walk w JOIN entries e ON e.parent_id = w.id WHERE w.is_dir
)
SELECT e.id AS id, w.top AS top, e.name AS name, e.size AS size, e.md5 AS md5,
       e.last_modified AS last_modified
FROM walk w JOIN entries e ON e.id = w.id WHERE w.is_dir = 0
"""

# The files of version A (root ?) and of version B (root ?) whose paths or contents
# differ. Walking both trees at once, A's entries are matched by name to B's in the
# folder of the same path; a pair of files with the same content is dropped inside the
# walk. Same content: equal sizes, and equal MD5s where both files have one, else equal
# etags (docs/semantics.md). Where a path is a file on one side and a folder on the
# other, the file is on its own and the folder's files are walked on their own.
_DIFFERING = """
WITH RECURSIVE walk(a, b, a_dir, b_dir, path) AS (
    SELECT ?, ?, 1, 1, ''
    UNION ALL
    -- every child of a folder of A, with B's entry of the same name if there is one
    SELECT x.id, y.id, x.is_dir, y.is_dir,
           CASE w.path WHEN '' THEN x.name ELSE w.path || '/' || x.name END
    FROM walk w JOIN entries x ON x.parent_id = w.a
    LEFT JOIN entries y ON y.parent_id = w.b AND y.name = x.name
    WHERE w.a_dir AND (y.id IS NULL OR x.is_dir OR y.is_dir OR NOT (
        x.size = y.size AND CASE WHEN x.md5 IS NOT NULL AND y.md5 IS NOT NULL
                                 THEN x.md5 = y.md5 ELSE x.etag = y.etag END))
    UNION ALL
    -- the children of a folder of B that A has no entry of the same name for
    SELECT NULL, y.id, NULL, y.is_dir,
           CASE w.path WHEN '' THEN y.name ELSE w.path || '/' || y.name END
    FROM walk w JOIN entries y ON y.parent_id = w.b
    WHERE w.b_dir AND NOT EXISTS (
        SELECT 1 FROM entries x WHERE x.parent_id = w.a AND x.name = y.name)
)
SELECT w.path, x.size, x.etag, x.md5, x.last_modified, y.size, y.etag, y.md5, y.last_modified
FROM walk w
LEFT JOIN entries x ON x.id = w.a AND w.a_dir = 0
LEFT JOIN entries y ON y.id = w.b AND w.b_dir = 0
WHERE w.a_dir = 0 OR w.b_dir = 0
"""

_table_numbers = itertools.count()


@dataclass(frozen=True)
class Group:
    """The files of one (top-level folder, extension) pair."""

    folder: str
    extension: str
    files: int
    bytes: int
    md5_files: int
    oldest: str | None  # the least and greatest last-modified time, as the store wrote it
    newest: str | None


@dataclass(frozen=True)
class Duplicate:
    """Files with the same MD5 and size."""

    md5: bytes
    size: int
    entry_ids: list[int]


class FileTable:
    """The files of one version copied once into a temporary table, to aggregate them
    several ways without walking the tree again."""

    def __init__(self, conn: sqlite3.Connection, name: str):
        self._conn = conn
        self._name = name

    def groups(self, extension: Callable[[str], str]) -> list[Group]:
        """The files by top-level folder and by EXTENSION(file name)."""
        # A Python function called by SQLite: one definition of an extension, and faster
        # than the same rule in SQL's string functions (measured: 1.1 s vs 1.8 s a million).
        self._conn.create_function("amlfs_extension", 1, extension, deterministic=True)
        rows = self._conn.execute(
            "SELECT top, amlfs_extension(name) AS ext, COUNT(*), SUM(size), COUNT(md5),"
            f" MIN(last_modified), MAX(last_modified) FROM {self._name}"
            " GROUP BY top, ext ORDER BY top, ext"
        )
        return [Group(*row) for row in rows]

    def sizes(self) -> list[int]:
        """Every file's size, smallest first."""
        return [size for (size,) in self._conn.execute(f"SELECT size FROM {self._name} ORDER BY 1")]

    def duplicates(self) -> list[Duplicate]:
        """Every (MD5, size) that more than one file has."""
        rows = self._conn.execute(
            f"SELECT md5, size, group_concat(id) FROM {self._name} WHERE md5 IS NOT NULL"
            " GROUP BY md5, size HAVING COUNT(*) > 1"
        )
        return [Duplicate(md5, size, [int(i) for i in ids.split(",")]) for md5, size, ids in rows]


@contextmanager
def file_table(registry: Registry, version: Version) -> Iterator[FileTable]:
    """VERSION's files in a temporary table of this connection, dropped on exit."""
    conn = registry.connection
    name = f"temp.amlfs_files_{next(_table_numbers)}"
    conn.execute(f"CREATE TABLE {name} AS {_FILES_OF}", (registry.root(version).id,))
    try:
        yield FileTable(conn, name)
    finally:
        conn.execute(f"DROP TABLE {name}")


def differing_files(
    registry: Registry, a: Version, b: Version
) -> Iterator[tuple[PinnedFile | None, PinnedFile | None]]:
    """(A's file, B's file) for every path whose file differs between versions A and B:
    (file, None) when only A has a file there, (None, file) when only B does. In no
    particular order."""
    rows = registry.connection.execute(_DIFFERING, (registry.root(a).id, registry.root(b).id))
    for path, *pins in rows:
        yield _pinned(path, pins[:4]), _pinned(path, pins[4:])


def _pinned(path: str, pins: list) -> PinnedFile | None:
    size, etag, md5, last_modified = pins
    return None if size is None else PinnedFile(path, size, etag, md5, last_modified)


def path_of(registry: Registry, entry_id: int) -> str:
    """The path of an entry below its version's root: one probe per folder above it."""
    names = []
    entry = registry.entry(entry_id)
    while entry is not None and entry.parent_id is not None:
        names.append(entry.name)
        entry = registry.entry(entry.parent_id)
    return "/".join(reversed(names))
