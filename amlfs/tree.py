"""The pinned tree of one version as a mount sees it: inodes, lookups and listings,
answered by indexed registry queries rather than a tree held in memory.

Inode numbers are registry entry ids (plus one, so that none collides with the root's
fixed inode 1): permanent, so they are the same on every mount of the version.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from amlfs.registry import paths
from amlfs.registry.models import Entry, Version
from amlfs.registry.store import Registry

ROOT_INODE = 1
FOLDER_PATHS_KEPT = 4096  # folder paths remembered to name files without walking up


class VersionTree:
    """Read-only queries on one version. Each is one or two index probes (microseconds),
    so the mount answers them on its event loop without a thread hop."""

    def __init__(self, registry: Registry, version: Version):
        self.registry = registry
        self.version = version
        self.root = registry.root(version)
        self.created_ns = iso_to_ns(version.created_at)
        self._folder_paths: OrderedDict[int, str] = OrderedDict({self.root.id: ""})

    def inode_of(self, entry: Entry) -> int:
        return ROOT_INODE if entry.id == self.root.id else entry.id + 1

    def entry(self, inode: int) -> Entry | None:
        if inode == ROOT_INODE:
            return self.root
        # An inode of another version (a stale handle after remounting elsewhere) is unknown.
        return self.registry.entry(inode - 1, self.version)

    def lookup(self, folder: Entry, name: str) -> Entry | None:
        return self.registry.lookup(folder.id, name)

    def children(self, folder: Entry, after: Entry | None, limit: int) -> list[Entry]:
        """Up to LIMIT entries of FOLDER in name order, resuming after the entry AFTER."""
        return self.registry.list_folder(folder.id, after.name if after else "", limit)

    def following(self, entry: Entry, limit: int) -> list[Entry]:
        """The next LIMIT entries after ENTRY in its folder's listing."""
        return self.registry.list_folder(entry.parent_id, entry.name, limit)

    def parent(self, entry: Entry) -> Entry:
        if entry.parent_id is None:
            return entry  # the root is its own parent
        return self.registry.entry(entry.parent_id, self.version) or self.root

    def relative_path(self, path: str) -> str:
        """A path inside the version as a path relative to the datastore root."""
        return paths.join(self.version.root, path)

    def path_of(self, entry: Entry) -> str:
        """The entry's path relative to the version's root folder in the datastore."""
        return paths.join(self._folder_path(entry.parent_id), entry.name)

    def _folder_path(self, folder_id: int) -> str:
        known = self._folder_paths.get(folder_id)
        if known is not None:
            self._folder_paths.move_to_end(folder_id)
            return known
        folder = self.registry.entry(folder_id)
        path = paths.join(self._folder_path(folder.parent_id), folder.name)
        self._folder_paths[folder_id] = path
        if len(self._folder_paths) > FOLDER_PATHS_KEPT:
            self._folder_paths.popitem(last=False)
        return path


def iso_to_ns(stamp: str | None) -> int:
    if not stamp:
        return 0
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1e9)
    except ValueError:
        return 0
