"""pyfuse3 operations serving one pinned version read-only.

Metadata comes from the registry only (no storage request for ls, stat or find); file
data comes from the block reader. The data never changes under a version, so the
kernel may keep pages, entries and attributes for as long as it likes.

Nothing is opened here: `open` and `opendir` answer ENOSYS, after which the kernel sends
no OPEN, RELEASE, OPENDIR or RELEASEDIR for the rest of the connection, keeps every
file's page cache across opens and caches listings, so a warm re-read or a second
listing never reaches this process. Reads and listings then carry the inode, not a
handle (pyfuse3 with patches/pyfuse3), and what a file's reads need is kept per inode
from its first read on. Read-only is enforced by the `ro` mount and the mode bits.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3

from amlfs.cache.readahead import FolderWalk, SequentialReads, files_ahead
from amlfs.errors import AmlfsError, SourceChanged, StorageError
from amlfs.metrics.timings import REQUEST_BOUNDS, Timings
from amlfs.reader import BlockReader, PinnedBlob, ReadFailed
from amlfs.registry.models import Entry
from amlfs.tree import ROOT_INODE, VersionTree, iso_to_ns

log = logging.getLogger(__name__)

FOREVER_S = 365 * 24 * 3600.0  # immutable data: cached entries and attributes never expire
LISTING_BATCH = 256
XATTRS = (b"user.amlfs.source", b"user.amlfs.etag", b"user.amlfs.md5", b"user.amlfs.version")
FILES_KEPT = 4096  # files whose read state is kept (least recently read ones go)
HINTS_XATTR = b"user.amlfs.hints"  # on the root: the socket that takes read hints


def require_read_with_inode() -> None:
    """Reads without opens need the inode on each request: pyfuse3 with our patch."""
    if not all(hasattr(pyfuse3.Operations, a) for a in ("read_with_inode", "readdir_with_inode")):
        raise AmlfsError(
            "the installed pyfuse3 lacks patches/pyfuse3/inode-to-read-and-readdir.patch "
            "(run scripts/bootstrap.sh to build it)"
        )


def fuse_error(error: BaseException) -> pyfuse3.FUSEError:
    """The one place a failure becomes an errno (pyfuse3 tolerates only FUSEError)."""
    if isinstance(error, pyfuse3.FUSEError):
        return error
    if isinstance(error, ReadFailed):
        return pyfuse3.FUSEError(errno.EIO)
    if isinstance(error, StorageError | SourceChanged):  # already said why, where it failed
        log.warning("%s", error)
        return pyfuse3.FUSEError(errno.EIO)
    if isinstance(error, OSError) and error.errno:  # output mounts' staging disk: ENOSPC…
        return pyfuse3.FUSEError(error.errno)
    log.exception("unexpected error in a filesystem request")
    return pyfuse3.FUSEError(errno.EIO)


class CountedOperations(pyfuse3.Operations):
    """Operations whose handlers are `mapped`: each request is counted and timed by
    kind, and each error answered by kind and errno (read by amlfs.metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: Counter[str] = Counter()
        self.timings: dict[str, Timings] = {}
        self.errors: Counter[tuple[str, str]] = Counter()


def mapped(handler: Callable) -> Callable:
    """A request handler of CountedOperations: counted and timed by kind, failures as
    errnos."""
    kind = handler.__name__

    async def wrapper(self: CountedOperations, *args: Any, **kwargs: Any) -> Any:
        self.requests[kind] += 1
        began = time.perf_counter()
        try:
            return await handler(self, *args, **kwargs)
        except Exception as error:
            answer = fuse_error(error)
            if answer.errno != errno.ENOSYS:  # ENOSYS to open is how opens are turned off
                self.errors[kind, errno.errorcode.get(answer.errno, str(answer.errno))] += 1
            raise answer from None
        finally:
            timings = self.timings.get(kind)
            if timings is None:
                timings = self.timings[kind] = Timings(REQUEST_BOUNDS)
            timings.observe(time.perf_counter() - began)

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


@dataclass
class ReadFile:
    """What reads of one file need, looked up at its first read and kept."""

    entry: Entry
    blob: PinnedBlob
    sequential: SequentialReads = field(default_factory=SequentialReads)


class ReadOnlyOperations(CountedOperations):
    # open and opendir answer ENOSYS: every read and readdir has handle 0 and the inode.
    read_with_inode = readdir_with_inode = True

    def __init__(self, tree: VersionTree, reader: BlockReader, source_url: Callable[[str], str]):
        super().__init__()
        self.tree = tree
        self.reader = reader
        self.source_url = source_url  # relative path -> URL users recognise (xattr)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.walk = FolderWalk()
        self._files: OrderedDict[int, ReadFile] = OrderedDict()
        self.hint_socket: str | None = None  # where read hints are taken (docs/hints.md)
        self.on_start: Callable[[int], None] = lambda inode: None  # a file read from byte 0

    # --- metadata ---------------------------------------------------------------------

    def attributes(self, entry: Entry) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = self.tree.inode_of(entry)
        if entry.is_dir:
            attrs.st_mode = stat.S_IFDIR | 0o555
            attrs.st_nlink = 2
            mtime = self.tree.created_ns
        else:
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = entry.size
            attrs.st_blocks = (entry.size + 511) // 512
            mtime = iso_to_ns(entry.last_modified) or self.tree.created_ns
        attrs.st_blksize = self.reader.block_size
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = mtime
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.entry_timeout = attrs.attr_timeout = FOREVER_S
        return attrs

    def _entry(self, inode: int) -> Entry:
        entry = self.tree.entry(inode)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    @mapped
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        folder = self._entry(parent_inode)
        if name == b".":
            return self.attributes(folder)
        if name == b"..":
            return self.attributes(self.tree.parent(folder))
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:  # the registry holds only UTF-8 names
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        entry = self.tree.lookup(folder, text)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(entry)

    @mapped
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attributes(self._entry(inode))

    @mapped
    async def opendir(self, inode: int, ctx: Any) -> int:
        # As open: the first OPENDIR is the last; the kernel then caches listings.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @mapped
    async def readdir(self, fh: int, start_id: int, token: Any, inode: int) -> None:
        """Entries in name order; the offset handed back is the last entry's inode, and a
        listing resumes after it: stable however the kernel splits the listing."""
        folder = self._entry(inode)
        if not folder.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        after = self.tree.entry(start_id) if start_id else None
        while True:
            batch = self.tree.children(folder, after, LISTING_BATCH)
            for entry in batch:
                child = self.tree.inode_of(entry)
                if not pyfuse3.readdir_reply(token, os.fsencode(entry.name),
                                             self.attributes(entry), child):  # fmt: skip
                    return
            if len(batch) < LISTING_BATCH:
                return
            after = batch[-1]

    @mapped
    async def statfs(self, ctx: Any) -> Any:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = (self.tree.version.total_bytes + 4095) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = self.tree.version.file_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    @mapped
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if inode == ROOT_INODE and self.hint_socket:
            return [HINTS_XATTR]
        return [] if self._entry(inode).is_dir else list(XATTRS)

    @mapped
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode == ROOT_INODE and name == HINTS_XATTR and self.hint_socket:
            return self.hint_socket.encode()
        entry = self._entry(inode)
        if entry.is_dir or name not in XATTRS:
            raise pyfuse3.FUSEError(errno.ENODATA)
        if name == b"user.amlfs.source":
            return self.source_url(self.tree.path_of(entry)).encode()
        if name == b"user.amlfs.etag":
            return (entry.etag or "").encode()
        if name == b"user.amlfs.md5":
            if entry.md5 is None:
                raise pyfuse3.FUSEError(errno.ENODATA)
            return entry.md5.hex().encode()
        return self.tree.version.ref.encode()

    # --- data -------------------------------------------------------------------------

    @mapped
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        # The first open of the connection is the last the kernel sends: from then on it
        # opens files itself (keeping their page cache) and reads carry the inode.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def blob(self, entry: Entry) -> PinnedBlob:
        path = self.tree.path_of(entry)
        return PinnedBlob(
            source=self.source_url(path),
            relative=self.tree.relative_path(path),
            size=entry.size,
            etag=entry.etag or "",
            label=f"{self.tree.version.ref} {path}",
        )

    def _file(self, inode: int) -> ReadFile:
        file = self._files.get(inode)
        if file is not None:
            self._files.move_to_end(inode)
            return file
        entry = self._entry(inode)
        if entry.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._files[inode] = file = ReadFile(entry, self.blob(entry))
        if len(self._files) > FILES_KEPT:
            self._files.popitem(last=False)
        return file

    @mapped
    async def read(self, fh: int, off: int, size: int, inode: int) -> bytes:
        file = self._file(inode)
        entry = file.entry
        if off == 0:
            self.on_start(inode)
        depth = self.reader.depth  # deeper the slower storage answers, less under pressure
        if off == 0 and self.walk.on_start(entry.parent_id, entry.id):
            for item in self.tree.following(entry, files_ahead(depth)):  # a walk: next files too
                self._fetch_if_small(item)
        ahead = file.sequential.on_read(off, size, self.reader.block_size, entry.size, depth,
                                        self.reader.room_ahead)  # fmt: skip
        if ahead:  # under way beside this read's own fetch, not after it
            self.reader.prefetch(file.blob, ahead)
        return await self.reader.read(file.blob, off, size)

    def _fetch_if_small(self, entry: Entry) -> None:
        """A file that fits in one block is fetched whole ahead of a walk reaching it."""
        if not entry.is_dir and 0 < entry.size <= self.reader.block_size:
            self.reader.prefetch(self.blob(entry), range(1))

    async def forget(self, inode_list: Any) -> None:
        return None  # inodes are registry ids: nothing to free

    # --- everything that would change the tree: read-only ------------------------------

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = _read_only
