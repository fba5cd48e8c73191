"""pyfuse3 operations of an output mount: a writable folder whose files are uploaded
when closed. A thin layer over OutputFiles, which holds the semantics."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pyfuse3

from amlfs.fuse.operations import CountedOperations, mapped
from amlfs.transfer.staged import Node, OutputFiles

# Only this daemon changes the tree, but sizes change while files are written: short.
ATTR_TIMEOUT_S = 1.0


class OutputOperations(CountedOperations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, files: OutputFiles, block_size: int = 1 << 20):
        super().__init__()
        self.files = files
        self.block_size = block_size
        self.uid, self.gid = os.getuid(), os.getgid()
        self._open: dict[int, tuple[Node, bool]] = {}
        self._next_fh = 1

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        if node.is_dir:
            attrs.st_mode = stat.S_IFDIR | node.mode
            attrs.st_nlink = 2
        else:
            attrs.st_mode = stat.S_IFREG | node.mode
            attrs.st_nlink = 1
            attrs.st_size = node.size
            attrs.st_blocks = (node.size + 511) // 512
        attrs.st_blksize = self.block_size
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.entry_timeout = attrs.attr_timeout = ATTR_TIMEOUT_S
        return attrs

    def _handle(self, node: Node, write: bool) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = (node, write)
        return pyfuse3.FileInfo(fh=fh)

    def _opened(self, fh: int) -> tuple[Node, bool]:
        opened = self._open.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return opened

    @staticmethod
    def _name(name: bytes) -> str:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:  # stored names are UTF-8
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    # --- the tree -------------------------------------------------------------------

    @mapped
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        folder = self.files.node(parent_inode)
        if name == b".":
            return self.attributes(folder)
        if name == b"..":
            return self.attributes(self.files.node(folder.parent))
        return self.attributes(self.files.lookup(parent_inode, self._name(name)))

    @mapped
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.attributes(self.files.node(inode))

    @mapped
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        node = self.files.node(inode)
        if fields.update_size:
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            await self.files.truncate(node, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self.attributes(node)

    @mapped
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return self.attributes(self.files.mkdir(parent_inode, self._name(name), mode))

    @mapped
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.files.rmdir(parent_inode, self._name(name))

    @mapped
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.files.unlink(parent_inode, self._name(name))

    @mapped
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:  # fmt: skip
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.files.rename(
            parent_inode_old, self._name(name_old), parent_inode_new, self._name(name_new),
            replace_existing=not flags & pyfuse3.RENAME_NOREPLACE,
        )  # fmt: skip

    @mapped
    async def opendir(self, inode: int, ctx: Any) -> int:
        if not self.files.node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @mapped
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """Entries in name order; the offset is the position in that order."""
        children = self.files.children(self.files.node(fh))
        for position, node in enumerate(children[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, node.name.encode(), self.attributes(node),
                                         position):  # fmt: skip
                return

    @mapped
    async def releasedir(self, fh: int) -> None:
        return None

    @mapped
    async def statfs(self, ctx: Any) -> Any:
        """The staging disk's space: what can still be written before ENOSPC."""
        found = os.statvfs(self.files.staging)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):  # fmt: skip
            setattr(data, name, getattr(found, name))
        return data

    async def forget(self, inode_list: Any) -> None:
        return None

    # --- contents -------------------------------------------------------------------

    @mapped
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:  # fmt: skip
        node = self.files.create(parent_inode, self._name(name), stat.S_IMODE(mode))
        await self.files.open(node, write=True, truncate=False)
        return self._handle(node, True), self.attributes(node)

    @mapped
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        node = self.files.node(inode)
        write = bool(flags & (os.O_WRONLY | os.O_RDWR))
        await self.files.open(node, write=write, truncate=bool(flags & os.O_TRUNC) and write)
        return self._handle(node, write)

    @mapped
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node, _ = self._opened(fh)
        return await self.files.read(node, off, size)

    @mapped
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node, write = self._opened(fh)
        if not write:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.files.write(node, off, buf)

    @mapped
    async def flush(self, fh: int) -> None:
        """close(): the file is journaled (durable) before this returns, or close fails."""
        node, write = self._opened(fh)
        if write:
            await self.files.commit(node)

    @mapped
    async def fsync(self, fh: int, datasync: bool) -> None:
        node, write = self._opened(fh)
        if write:
            await self.files.commit(node)

    @mapped
    async def release(self, fh: int) -> None:
        opened = self._open.pop(fh, None)
        if opened is not None:
            self.files.release(*opened)

    # --- not supported: an output holds files and folders only --------------------------

    async def _not_supported(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    symlink = link = mknod = _not_supported
