"""The amlfs:// fsspec filesystem: pinned dataset versions, read-only, without FUSE.

`amlfs://NAME:VERSION/PATH`, `amlfs://NAME/PATH` (the latest version, resolved at each
call; an open file keeps the version it was opened on) and `amlfs://NAME:VERSION@SNAP/PATH`.
`amlfs://` alone lists the datasets. Listings and file details come from the registry
alone, never from storage. Bytes come through the block reader and the block cache that
mounts of the same state folder use (amlfs.pinned_reads), each read conditional on the
pinned etag: a file that changed at its source fails with EIO, never returns other bytes.

Registered through the `fsspec.specs` entry point, so `fsspec.open("amlfs://…")` and
`pandas.read_csv("amlfs://weather:2/week 27/temps.csv")` find it. Options (as keyword
arguments or pandas' `storage_options`): `home` (the state folder; default as the
command line's), `cache_dir`, `cache_size`, `block_size`, `memory_cache`, `fetch_limit`,
`io_timeout`, with the defaults of `amlfs mount`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

from amlfs import pinned_reads
from amlfs.cache.readahead import FolderWalk, SequentialReads, files_ahead
from amlfs.catalog import open_registry
from amlfs.errors import NotFound, Pruned, SourceChanged, UserError
from amlfs.home import cache_dir as default_cache_dir
from amlfs.home import default_home, private_folder
from amlfs.mounts import MOUNT_DEFAULTS, MountOptions, check_block_size
from amlfs.reader import PinnedBlob, ReadFailed
from amlfs.registry import paths
from amlfs.registry.models import Datastore, Entry, Version
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry
from amlfs.units import parse_size

log = logging.getLogger(__name__)

PROTOCOL = "amlfs"
LISTING_PAGE = 1000  # entries asked of the registry at a time


@dataclass(frozen=True)
class Target:
    """What a path names: an entry of a version's tree."""

    name: str  # the path as the caller wrote it, without the protocol
    ref: str  # the version reference as written (NAME, NAME:V, NAME:V@SNAP)
    version: Version
    inner: str  # the path inside the version ('' for its root)
    entry: Entry


class AmlfsFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over the pinned versions of one state folder."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(self, home: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 cache_size: int | str = MOUNT_DEFAULTS["cache_size"],
                 block_size: int | str = MOUNT_DEFAULTS["block_size"],
                 memory_cache: int | str = MOUNT_DEFAULTS["memory_cache"],
                 fetch_limit: int = MOUNT_DEFAULTS["fetch_limit"],
                 io_timeout: float = MOUNT_DEFAULTS["io_timeout"],
                 **storage_options: Any) -> None:  # fmt: skip
        super().__init__(**storage_options)
        self.home = Path(home).expanduser() if home is not None else default_home()
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(self.home)
        self.settings = MountOptions(
            # Blocks found there are served as the versions' bytes: only ours will do.
            cache_dir=private_folder(folder, "cache folder"),
            cache_size=_size(cache_size, "cache_size"),
            block_size=check_block_size(_size(block_size, "block_size"), "block_size"),
            hot_bytes=_size(memory_cache, "memory_cache"),
            fetch_limit=int(fetch_limit),
            io_timeout=float(io_timeout),
        )
        self._local = threading.local()  # a registry connection per thread (and process)
        # Files started in listing order through a folder, as a mount spots them: the
        # next small files of that folder are then fetched ahead.
        self._folder_walk, self._walk_lock = FolderWalk(), threading.Lock()

    # --- paths -------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        elif path.startswith(f"{PROTOCOL}::"):
            path = path[len(PROTOCOL) + 2 :]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{name}"

    @property
    def registry(self) -> Registry:
        """This thread's connection to the registry. A connection is never used in another
        thread, nor after a fork (where it is dropped unused, not closed)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.registry = open_registry(self.home, offline=log.warning)
            local.pid = os.getpid()
        return local.registry

    def _target(self, path: str) -> Target:
        """The entry PATH names (FileNotFoundError if none); PATH has a version reference."""
        name = self._strip_protocol(path)
        ref, _, inner = name.partition("/")
        inner = "/".join(part for part in inner.split("/") if part)
        with _not_found(name):
            version = self.registry.resolve(ref)
            entry = _lookup(self.registry, version, inner)
        return Target(name, ref, version, inner, entry)

    # --- listings, from the registry -----------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict:
        name = self._strip_protocol(path)
        if not name:
            return {"name": "", "size": 0, "type": "directory"}
        target = self._target(name)
        return self._details(name, target.version, target.entry)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        name = self._strip_protocol(path)
        if not name:
            found = [{"name": v.dataset, "size": 0, "type": "directory", "version": v.ref}
                     for v in self.registry.list_datasets()]  # fmt: skip
        else:
            target = self._target(name)
            if not target.entry.is_dir:
                found = [self._details(name, target.version, target.entry)]
            else:
                found = [self._details(paths.join(name, child.name), target.version, child)
                         for child in self._children(target.entry)]  # fmt: skip
        return found if detail else [item["name"] for item in found]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> list | dict:  # fmt: skip
        """Below PATH: walked folder by folder in the registry (one indexed query each)."""
        name = self._strip_protocol(path)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        if not name:  # across datasets: the generic walk over ls
            return super().find(name, maxdepth=maxdepth, withdirs=withdirs, detail=detail)
        target = self._target(name)
        found: dict[str, dict] = {}
        if not target.entry.is_dir:
            found[name] = self._details(name, target.version, target.entry)
        else:
            if withdirs:
                found[name] = self._details(name, target.version, target.entry)
            for item in self._walk(name, target.version, target.entry, maxdepth):
                if withdirs or item["type"] == "file":
                    found[item["name"]] = item
        found = dict(sorted(found.items()))
        return found if detail else list(found)

    def _walk(self, name: str, version: Version, folder: Entry,
              maxdepth: int | None) -> Iterator[dict]:  # fmt: skip
        pending = [(name, folder, 1)]
        while pending:  # bounded: each folder of a finite tree once
            prefix, entry, depth = pending.pop()
            for child in self._children(entry):
                child_name = paths.join(prefix, child.name)
                yield self._details(child_name, version, child)
                if child.is_dir and (maxdepth is None or depth < maxdepth):
                    pending.append((child_name, child, depth + 1))

    def _children(self, folder: Entry) -> Iterator[Entry]:
        after = ""
        while True:  # bounded: pages of a finite folder, in name order
            page = self.registry.list_folder(folder.id, after, LISTING_PAGE)
            yield from page
            if len(page) < LISTING_PAGE:
                return
            after = page[-1].name

    @staticmethod
    def _details(name: str, version: Version, entry: Entry) -> dict:
        if entry.is_dir:
            return {"name": name, "size": 0, "type": "directory", "version": version.ref}
        return {
            "name": name, "size": entry.size, "type": "file", "version": version.ref,
            "etag": entry.etag, "md5": entry.md5.hex() if entry.md5 else None,
            "last_modified": entry.last_modified,
        }  # fmt: skip

    # --- bytes, through the block reader -------------------------------------------------

    def _source(self, path: str) -> tuple[Target, pinned_reads.Reads, PinnedBlob]:
        """The file PATH names, ready to read: its version's data must still exist."""
        target = self._target(path)
        if target.entry.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a folder", f"{PROTOCOL}://{target.name}")
        require_data(target.version)
        datastore = self.registry.get_datastore(target.version.datastore)
        reads, blob = self._blob(datastore, target.version, target.inner, target.entry)
        return target, reads, blob

    def _started(self, target: Target, reads: pinned_reads.Reads) -> None:
        """TARGET is opened, or read whole: if that continues a walk through its folder in
        listing order, its next small files are fetched ahead (as a mount does on a
        file's first read), so that a loop over a folder's files waits on fewer round
        trips. A failure here is only a missed read-ahead."""
        entry = target.entry
        with self._walk_lock:
            walking = entry.parent_id is not None and self._folder_walk.on_start(entry.parent_id,
                                                                          entry.id)  # fmt: skip
        if not walking:
            return
        block_size = reads.reader.block_size
        folder = target.inner.rpartition("/")[0]
        following = self.registry.list_folder(entry.parent_id, entry.name,
                                              files_ahead(reads.reader.depth))  # fmt: skip
        blobs = [reads.blob(paths.join(target.version.root, folder, e.name), e.size,
                            e.etag or "", f"{target.version.ref} {paths.join(folder, e.name)}")
                 for e in following if not e.is_dir and 0 < e.size <= block_size]  # fmt: skip
        if blobs:
            try:
                reads.prefetch_whole(blobs)
            except Exception as error:  # read-ahead is a guess: never fail the read for it
                log.debug("no read-ahead after %s: %s", target.name, error)

    def _blob(self, datastore: Datastore, version: Version, inner: str,
              entry: Entry) -> tuple[pinned_reads.Reads, PinnedBlob]:  # fmt: skip
        with _read_errors(f"{version.ref}/{inner}"):
            reads = pinned_reads.reads(datastore, self.settings)
        relative = paths.join(version.root, inner)
        return reads, reads.blob(relative, entry.size, entry.etag or "", f"{version.ref} {inner}")

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict | None = None,
              **kwargs: Any) -> AmlfsFile:  # fmt: skip
        if mode != "rb":
            _read_only("open for writing", path)
        target, reads, blob = self._source(path)
        self._started(target, reads)
        kwargs.pop("size", None)  # a file unpickled is opened again: the size is the pin's
        return AmlfsFile(self, target.name, reads.store.datastore, blob, block_size=block_size,
                         cache_options=cache_options, **kwargs)  # fmt: skip

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:  # fmt: skip
        target, reads, blob = self._source(path)
        lo, hi = _span(blob.size, start, end)
        if lo == 0:
            self._started(target, reads)
        with _read_errors(path):
            return reads.read(blob, lo, hi - lo)

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, max_gap: int | None = None,
                   on_error: str = "return", **kwargs: Any) -> list:  # fmt: skip
        """Each range read at once, straight from the reader (no file object per range)."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        starts = starts if isinstance(starts, list) else [starts] * len(paths)
        ends = ends if isinstance(ends, list) else [ends] * len(paths)
        if not len(paths) == len(starts) == len(ends):
            raise ValueError("paths, starts and ends must be of the same length")
        sources: dict[str, tuple[pinned_reads.Reads, PinnedBlob] | Exception] = {}
        for path in dict.fromkeys(paths):
            try:
                _, reads, blob = self._source(path)
                sources[path] = (reads, blob)
            except Exception as error:
                if on_error == "raise":
                    raise
                sources[path] = error
        results: list[Any] = [None] * len(paths)
        batches: dict[int, tuple[pinned_reads.Reads, list[int]]] = {}
        for index, path in enumerate(paths):
            source = sources[path]
            if isinstance(source, Exception):
                results[index] = source
                continue
            reads, _ = source
            batches.setdefault(id(reads), (reads, []))[1].append(index)
        for reads, indices in batches.values():
            wanted = []
            for index in indices:
                blob = sources[paths[index]][1]
                wanted.append((blob, *_span(blob.size, starts[index], ends[index])))
            for index, found in zip(indices, reads.read_many(wanted), strict=True):
                if isinstance(found, Exception):
                    found = _as_os_error(found, paths[index])
                    if on_error == "raise":
                        raise found
                results[index] = found
        return results

    # --- everything that would change a version: read-only -------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        _read_only("create a folder", path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        _read_only("create a folder", path)

    def rmdir(self, path: str) -> None:
        _read_only("remove a folder", path)

    def rm_file(self, path: str) -> None:
        _read_only("remove", path)

    def _rm(self, path: str) -> None:
        _read_only("remove", path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        _read_only("remove", path)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        _read_only("write", path)

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:  # fmt: skip
        _read_only("write", rpath)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        _read_only("copy to", path2)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:  # fmt: skip
        _read_only("move", path1)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        _read_only("touch", path)


class AmlfsFile(AbstractBufferedFile):
    """A pinned file, read-only and seekable. Without a buffer of its own by default
    (cache_type "none"): the reader keeps the blocks being read in memory and fetches
    ahead of a reader going straight through, so a second buffer here would only copy."""

    def __init__(self, fs: AmlfsFileSystem, path: str, datastore: Datastore, blob: PinnedBlob,
                 *, block_size: int | None = None, cache_type: str = "none",
                 cache_options: dict | None = None, **kwargs: Any) -> None:  # fmt: skip
        # What reads need is kept as plain data, not the process's reader: a file
        # inherited by a forked child reads through the child's own loop.
        self.datastore = datastore
        self.blob = blob
        self.stream = SequentialReads()
        self._reads: pinned_reads.Reads | None = None  # this process's, found at first read
        self._reads_pid: int | None = None
        super().__init__(fs, path, mode="rb", block_size=block_size or fs.settings.block_size,
                         cache_type=cache_type, cache_options=cache_options, size=blob.size,
                         **kwargs)  # fmt: skip

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _read_errors(self.path):
            if self._reads_pid != os.getpid():  # first read, or first in a forked child
                self._reads = pinned_reads.reads(self.datastore, self.fs.settings)
                self._reads_pid = os.getpid()
            return self._reads.read(self.blob, start, end - start, self.stream)

    def _upload_chunk(self, final: bool = False) -> bool:
        _read_only("write", self.path)

    def _initiate_upload(self) -> None:
        _read_only("write", self.path)


def open_pinned(version: Version, path: str, home: Path | None = None) -> AmlfsFile:
    """A binary file object over the pinned bytes of PATH in VERSION (as resolved by the
    caller: a snapshot reads its copy's bytes). Raises Pruned for a pruned version and
    FileNotFoundError for a path the version does not have."""
    require_data(version)
    fs = AmlfsFileSystem(home=home)
    inner = "/".join(part for part in path.split("/") if part)
    name = paths.join(version.ref, inner)
    registry = fs.registry
    with _not_found(name):
        entry = _lookup(registry, version, inner)
    if entry.is_dir:
        raise IsADirectoryError(errno.EISDIR, "is a folder", f"{PROTOCOL}://{name}")
    datastore = registry.get_datastore(version.datastore)
    _, blob = fs._blob(datastore, version, inner, entry)
    return AmlfsFile(fs, name, datastore, blob)


def _size(value: int | str, option: str) -> int:
    return value if isinstance(value, int) else parse_size(str(value), option)


def _span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """[START, END) as fsspec means it (None: the file's start or end; negative: from
    the end), clipped to the file."""
    lo = 0 if start is None else (size + start if start < 0 else start)
    hi = size if end is None else (size + end if end < 0 else end)
    lo = min(max(lo, 0), size)
    return lo, min(max(hi, lo), size)


def _read_only(what: str, path: Any) -> None:
    raise PermissionError(errno.EROFS, f"cannot {what}: amlfs:// serves pinned versions "
                          "read-only", f"{PROTOCOL}://{path}")  # fmt: skip


def _as_os_error(error: Exception, path: str) -> Exception:
    """A failed read as an OSError (EIO) naming the file; other errors as they are."""
    if isinstance(error, ReadFailed | SourceChanged):
        name = f"{PROTOCOL}://{AmlfsFileSystem._strip_protocol(path)}"
        failed = OSError(errno.EIO, f"{name}: {error}")
        failed.__cause__ = error
        return failed
    return error


@contextmanager
def _read_errors(path: str) -> Iterator[None]:
    """Failed reads become OSError(EIO) naming PATH."""
    try:
        yield
    except (ReadFailed, SourceChanged) as error:
        raise _as_os_error(error, path) from error


@contextmanager
def _not_found(name: str) -> Iterator[None]:
    """Registry answers about NAME as fsspec callers expect them: an unknown dataset,
    version, snapshot or path is FileNotFoundError; a malformed reference, ValueError."""
    try:
        yield
    except NotFound as error:
        raise FileNotFoundError(errno.ENOENT, str(error), f"{PROTOCOL}://{name}") from None
    except Pruned:
        raise
    except UserError as error:
        raise ValueError(f"{PROTOCOL}://{name}: {error}") from None


def _lookup(registry: Registry, version: Version, inner: str) -> Entry:
    """The entry at INNER ('' for the root) in VERSION's tree, or NotFound."""
    entry = registry.root(version)
    for part in inner.split("/") if inner else []:
        found = registry.lookup(entry.id, part) if entry.is_dir else None
        if found is None:
            raise NotFound(f"{version.ref} has no {inner!r}")
        entry = found
    return entry
