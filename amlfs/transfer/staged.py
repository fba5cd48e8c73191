"""The files of an output mount: a tree in memory, their staged copies on local disk,
the journal, and the uploads that follow each close.

Rules that make "nothing lost" hold:
- What a close (flush, fsync) saw is a snapshot: the first SIZE bytes of one staged copy,
  with their MD5, journaled before close returns. Those bytes are never written again
  ("frozen"): a later write or truncate below them moves the file to a new copy, made in a
  worker thread; appends go on in place, so a writer that fsyncs as it goes never pays
  for a copy. An upload or a resume after a crash sends exactly what some close saw.
- A staged copy is deleted only when no journal row, commit or upload refers to it.
- Storage operations on one name run one at a time (NameLocks), and each is checked
  against the file's current path once its turn comes; every overwrite and delete is
  conditional on what this mount last stored at that name (outputs.settle). A late
  operation of a file that was replaced or removed meanwhile never touches its successor.
- Uploads retry with backoff for as long as the mount lives, whatever the failure; a
  file is never dropped and the mount keeps serving.

Everything here runs on the trio thread; disk syncs, copies, journal commits and storage
calls go to worker threads. Where no await separates reading a node and changing it, the
change is atomic with respect to other requests (noted where it matters).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from amlfs.errors import AmlfsError, SourceChanged, StorageError, StorageUnreachable
from amlfs.health import Health
from amlfs.localfs import copy_prefix, fsync_folder
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
HASH_CHUNK = 4 * 2**20


@dataclass(frozen=True)
class Snapshot:
    """What one close saw: the first SIZE bytes of staged copy STAGED, and their MD5."""

    staged: str
    size: int
    md5: bytes


@dataclass(eq=False)
class Node:
    inode: int
    parent: int
    name: str
    is_dir: bool
    mode: int
    mtime_ns: int = field(default_factory=time.time_ns)
    children: dict[str, int] = field(default_factory=dict)
    size: int = 0  # as the mount shows it now
    staged: str | None = None  # the local copy writes go to (file name in staging), if any
    generation: int = 0
    fd: int | None = None  # open on the current staged copy
    hashed: tuple[str, int, Any] | None = None  # (copy, bytes, running MD5 of those bytes)
    entry_synced: int = 0  # ticket of the staging folder sync that covers its copy's entry
    copying: trio.Event | None = None  # set when the copy being made is ready
    commit_lock: trio.Lock = field(default_factory=trio.Lock)
    dirty: bool = False  # written since last journaled
    committing: Snapshot | None = None  # being made durable right now
    committed: Snapshot | None = None  # journaled and not yet stored
    in_journal: bool = False  # the journal has a row for this file
    superseded: list[str] = field(default_factory=list)  # older copies, deleted when free
    handles: int = 0
    writers: int = 0
    uploading: str | None = None  # staged copy an upload is reading
    remote_path: str | None = None  # where the uploaded copy is stored (relative)
    etag: str | None = None
    md5: bytes | None = None  # of the stored copy
    stored_size: int = 0  # of the stored copy
    removed: bool = False
    error: str | None = None
    broken: int | None = None  # errno of a failed write: never journaled, never uploaded
    window: tuple[int, bytes] | None = None  # (offset, bytes) last read back from storage

    @property
    def frozen(self) -> int:
        """Bytes of `staged` that a close being made durable, or one journaled and not yet
        stored (its upload included), refers to: never written again. (A removed file's
        upload is never kept, so its bytes need not be frozen.)"""
        snapshots = (self.committing, self.committed)
        return max((s.size for s in snapshots if s and s.staged == self.staged), default=0)


@dataclass
class OutputStats:
    uploaded: int = 0
    bytes_uploaded: int = 0


class NameLocks:
    """One storage operation at a time per name in the destination. Names are taken in
    sorted order, so two operations that each need two names cannot deadlock."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, names: Iterable[str]) -> AsyncIterator[None]:
        taken: list[str] = []
        try:
            for name in sorted(set(names)):
                lock, users = self._locks.setdefault(name, (trio.Lock(), [0]))
                users[0] += 1
                taken.append(name)
                await lock.acquire()
            yield
        finally:
            for name in reversed(taken):
                lock, users = self._locks[name]
                if lock.locked() and lock.statistics().owner is trio.lowlevel.current_task():
                    lock.release()
                users[0] -= 1
                if not users[0]:
                    del self._locks[name]


