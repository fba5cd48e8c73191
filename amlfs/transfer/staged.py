"""The files of an output mount: a tree in memory, their staged copies on local disk,
the journal, and the uploads that follow each close.

Rules that make "nothing lost" hold:
- A staged copy, once journaled (at flush, i.e. close), is never written again: a later
  write goes to a new copy ("generation"), so an upload or a resume after a crash always
  sends exactly what some close() saw.
- A staged copy is deleted only when no journal row and no upload needs it.
- Uploads retry with backoff for as long as the mount lives; a file is never dropped.

Everything here runs on the trio thread; disk syncs, journal commits and storage calls
go to worker threads. Where no await separates reading a node and changing it, the
change is atomic with respect to other requests (noted where it matters).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from amlfs.errors import StorageError
from amlfs.registry import paths
from amlfs.storage import Store
from amlfs.transfer.journal import Journal, Upload
from amlfs.transfer.outputs import settle

log = logging.getLogger(__name__)

ROOT_INODE = 1
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
FILE_MODE, FOLDER_MODE = 0o644, 0o755
READ_WINDOW = 4 * 2**20  # reads of a file that is only stored fetch this much at once


@dataclass(eq=False)
class Node:
    inode: int
    parent: int
    name: str
    is_dir: bool
    mode: int
    mtime_ns: int = field(default_factory=time.time_ns)
    children: dict[str, int] = field(default_factory=dict)
    size: int = 0
    staged: str | None = None  # current local copy (file name in staging), if any
    generation: int = 0
    fd: int | None = None  # open on the current staged copy
    sealed: bool = False  # the current staged copy is journaled: never written again
    dirty: bool = False  # written since last journaled
    journaled: str | None = None  # staged copy named by the journal's row
    superseded: list[str] = field(default_factory=list)  # older copies, deleted when free
    handles: int = 0
    writers: int = 0
    uploading: str | None = None  # staged copy an upload is reading
    remote_path: str | None = None  # where the uploaded copy is stored (relative)
    etag: str | None = None
    md5: bytes | None = None
    removed: bool = False
    error: str | None = None
    broken: int | None = None  # errno of a failed write: never journaled, never uploaded
    window: tuple[int, bytes] | None = None  # (offset, bytes) last read back from storage


@dataclass
class OutputStats:
    uploaded: int = 0
    bytes_uploaded: int = 0


class OutputFiles:
    def __init__(self, journal: Journal, session_id: int, staging: Path, store: Store,
                 target: str, nursery: trio.Nursery, workers: int = 8):  # fmt: skip
        self.journal, self.session_id, self.staging = journal, session_id, staging
        self.store, self.target, self.nursery = store, target, nursery
        self.limiter = trio.CapacityLimiter(workers)
        self.nodes: dict[int, Node] = {ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, "", True,
                                                        FOLDER_MODE)}  # fmt: skip
        self.removed: dict[int, Node] = {}  # unlinked, their stored copy not yet deleted
        self.stats = OutputStats()
        self._next_inode = ROOT_INODE + 1
        self._settling: set[int] = set()

    # --- the tree -------------------------------------------------------------------

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        return node

    def lookup(self, parent: int, name: str) -> Node:
        folder = self.node(parent)
        if not folder.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        inode = folder.children.get(name)
        if inode is None:
            raise OSError(errno.ENOENT, "no such file")
        return self.nodes[inode]

    def path_of(self, node: Node) -> str:
        parts = []
        while node.inode != ROOT_INODE:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return "/".join(reversed(parts))

    def children(self, folder: Node) -> list[Node]:
        return [self.nodes[i] for _, i in sorted(folder.children.items())]

    def _add(self, parent: int, name: str, is_dir: bool, mode: int) -> Node:
        folder = self.node(parent)
        if not folder.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        if name in folder.children:
            raise OSError(errno.EEXIST, "exists")
        if problem := paths.path_problem(name):
            raise OSError(errno.EINVAL, problem)
        node = Node(self._next_inode, parent, name, is_dir, mode)
        self._next_inode += 1
        self.nodes[node.inode] = node
        folder.children[name] = node.inode
        folder.mtime_ns = time.time_ns()
        return node

    def mkdir(self, parent: int, name: str, mode: int) -> Node:
        return self._add(parent, name, True, mode & 0o7777 or FOLDER_MODE)

    def create(self, parent: int, name: str, mode: int) -> Node:
        """A new empty file, open for writing (the caller counts the handle)."""
        node = self._add(parent, name, False, mode & 0o7777 or FILE_MODE)
        self._new_copy(node, copy_from=None)
        node.dirty = True  # an empty file is a file too: journaled at its close
        return node

    async def rmdir(self, parent: int, name: str) -> None:
        node = self.lookup(parent, name)
        if not node.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        if node.children:
            raise OSError(errno.ENOTEMPTY, "folder not empty")
        del self.nodes[parent].children[name]
        del self.nodes[node.inode]

    async def unlink(self, parent: int, name: str) -> None:
        node = self.lookup(parent, name)
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a folder")
        del self.nodes[parent].children[name]
        await self._remove(node)

    async def _remove(self, node: Node) -> None:
        del self.nodes[node.inode]
        node.removed = True
        if node.remote_path is None and node.uploading is None:
            self._drop_copies(node, everything=True)
            if node.journaled is not None:
                await trio.to_thread.run_sync(self.journal.forget, self.session_id, node.inode)
            return
        # Stored (or being stored): journal the removal, then delete the stored copy.
        self.removed[node.inode] = node
        await self._journal(node)
        self._drop_copies(node, everything=True)
        self._kick(node)

    async def rename(self, parent: int, name: str, new_parent: int, new_name: str,
                     replace_existing: bool = True) -> None:  # fmt: skip
        node = self.lookup(parent, name)
        target_folder = self.node(new_parent)
        if not target_folder.is_dir:
            raise OSError(errno.ENOTDIR, "not a folder")
        if problem := paths.path_problem(new_name):
            raise OSError(errno.EINVAL, problem)
        ancestor = target_folder
        while node.is_dir and ancestor.inode != ROOT_INODE:
            if ancestor.inode == node.inode:
                raise OSError(errno.EINVAL, "cannot move a folder into itself")
            ancestor = self.nodes[ancestor.parent]
        existing = target_folder.children.get(new_name)
        if existing == node.inode:
            return
        if existing is not None:
            if not replace_existing:
                raise OSError(errno.EEXIST, "exists")
            other = self.nodes[existing]
            if other.is_dir and (not node.is_dir or other.children):
                raise OSError(errno.EISDIR if not node.is_dir else errno.ENOTEMPTY, "in the way")
            if node.is_dir and not other.is_dir:
                raise OSError(errno.ENOTDIR, "not a folder")
            del target_folder.children[new_name]
            if other.is_dir:
                del self.nodes[other.inode]
            else:
                await self._remove(other)
        del self.nodes[parent].children[name]
        node.parent, node.name = new_parent, new_name
        target_folder.children[new_name] = node.inode
        # Every closed file below moves: journal its new path, then move its stored copy.
        for moved in self._files_below(node):
            if moved.journaled is not None or moved.remote_path is not None:
                await self._journal(moved)
                self._kick(moved)

    def _files_below(self, node: Node) -> list[Node]:
        if not node.is_dir:
            return [node]
        found = []
        for child in list(node.children.values()):
            found += self._files_below(self.nodes[child])
        return found

    # --- contents -------------------------------------------------------------------

    async def open(self, node: Node, write: bool, truncate: bool) -> None:
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a folder")
        if write:
            if node.staged is None:  # only stored: bring the stored copy back to write on
                await self._fetch_stored(node, empty=truncate)
            if truncate:
                await self.truncate(node, 0)
            node.writers += 1
        node.handles += 1

    def release(self, node: Node, write: bool) -> None:
        node.handles -= 1
        if write:
            node.writers -= 1
        if node.handles == 0 and node.staged is None and node.fd is not None:
            os.close(node.fd)
            node.fd = None
        if node.writers == 0 and not node.removed:
            self._kick(node)

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.fd is not None:
            return os.pread(node.fd, size, offset)
        if node.remote_path is None or offset >= node.size:
            return b""
        # Read back from storage a window at a time, not a request per 128 KiB read.
        start = offset - offset % READ_WINDOW
        if node.window is None or node.window[0] != start:
            end = min(node.size, start + READ_WINDOW)
            source = paths.join(self.target, node.remote_path)
            async with self.limiter:
                data = await trio.to_thread.run_sync(self.store.read, source, start, end)
            node.window = (start, data)
        return node.window[1][offset - start : offset - start + size]

    def write(self, node: Node, offset: int, data: bytes) -> int:
        """Written straight to the staged copy on this thread: a page-cache write of at
        most 128 KiB costs less than a hand-off to a worker thread. ENOSPC reaches the
        writer as it is."""
        if node.sealed:
            self._new_copy(node, copy_from=node.staged)
        assert node.fd is not None
        try:
            written = os.pwrite(node.fd, data, offset)
        except OSError as error:
            node.broken = error.errno  # the file lacks these bytes: it must not be stored
            raise
        node.size = max(node.size, offset + written)
        node.dirty = True
        node.mtime_ns = time.time_ns()
        return written

    async def truncate(self, node: Node, size: int) -> None:
        if node.staged is None:
            await self._fetch_stored(node, empty=size == 0)
        if node.sealed:
            self._new_copy(node, copy_from=node.staged if size else None)
        assert node.fd is not None
        os.ftruncate(node.fd, size)
        if size == 0:
            node.broken = None  # rewritten from scratch
        node.size = size
        node.dirty = True
        node.mtime_ns = time.time_ns()

    async def commit(self, node: Node) -> None:
        """Make what was written durable and journaled (flush, fsync): once this returns,
        the file is uploaded even if the daemon dies. Raises OSError (ENOSPC, EIO)."""
        if node.broken is not None:
            raise OSError(node.broken, "an earlier write failed; the file is not uploaded")
        if not node.dirty or node.removed or node.fd is None:
            return
        # Sealed before the await: a write meanwhile goes to a new copy, never into the
        # bytes being made durable. Synced, then journaled, in one hand-off.
        node.sealed, node.dirty = True, False
        row, fd = self.row(node), node.fd

        def sync_and_record() -> None:
            os.fsync(fd)
            self.journal.record(row)

        try:
            await trio.to_thread.run_sync(sync_and_record)
        except BaseException:
            if node.staged == row.staged:
                node.sealed, node.dirty = False, True
            raise
        node.journaled = row.staged
        self._drop_copies(node)

    # --- staged copies ----------------------------------------------------------------

    def _new_copy(self, node: Node, copy_from: str | None) -> None:
        """Point NODE at a fresh staged copy (a copy of COPY_FROM, or empty)."""
        node.generation += 1
        name = f"{node.inode}.{node.generation}"
        path = self.staging / name
        if copy_from is not None:
            shutil.copyfile(self.staging / copy_from, path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if copy_from else os.O_TRUNC), 0o600)
        if node.fd is not None:
            os.close(node.fd)
        if node.staged is not None:
            node.superseded.append(node.staged)
        node.fd, node.staged, node.sealed = fd, name, False
        node.size = os.fstat(fd).st_size
        node.window = None

    async def _fetch_stored(self, node: Node, empty: bool) -> None:
        """Before writing to a file that is only stored: a staged copy of it again."""
        size = node.size
        self._new_copy(node, copy_from=None)
        if empty or node.remote_path is None or node.etag is None or size == 0:
            return
        source, local = paths.join(self.target, node.remote_path), self.staging / node.staged
        async with self.limiter:  # streamed into the new copy, only if still as we stored it
            await trio.to_thread.run_sync(self.store.download_pinned, source, node.etag, local)
        node.size = os.fstat(node.fd).st_size

    def _drop_copies(self, node: Node, everything: bool = False) -> None:
        """Delete staged copies nothing needs any more (EVERYTHING: the file is gone)."""
        keep = {node.uploading} | (set() if everything else {node.staged, node.journaled})
        if node.removed and node.fd is not None and node.handles == 0:
            os.close(node.fd)
            node.fd = None
        names = [*node.superseded, *([node.staged] if everything and node.staged else [])]
        node.superseded = [n for n in names if n in keep]
        for name in names:
            if name not in keep:
                (self.staging / name).unlink(missing_ok=True)
        if everything:
            node.staged = None

    # --- uploads ----------------------------------------------------------------------

    def row(self, node: Node) -> Upload:
        return Upload(
            session_id=self.session_id, file_id=node.inode,
            path=self.path_of(node) if not node.removed else node.name,
            staged=node.staged if node.sealed and not node.removed else None,
            size=node.size, md5=node.md5, remote_path=node.remote_path, etag=node.etag,
            removed=node.removed, error=node.error,
        )  # fmt: skip

    async def _journal(self, node: Node, durable: bool = True) -> None:
        row = self.row(node)
        await trio.to_thread.run_sync(lambda: self.journal.record(row, durable=durable))
        node.journaled = row.staged

    def needs_work(self, node: Node) -> bool:
        if node.removed:
            return node.remote_path is not None or node.uploading is not None
        if node.is_dir:
            return False
        moved = node.remote_path is not None and node.remote_path != self.path_of(node)
        return (node.staged is not None and node.sealed) or moved

    def pending(self) -> list[Node]:
        every = [*self.nodes.values(), *self.removed.values()]
        return [n for n in every if self.needs_work(n) or n.inode in self._settling]

    def _kick(self, node: Node) -> None:
        if node.inode not in self._settling and self.needs_work(node):
            self._settling.add(node.inode)
            self.nursery.start_soon(self._settle, node)

    async def _settle(self, node: Node) -> None:
        delay = RETRY_FIRST_S
        try:
            while self.needs_work(node) and (node.writers == 0 or node.removed):
                row = self.row(node)
                node.uploading = row.staged
                try:
                    async with self.limiter:
                        done = await trio.to_thread.run_sync(
                            settle, self.store, self.target, self.staging, row
                        )
                except (StorageError, OSError) as error:
                    node.error = str(error)
                    log.warning("%s: upload failed (%s); trying again in %.0f s",
                                row.path, error, delay)  # fmt: skip
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                finally:
                    node.uploading = None
                delay = RETRY_FIRST_S
                self._settled(node, row, done)
                if node.removed and node.remote_path is None:
                    await trio.to_thread.run_sync(self.journal.forget, self.session_id,
                                                  node.inode)  # fmt: skip
                    self.removed.pop(node.inode, None)
                    self._drop_copies(node, everything=True)
                    break
                # Not synced: if a crash loses this row, the upload is merely done again.
                await self._journal(node, durable=False)
                self._drop_copies(node)
        finally:
            self._settling.discard(node.inode)

    def _settled(self, node: Node, sent: Upload, done: Upload) -> None:
        """Apply a finished settle to NODE, which may have changed meanwhile (atomic:
        no await)."""
        node.error = None
        node.remote_path, node.etag = done.remote_path, done.etag
        if sent.staged is not None:
            self.stats.uploaded += 1
            self.stats.bytes_uploaded += sent.size
            if node.staged == sent.staged and node.sealed:
                node.md5 = done.md5
                node.superseded.append(node.staged)  # stored now: reads go to storage
                node.staged = None
                node.sealed = False
                if node.handles == 0 and node.fd is not None:
                    os.close(node.fd)
                    node.fd = None
        log.info("%s %s", "removed" if node.removed else "stored", sent.path)

    async def settle_all(self, patience_s: float) -> list[Upload]:
        """Wait until every file is settled, or no upload has succeeded for PATIENCE_S.
        Returns the rows of the files still not settled."""
        for node in list(self.nodes.values()):
            self._kick(node)
        last_progress, done_before = time.monotonic(), -1
        while self.pending():
            done_now = self.stats.uploaded
            if done_now != done_before:
                last_progress, done_before = time.monotonic(), done_now
            if time.monotonic() - last_progress > patience_s:
                break
            await trio.sleep(0.2)  # pending() walks every file: not too often
        return [replace(self.row(n), error=n.error) for n in self.pending()]

    def close(self) -> None:
        for node in [*self.nodes.values(), *self.removed.values()]:
            if node.fd is not None:
                os.close(node.fd)
                node.fd = None