class FolderSyncs:
    """Syncs of the staging folder, so that a new copy's entry is on disk before a close
    journals it. Asked for when the copy is made and run in the background, shared by the
    copies made meanwhile (group commit): by the first close, the sync is usually done."""

    def __init__(self, folder: Path, nursery: trio.Nursery):
        self.folder, self.nursery = folder, nursery
        self.asked = self.done = 0
        self.running = False
        self.failure: OSError | None = None
        self._changed = trio.Event()

    def ask(self) -> int:
        """A ticket: covered once a sync that started after this call has finished."""
        self.asked += 1
        if not self.running:
            self.running = True
            self.nursery.start_soon(self._run)
        return self.asked

    async def wait(self, ticket: int) -> None:
        """Return once TICKET is covered; an fsync that failed is this caller's OSError."""
        while self.done < ticket:
            if not self.running:  # the last sync failed: try again for this ticket
                self.ask()
            await self._changed.wait()
            if self.failure is not None and self.done < ticket:
                raise self.failure

    async def _run(self) -> None:
        try:
            while self.done < self.asked:
                upto = self.asked
                try:
                    await trio.to_thread.run_sync(fsync_folder, self.folder)
                except OSError as error:
                    self.failure = error
                    return
                self.done, self.failure = upto, None
                self._wake()
        finally:
            self.running = False
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


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
        self.storage = Health()  # as the uploads find it (they keep retrying either way)
        self.names = NameLocks()
        self.stored_at: dict[str, str] = {}  # name -> etag of what this mount stored there
        self.folder_syncs = FolderSyncs(staging, nursery)
        self._next_inode = ROOT_INODE + 1
        self._settling: set[int] = set()
        fsync_folder(staging.parent)  # the staging folder's own entry, before any close

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
        self._use_copy(node, self._create_copy(node))
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
            if node.in_journal:
                await trio.to_thread.run_sync(self.journal.forget, self.session_id, node.inode)
            return
        # Stored (or being stored): journal the removal, then delete the stored copy (only
        # if it is still this file's: see outputs.settle).
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
            if moved.in_journal:
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
        await self._copy_made(node)
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

    async def write(self, node: Node, offset: int, data: bytes) -> int:
        """Written straight to the staged copy on this thread: a page-cache write of at
        most 128 KiB costs less than a hand-off to a worker thread. A write into bytes a
        close saw first moves the file to a new copy (in a worker thread). ENOSPC reaches
        the writer as it is."""
        await self._copy_made(node)
        if offset < node.frozen:
            await self._move_to_copy(node, length=node.size)
        # From here to the write, no await: no copy can start in between.
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
        await self._copy_made(node)
        if size < node.frozen:
            await self._move_to_copy(node, length=size)
        else:
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
        async with node.commit_lock:  # one commit of a file at a time
            await self._copy_made(node)
            if not node.dirty or node.removed or node.staged is None:
                return
            # Frozen before the await (see Node.frozen): a write below SIZE meanwhile goes
            # to a new copy, never into the bytes being made durable; appends go on in place.
            name, size = node.staged, node.size
            node.committing, node.dirty = Snapshot(name, size, b""), False
            hashed = node.hashed if node.hashed and node.hashed[0] == name else None
            row = self.row(node, node.committing)
            try:
                await self.folder_syncs.wait(node.entry_synced)
                snapshot, hasher = await trio.to_thread.run_sync(
                    self._sync_and_journal, row, hashed
                )
            except BaseException:
                node.dirty = True
                raise
            finally:
                node.committing = None
        if node.staged == name:
            node.hashed = (name, size, hasher)
        node.committed, node.in_journal = snapshot, True
        self._drop_copies(node)

    def _sync_and_journal(self, row: Upload,
                          hashed: tuple[str, int, Any] | None) -> tuple[Snapshot, Any]:  # fmt: skip
        """In a worker thread: the copy's bytes on disk (its folder entry is already, see
        FolderSyncs), the MD5 of what the close saw (continued from HASHED where an
        earlier close hashed a prefix), and the journal row, synced, in that order."""
        assert row.staged is not None
        hasher, done = (hashed[2].copy(), hashed[1]) if hashed else (hashlib.md5(), 0)
        fd = os.open(self.staging / row.staged, os.O_RDONLY)
        try:
            os.fsync(fd)
            while done < row.size:
                chunk = os.pread(fd, min(HASH_CHUNK, row.size - done), done)
                if not chunk:
                    raise OSError(errno.EIO, f"staged copy of {row.path} is short")
                hasher.update(chunk)
                done += len(chunk)
        finally:
            os.close(fd)
        md5 = hasher.digest()
        self.journal.record(replace(row, md5=md5))
        return Snapshot(row.staged, row.size, md5), hasher

    # --- staged copies ----------------------------------------------------------------

    def _create_copy(self, node: Node) -> tuple[str, int]:
        node.generation += 1
        name = f"{node.inode}.{node.generation}"
        fd = os.open(self.staging / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        return name, fd

    def _use_copy(self, node: Node, copy: tuple[str, int]) -> None:
        """Point NODE at a new staged copy (atomic: no await)."""
        name, fd = copy
        if node.fd is not None:
            os.close(node.fd)
        if node.staged is not None:
            node.superseded.append(node.staged)
        node.staged, node.fd = name, fd
        node.hashed, node.window = None, None
        node.entry_synced = self.folder_syncs.ask()
        node.size = os.fstat(fd).st_size

    async def _copy_made(self, node: Node) -> None:
        """Wait while a new copy of NODE is being made: nothing may write meanwhile."""
        while node.copying is not None:
            await node.copying.wait()

    async def _move_to_copy(self, node: Node, length: int) -> None:
        """Move NODE to a new copy holding the first LENGTH bytes of the current one."""
        assert node.staged is not None
        source = self.staging / node.staged
        await self._new_copy(node, lambda _name, fd: _copy_from(source, fd, length))
        self._drop_copies(node)

    async def _fetch_stored(self, node: Node, empty: bool) -> None:
        """Before writing to a file that is only stored: a staged copy of it again."""
        await self._copy_made(node)
        if node.staged is not None:  # another opener fetched it meanwhile
            return
        if empty or node.remote_path is None or node.etag is None or node.size == 0:
            await self._new_copy(node, None)
            return
        source, etag = paths.join(self.target, node.remote_path), node.etag

        def fetch(name: str, _fd: int) -> None:  # only if still as we stored it
            self.store.download_pinned(source, etag, self.staging / name)

        await self._new_copy(node, fetch, limiter=self.limiter)

    async def _new_copy(self, node: Node, fill: Callable[[str, int], None] | None,
                        limiter: trio.CapacityLimiter | None = None) -> None:  # fmt: skip
        """Point NODE at a new staged copy, filled first by FILL(name, fd) in a worker
        thread (under LIMITER): requests to NODE wait for it (see _copy_made)."""
        name, fd = self._create_copy(node)
        if fill is not None:
            node.copying = ready = trio.Event()
            try:
                await trio.to_thread.run_sync(fill, name, fd, limiter=limiter)
            except BaseException:
                os.close(fd)
                (self.staging / name).unlink(missing_ok=True)
                raise
            finally:
                node.copying = None
                ready.set()
        self._use_copy(node, (name, fd))

    def _drop_copies(self, node: Node, everything: bool = False) -> None:
        """Delete staged copies nothing needs any more (EVERYTHING: the file is gone)."""
        keep = {node.uploading, node.committing and node.committing.staged}
        if not everything:
            keep |= {node.staged, node.committed and node.committed.staged}
        if node.removed and node.fd is not None and node.handles == 0:
            os.close(node.fd)
            node.fd = None
        names = [*node.superseded, *([node.staged] if everything and node.staged else [])]
        node.superseded = [n for n in names if n in keep]
        for name in names:
            if name not in keep:
                (self.staging / name).unlink(missing_ok=True)
        if everything:
            node.staged, node.committed = None, None

    # --- uploads ----------------------------------------------------------------------

    def row(self, node: Node, snapshot: Snapshot | None = None) -> Upload:
        """The journal's row for NODE: its last close not yet stored (or SNAPSHOT), where
        it is stored, and where it belongs."""
        snapshot = snapshot or node.committed
        return Upload(
            session_id=self.session_id, file_id=node.inode,
            path=self.path_of(node) if not node.removed else node.name,
            staged=snapshot.staged if snapshot and not node.removed else None,
            size=snapshot.size if snapshot else node.stored_size,
            md5=snapshot.md5 if snapshot else node.md5,
            remote_path=node.remote_path, etag=node.etag, removed=node.removed,
            error=node.error,
        )  # fmt: skip

    async def _journal(self, node: Node, durable: bool = True) -> None:
        row = self.row(node)
        await trio.to_thread.run_sync(lambda: self.journal.record(row, durable=durable))
        node.in_journal = True

    def needs_work(self, node: Node) -> bool:
        if node.removed:
            return node.remote_path is not None or node.uploading is not None
        if node.is_dir:
            return False
        moved = node.remote_path is not None and node.remote_path != self.path_of(node)
        # Written but never made durable: its last close failed to commit (no file
        # descriptor or disk space left for the journal just then). The bytes are staged;
        # the settle commits them first. Never dropped, and never reported as stored.
        uncommitted = node.dirty and node.broken is None and node.staged is not None
        return node.committed is not None or moved or uncommitted

    def pending(self) -> list[Node]:
        every = [*self.nodes.values(), *self.removed.values()]
        return [n for n in every if self.needs_work(n) or n.inode in self._settling]

    def _kick(self, node: Node) -> None:
        if node.inode not in self._settling and self.needs_work(node):
            self._settling.add(node.inode)
            self.nursery.start_soon(self._settle, node)

    async def _settle(self, node: Node) -> None:
        """Store NODE until nothing is left to do. Any failure, expected or not, leaves the
        file pending and the mount serving: it is logged and tried again."""
        delay = RETRY_FIRST_S
        try:
            while self.needs_work(node) and (node.writers == 0 or node.removed):
                try:
                    await self._settle_once(node)
                except Exception as error:
                    node.error = str(error) or type(error).__name__
                    if isinstance(error, StorageUnreachable):
                        self.storage.lost(node.error, node.name, time.time())
                    elif isinstance(error, StorageError | SourceChanged):  # it answered
                        self.storage.answered()
                    # The whole story once per streak of failures; then a line per retry.
                    log.warning("%s: not stored (%s); trying again in %.1f s", node.name,
                                node.error, delay,
                                exc_info=delay == RETRY_FIRST_S or not isinstance(
                                    error, AmlfsError | OSError))  # fmt: skip
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_FIRST_S
        finally:
            self._settling.discard(node.inode)

    async def _settle_once(self, node: Node) -> None:
        """One step of storing NODE, under the locks of the names it touches."""
        names = self._names(self.row(node))
        async with self.names.hold(names):
            # The file may have moved or gone while waiting: act on where it is now.
            row = self.row(node)
            if self._names(row) != names or not self.needs_work(node):
                return
            if node.dirty and node.committed is None and node.writers == 0:
                await self.commit(node)  # a close whose commit failed: commit it now
                row = self.row(node)
                if self._names(row) != names:
                    return  # committing awaited: the file moved meanwhile; settle again
            node.uploading = row.staged
            try:
                async with self.limiter:
                    done = await trio.to_thread.run_sync(
                        settle, self.store, self.target, self.staging, row, self.stored_at
                    )
            finally:
                node.uploading = None
            self._settled(node, row, done)
        if node.removed and node.remote_path is None:
            await trio.to_thread.run_sync(self.journal.forget, self.session_id, node.inode)
            self.removed.pop(node.inode, None)
            self._drop_copies(node, everything=True)
            return
        # Not synced: if a crash loses this row, the next settle finds the upload done
        # (the stored file's MD5 is the journaled one, at the journaled path) or does it
        # again. A file moved while it uploaded is not at the journaled path: synced.
        moved = not node.removed and node.remote_path != self.path_of(node)
        await self._journal(node, durable=moved)
        self._drop_copies(node)

    @staticmethod
    def _names(row: Upload) -> set[str]:
        names = {row.remote_path} if row.remote_path else set()
        return names if row.removed else names | {row.path}

    def _settled(self, node: Node, sent: Upload, done: Upload) -> None:
        """Apply a finished settle to NODE, which may have changed meanwhile (atomic:
        no await)."""
        node.error = None
        self.storage.answered()
        node.remote_path, node.etag = done.remote_path, done.etag
        if sent.staged is not None:
            self.stats.uploaded += 1
            self.stats.bytes_uploaded += sent.size
            node.md5, node.stored_size = done.md5, sent.size
            committed = node.committed
            if committed and (committed.staged, committed.size) == (sent.staged, sent.size):
                node.committed = None
            if node.committed is None and node.committing is None:
                whole = (node.staged, node.size, node.dirty) == (sent.staged, sent.size, False)
                if whole and node.writers == 0:
                    self._release_copy(node)  # stored whole: reads go to storage
        log.info("%s %s", "removed" if node.removed else "stored", sent.path)

    def _release_copy(self, node: Node) -> None:
        assert node.staged is not None
        node.superseded.append(node.staged)
        node.staged, node.hashed = None, None
        if node.handles == 0 and node.fd is not None:
            os.close(node.fd)
            node.fd = None

    async def settle_all(self, patience_s: float) -> list[Upload]:
        """Wait until every file is settled, or no upload has succeeded for PATIENCE_S.
        Returns the rows of the files still not settled. Called once the mount is gone:
        no writer is left, whatever releases the kernel did not get to send."""
        for node in list(self.nodes.values()):
            node.writers = 0
            self._kick(node)
        last_progress, done_before = time.monotonic(), -1
        while self.pending():
            done_now = self.stats.uploaded
            if done_now != done_before:
                last_progress, done_before = time.monotonic(), done_now
            if time.monotonic() - last_progress > patience_s:
                break
            await trio.sleep(0.2)  # pending() walks every file: not too often
        for node in self.pending():
            # Written but never journaled (its close could not commit, and no release came
            # to retry): journaled now, so that the unmount reports it and `amlfs output
            # resume` stores it. Called once the mount is gone: nothing writes any more.
            if node.dirty and node.committed is None and node.broken is None:
                with contextlib.suppress(OSError):
                    await self.commit(node)
        return [replace(self.row(n), error=n.error) for n in self.pending()]

    def close(self) -> None:
        for node in [*self.nodes.values(), *self.removed.values()]:
            if node.fd is not None:
                os.close(node.fd)
                node.fd = None


def _copy_from(source: Path, fd: int, length: int) -> None:
    with open(source, "rb") as copied:
        copy_prefix(copied.fileno(), fd, length)
