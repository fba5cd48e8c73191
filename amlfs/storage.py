"""Datastores to storage clients: credentials, listing and pinning, reads, retries.

The only module that talks to fsspec and adlfs (listing, registration, writes); pinned
blobs on Azure are read through amlfs.objects (obstore), which costs a fraction of the
SDK per request. fsspec and the Azure SDK are imported only when first used, so that a
mount daemon, which only reads, never pays their half second of imports. Secrets are
read from the environment when a datastore is opened, used in memory, and scrubbed from
every error it raises.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

from amlfs.errors import (
    NameTaken,
    NotAsStored,
    SourceChanged,
    StorageError,
    StorageUnreachable,
    UserError,
)
from amlfs.home import caller_umask
from amlfs.localfs import copy_prefix, fsync_folder
from amlfs.registry import paths, pins
from amlfs.registry.models import Datastore, PinnedFile

if TYPE_CHECKING:
    import fsspec
    from typing_extensions import Buffer

    from amlfs.objects import BlobDocuments, BlobReads, Credential

log = logging.getLogger(__name__)

AZURE_PROTOCOLS = frozenset({"az", "abfs", "abfss"})
_ENV_OPTION = {
    "connection-string-env": "connection_string",
    "account-key-env": "account_key",
    "sas-token-env": "sas_token",
}

# The Azure SDK's default (4 tries, 15 s + 3^n backoff) makes an unreachable store look
# like a hang for a minute and a half; these give up in about eight seconds.
AZURE_RETRY = {"total_retries": 3, "connect_retries": 3, "read_retries": 3,
               "status_retries": 3, "initial_backoff": 0.5, "increment_base": 2}  # fmt: skip
AZURE_TIMEOUTS = {"connection_timeout": 10, "read_timeout": 60}
# Requests in flight for one large blob's transfer; small blobs take one request anyway.
BLOB_CONCURRENCY = 4
# A server-side copy within one account is usually done when it is acknowledged; a large
# one may go on in the background, and is waited for (polled) up to this long.
COPY_TIMEOUT_S = 1800.0
COPY_BUFFER = 4 * 2**20
# Files asked about or hashed at once while pinning, where a listing lacks their size or
# etag (an http server's folder index gives names only; one that sends no ETag has each
# file read whole). Each holds one HASH_CHUNK in memory.
PIN_WORKERS = 8
FETCH_CONCURRENCY = 32  # small documents read at once (the catalog's)
HASH_CHUNK = 2**20
# A range read in pieces from this size up is streamed (see read_pinned_pieces): its
# pieces are then large, and gathering the whole answer first would copy it once more.
STREAMED_FROM = 2**20
STREAM_PIECE = 8 * 2**20  # a piece of stream_pinned off Azure (obstore's pieces on it)
WEB_PROTOCOLS = frozenset({"http", "https"})
# Failures of the system calls that open a connection (or reach a network filesystem's
# server): the store cannot be reached at all. Not a reset or a timeout of a connection
# that was made: the store was there.
UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
                                errno.ENOTCONN})  # fmt: skip
# How obstore (object_store over hyper) says that no connection could be made: hyper's
# connect error (refused, connect timeout, DNS) in the error's debug text, or
# object_store's own "connect" kind.
OBSTORE_CONNECT_MARKERS = ("ConnectError(", "kind: Connect,")
OBSTORE_REASONS = (("ConnectionRefused", "connection refused"), ("dns error", "name not resolved"),
                   ("TimedOut", "connect timed out"))  # fmt: skip
# Errors of the Azure SDK and aiohttp (adlfs, fsspec's http) that say the same, by name so
# that a daemon need not import those packages to classify: a connect that timed out, a
# name not resolved. (Refused connections carry their errno.)
CONNECT_FAILURES = frozenset({"ServiceRequestTimeoutError", "ConnectionTimeoutError",
                              "ClientConnectorDNSError"})  # fmt: skip


def protocol_of(url: str) -> str:
    return urlsplit(url).scheme or "file"


def check_url(url: str) -> str:
    """A datastore URL whose protocol fsspec knows; returned without a trailing '/'."""
    protocol = protocol_of(url)
    if "://" not in url:
        raise UserError(f"datastore URL {url!r} needs a protocol, e.g. az://container/prefix")
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise UserError(f"datastore URL {url!r}: unsupported protocol {protocol!r}") from exc
    if protocol == "file" and not urlsplit(url).path.startswith("/"):
        raise UserError(f"datastore URL {url!r}: a file:// URL needs an absolute path")
    stripped = url.rstrip("/")
    # Keep the slash of a bare root such as file:/// (nothing after "://" without it).
    return stripped if stripped.partition("://")[2] else url


def default_credential(url: str) -> str:
    """What a datastore uses when no credential option is given."""
    return "default" if protocol_of(url) in AZURE_PROTOCOLS else "none"


def check_credential(ds: Datastore) -> None:
    """Reject credential settings that cannot work with the datastore's protocol."""
    azure = protocol_of(ds.url) in AZURE_PROTOCOLS
    if not azure and ds.credential != "none":
        raise UserError(
            f"datastore {ds.name!r}: {ds.credential} credentials apply to Azure URLs "
            "(az://, abfs://) only"
        )
    if ds.credential_env is not None and not ds.credential_env.isidentifier():
        raise UserError(f"{ds.credential_env!r} is not an environment variable name")


# Called with the number of files just found, as a listing goes on.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Listing:
    """The files one source path matched, and the folder it is rooted at."""

    base: str  # folder the source stands for: itself, a file's parent, a glob's fixed part
    files: list[PinnedFile]  # paths relative to the datastore root


class Store:
    """A datastore opened for use: an fsspec filesystem rooted at the datastore's URL and,
    on Azure, the reader of pinned blobs."""

    def __init__(self, ds: Datastore, env: Mapping[str, str] = os.environ, *,
                 reads_only: bool = False):  # fmt: skip
        """READS_ONLY: the store is used for read_pinned, download_pinned and the small
        documents (create, replace, fetch, list_etags) alone (a mount daemon, a download,
        the catalog): on Azure the fsspec filesystem, which those do not need, is then
        made on first use, if ever."""
        self.datastore = ds
        self._options, self._secrets = _storage_options(ds, env)
        if self.azure:
            self.root = _azure_root(ds.url)
            with self._errors("open"):
                self._blobs = _blob_reads(ds, self.root, self._options)
        if not (self.azure and reads_only):
            self.fs  # noqa: B018 (made now: a store that cannot be opened fails here)

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        from fsspec.core import url_to_fs

        with self._errors("open"):
            fs, root = url_to_fs(self.datastore.url, skip_instance_cache=True, **self._options)
        if self.azure:
            _tune_azure(fs)
        else:
            self.root = root.rstrip("/")
        return fs

    def full_path(self, relative: str) -> str:
        return paths.join(self.root, relative) if relative else self.root

    def list_source(self, source: str, progress: Progress | None = None) -> Listing:
        """Every file below SOURCE (a folder, a file or a glob, relative to the datastore).
        PROGRESS, if given, hears how many more files were found as listing goes on."""
        progress = progress or (lambda _found: None)
        source = paths.normalise_source(source)
        full = self.full_path(source)
        with self._errors(f"list {source or '/'}"):
            if paths.has_glob(source):
                base = paths.glob_base(source)
                infos = []
                for info in self.fs.glob(full, detail=True).values():
                    if info["type"] == "directory":
                        infos += self._find(info["name"], progress)
                    else:
                        infos.append(info)
                        progress(1)
            else:
                info = self._info(full)
                if info is None:
                    infos, base = [], source
                elif info["type"] == "directory":
                    infos, base = self._find(full, progress), source
                else:
                    infos, base = [info], paths.parent(source)
            files = self._pin_all([info for info in infos if info.get("type") != "directory"])
        return Listing(base, files)

    @property
    def identity(self) -> str:
        """Names the store across datastores and machines: the account (when there is
        one) and the URL, so that the same blob is the same cache entry everywhere."""
        if self.azure:
            # What adlfs takes for the account, so that cache entries stay where they are.
            account = self.datastore.account_name or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        else:
            account = getattr(self.fs, "account_name", None)
        account = account or ""
        return f"{protocol_of(self.datastore.url)}://{account}@{self.root}"

    def source_name(self, relative: str) -> str:
        """The blob's name in the block cache and in the xattrs of a mount."""
        return f"{self.identity}/{relative}"

    def read_pinned(self, relative: str, start: int, end: int, etag: str) -> Buffer:
        """Bytes [start, end) of a pinned file, only if it still has ETAG: bytes, or on
        Azure the client's buffer (read through memoryview, without a copy).

        On Azure the read is conditional (If-Match), so a changed blob fails the request
        itself; elsewhere (and on Azure in a child forked after obstore started, see
        _objects) the etag is checked after the read, so bytes that changed while being
        read are never returned. Raises SourceChanged or StorageError.
        A file pinned by content is never read by range (nothing could check the range):
        see download_pinned.
        """
        if pins.pinned_md5(etag) is not None:
            raise ValueError(f"{relative} is pinned by content: it is read whole, and checked")
        full = self.full_path(relative)
        with self._errors(f"read {relative}"):
            if self._objects:
                return self._blobs.read(_blob_name(full), start, end, etag)
            data = self.fs.cat_file(full, start, end)
            info = self._info(full)
            if info is None or _etag(info) != etag:
                raise SourceChanged(f"{relative} changed since it was pinned")
            return data

    def read_pinned_pieces(self, relative: str, start: int, lengths: list[int], etag: str
                           ) -> Iterator[bytes]:  # fmt: skip
        """Consecutive pieces of a pinned file from START, of these LENGTHS, only if it
        still has ETAG (as read_pinned), each as soon as it is in: on Azure from one
        streamed request, each piece joined once out of the answer's chunks; elsewhere,
        and for a short range, one read, cut (the caller checks the pieces' lengths).
        Raises SourceChanged or StorageError; ValueError (at the first piece) for a file
        pinned by content, which is never read by range (see read_pinned)."""
        if pins.pinned_md5(etag) is not None:
            raise ValueError(f"{relative} is pinned by content: it is read whole, and checked")
        total = sum(lengths)
        if self._objects and total >= STREAMED_FROM:
            full = self.full_path(relative)
            with self._errors(f"read {relative}"):
                yield from self._blobs.read_pieces(_blob_name(full), start, lengths, etag)
            return
        yield from cut(self.read_pinned(relative, start, start + total, etag), lengths)

    def probe(self, relative: str) -> None:
        """One cheap request about RELATIVE (a pinned file's head; on Azure one try, given
        up within seconds): returns if the store answered, whatever the answer (the file
        changed or gone, an error of the service); raises StorageUnreachable if the store
        cannot be reached."""
        full = self.full_path(relative)
        try:
            with self._errors(f"reach {relative}"):
                if self._objects:
                    self._blobs.probe(_blob_name(full))
                else:
                    self.fs.info(full)
        except StorageUnreachable:
            raise
        except (StorageError, SourceChanged):
            return  # an answer

    @property
    def azure(self) -> bool:
        return protocol_of(self.datastore.url) in AZURE_PROTOCOLS

    @property
    def _objects(self) -> bool:
        """Whether pinned blobs are read through obstore (amlfs.objects): on Azure, unless
        this process was forked after obstore's runtime started, where reads go through
        fsspec and the etag is checked after each, as on other stores."""
        return self.azure and self._blobs.usable

    def download_pinned(self, relative: str, etag: str, local: Path) -> None:
        """Write the whole pinned file to LOCAL, only if it still has ETAG (as read_pinned);
        a file pinned by content (see amlfs.registry.pins), only if what was written has
        the pinned MD5. LOCAL may hold a partial file if this raises; the caller owns
        cleaning it up."""
        full = self.full_path(relative)
        with self._errors(f"download {relative}"):
            md5 = pins.pinned_md5(etag)
            if md5 is not None:  # before the Azure case: a token is never sent as If-Match
                with open(local, "wb") as out:
                    found, _size = self._hash(full, out)
                if found != md5:
                    raise SourceChanged(f"{relative} changed since it was pinned (its MD5 differs)")
                return
            if self._objects:
                self._blobs.download(_blob_name(full), etag, local)
                return
            self.fs.get_file(full, str(local))
            info = self._info(full)
            if info is None or _etag(info) != etag:
                raise SourceChanged(f"{relative} changed since it was pinned")

    def stream_pinned(self, relative: str, etag: str, start: int) -> Iterator[Buffer]:
        """A pinned file's bytes from START to its end, in pieces, only if it still has
        ETAG: on Azure the one request is conditional; elsewhere the etag is checked after
        the last piece (SourceChanged then: the pieces given were not the pinned bytes).
        Not for a file pinned by content (see download_pinned)."""
        if pins.pinned_md5(etag) is not None:
            raise ValueError(f"{relative} is pinned by content: it is read whole, and checked")
        full = self.full_path(relative)
        with self._errors(f"download {relative}"):
            if self.azure:
                yield from self._blobs.stream(_blob_name(full), etag, start)
                return
            with self.fs.open(full, "rb") as source:
                source.seek(start)
                while piece := source.read(STREAM_PIECE):
                    yield piece
            info = self._info(full)
            if info is None or _etag(info) != etag:
                raise SourceChanged(f"{relative} changed since it was pinned")

    def upload(self, local: Path | BinaryIO, relative: str, md5: bytes | None = None, *,
               size: int | None = None, if_match: str | None = None) -> PinnedFile:  # fmt: skip
        """Store LOCAL (a path, or a file open for reading) at RELATIVE and return it pinned:
        its first SIZE bytes when given (an output mount's staged copy may have grown since
        the close being stored), else all of it.

        IF_MATCH: replace only a file with that etag (what amlfs itself stored there); a
        name holding anything else raises NotAsStored. Without it, whatever is there is
        replaced. A reader never sees a partial file: Azure commits a blob's blocks at once,
        and a local folder receives a temporary name that is renamed into place. MD5, when
        given, is stored as the blob's Content-MD5 so that later comparisons need no
        download. Stores other than Azure and local folders cannot be written
        conditionally: there IF_MATCH is checked just before the write.
        """
        full = self.full_path(relative)
        with self._errors(f"upload {relative}"), _opened(local) as source:
            length = os.fstat(source.fileno()).st_size if size is None else size
            if self.azure:
                etag, modified = _run(self.fs, _azure_upload, full, source, length, md5,
                                      if_match)  # fmt: skip
                return PinnedFile(relative, length, etag, md5, _last_modified({"mtime": modified}))
            if self.local:
                _local_put(source, length, full, lambda: self._check(full, if_match))
            else:
                self._check(full, if_match)
                with self.fs.open(full, "wb") as out:
                    _copy_bytes(source, out, length)
            pinned = self._stored(relative)
            if pinned is None:
                raise StorageError(f"{relative}: not found right after its upload")
            return replace(pinned, md5=pinned.md5 or md5)

    def copy(self, source: str, target: str, *, source_etag: str,
             if_match: str | None = None) -> PinnedFile:  # fmt: skip
        """Copy a stored file within the datastore (server-side where the store can), only
        if SOURCE still has SOURCE_ETAG (else SourceChanged) and TARGET holds what IF_MATCH
        says (as upload). Returns the copy pinned once it is complete."""
        full_source, full_target = self.full_path(source), self.full_path(target)
        with self._errors(f"copy {source} to {target}"):
            if self.azure:
                _run(self.fs, _azure_copy, full_source, full_target, source_etag, if_match)
            else:
                with self.fs.open(full_source, "rb") as data:
                    if self._etag_of(full_source) != source_etag:
                        raise SourceChanged(f"{source} changed since amlfs stored it")
                    length = self.fs.info(full_source)["size"]
                    if self.local:
                        _local_put(data, length, full_target,
                                   lambda: self._check(full_target, if_match))  # fmt: skip
                    else:
                        self._check(full_target, if_match)
                        with self.fs.open(full_target, "wb") as out:
                            _copy_bytes(data, out, length)
            pinned = self._stored(target)
        if pinned is None:
            raise StorageError(f"{target}: not found right after it was copied")
        return pinned

    def stat(self, relative: str) -> PinnedFile | None:
        """The stored file at RELATIVE as it is now, or None."""
        with self._errors(f"stat {relative}"):
            return self._stored(relative)

    def delete(self, relative: str, if_match: str | None = None) -> bool:
        """Remove a stored file; with IF_MATCH, only if it has that etag (what amlfs stored
        there). Returns whether it removed it: False if it was gone already or, with
        IF_MATCH, holds something else now (a newer file that is not to be touched)."""
        full = self.full_path(relative)
        with self._errors(f"delete {relative}"):
            if self.azure:
                return _run(self.fs, _azure_delete, full, if_match)
            if if_match is not None and self._etag_of(full) != if_match:
                return False
            try:
                self.fs.rm_file(full)
            except FileNotFoundError:
                return False
            return True

    def remove_empty_folders(self, relative: str) -> None:
        """On a local folder, remove the folders at and below RELATIVE that are empty
        (after their files were deleted); object stores have no folders to remove. A
        folder that is not empty, or gone, is left as it is; links are not followed."""
        if not self.local or not relative.strip("/"):
            return  # the datastore's own folder stays, empty or not
        for folder, _subfolders, _files in os.walk(self.full_path(relative), topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def digest(self, relative: str) -> bytes | None:
        """The MD5 of the stored file at RELATIVE: its Content-MD5 where the store keeps
        one, else computed by reading it. None if there is no such file."""
        pinned = self.stat(relative)
        if pinned is None or pinned.md5 is not None:
            return None if pinned is None else pinned.md5
        with self._errors(f"read {relative}"), self.fs.open(self.full_path(relative)) as f:
            return hashlib.file_digest(f, "md5").digest()

    def read(self, relative: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a stored file, whatever its etag (files amlfs wrote)."""
        with self._errors(f"read {relative}"):
            return self.fs.cat_file(self.full_path(relative), start, end)

    # -- small documents written conditionally (the catalog, amlfs.catalog) -----------

    @property
    def conditional(self) -> bool:
        """Whether this store can create a name only if it is free and replace it only if
        it holds a given etag, atomically: Azure (If-None-Match, If-Match) and local
        folders (a hard link, which fails on a taken name; a lock file per folder)."""
        return self.azure or self.local

    def create(self, relative: str, data: bytes) -> str:
        """Store DATA at RELATIVE only if nothing is there, in one atomic step: the new
        etag, or NameTaken. Readers see all of DATA or nothing."""
        full = self.full_path(relative)
        with self._errors(f"create {relative}"):
            if self._objects:
                return self._documents.create(_blob_name(full), data)
            if self.azure:
                return _run(self.fs, _azure_put, full, data, None)
            self._local_only()
            folder = os.path.dirname(full)
            _make_folders(folder, 0o777 & ~caller_umask())
            partial = _local_partial(folder, data)
            try:
                os.link(partial, full)  # fails if the name is taken, whoever took it
            except FileExistsError:
                raise NameTaken(f"{relative} exists already") from None
            finally:
                os.unlink(partial)
            fsync_folder(folder)
            return _local_etag(os.stat(full))

    def replace(self, relative: str, data: bytes, if_match: str) -> str:
        """Store DATA at RELATIVE only if it holds IF_MATCH now (compare and swap): the new
        etag, or NotAsStored when another writer changed it first."""
        full = self.full_path(relative)
        with self._errors(f"replace {relative}"):
            if self._objects:
                return self._documents.replace(_blob_name(full), data, if_match)
            if self.azure:
                return _run(self.fs, _azure_put, full, data, if_match)
            self._local_only()
            folder = os.path.dirname(full)
            with _folder_lock(folder):
                try:
                    current = _local_etag(os.stat(full))
                except FileNotFoundError:
                    current = None
                if current != if_match:
                    raise NotAsStored(f"{relative} changed since it was read")
                partial = _local_partial(folder, data)
                os.replace(partial, full)
                fsync_folder(folder)
                return _local_etag(os.stat(full))

    def fetch(self, relative: str) -> tuple[bytes, str] | None:
        """The whole file at RELATIVE and the etag of exactly those bytes, or None."""
        full = self.full_path(relative)
        with self._errors(f"read {relative}"):
            if self._objects:
                return self._documents.fetch(_blob_name(full))
            if self.azure:
                return _run(self.fs, _azure_fetch, full)
            self._local_only()
            try:
                with open(full, "rb") as f:
                    return f.read(), _local_etag(os.fstat(f.fileno()))
            except FileNotFoundError:
                return None

    def fetch_many(self, relatives: list[str]) -> dict[str, tuple[bytes, str]]:
        """fetch() of each of RELATIVES, FETCH_CONCURRENCY at a time on Azure: the found
        ones by name."""
        if not relatives:
            return {}
        with self._errors(f"read {relatives[0]} and {len(relatives) - 1} more"):
            full = [self.full_path(relative) for relative in relatives]
            if self._objects:
                found = self._documents.fetch_many([_blob_name(f) for f in full],
                                                   FETCH_CONCURRENCY)  # fmt: skip
                return {r: got for r, got in zip(relatives, found, strict=True) if got}
            if self.azure:
                found = _run(self.fs, _azure_fetch_many, full)
                return {r: got for r, got in zip(relatives, found, strict=True) if got}
        return {r: got for r in relatives if (got := self.fetch(r)) is not None}

    def list_etags(self, prefix: str) -> dict[str, str]:
        """Every file below folder PREFIX, as its path relative to PREFIX -> its etag, from
        listings alone (5,000 names a request on Azure). amlfs's own temporary and lock
        files are left out."""
        full = self.full_path(prefix)
        with self._errors(f"list {prefix or '/'}"):
            if self._objects:
                blob = _blob_name(full)
                found = self._documents.list_etags(f"{blob}/" if blob else "")
            elif self.azure:
                found = _run(self.fs, _azure_list_etags, full)
            else:
                self._local_only()
                found = {}
                for folder, _subfolders, names in os.walk(full):
                    for name in names:
                        if name.startswith(LOCAL_PRIVATE):
                            continue
                        path = os.path.join(folder, name)
                        with contextlib.suppress(FileNotFoundError):
                            found[os.path.relpath(path, full)] = _local_etag(os.stat(path))
        return found

    @cached_property
    def _documents(self) -> BlobDocuments:
        return _blob_documents(self.datastore, self.root, self._options)

    def _local_only(self) -> None:
        if not self.local:
            raise UserError(
                f"datastore {self.datastore.name!r} ({protocol_of(self.datastore.url)}) cannot"
                " be written conditionally: use an Azure or a local-folder datastore"
            )

    @property
    def local(self) -> bool:
        return protocol_of(self.datastore.url) == "file"

    def _etag_of(self, full: str) -> str | None:
        info = self._info(full)
        return None if info is None or info.get("type") == "directory" else _etag(info)

    def _check(self, full: str, if_match: str | None) -> None:
        """Compare, just before acting: the name holds what IF_MATCH says (None: anything)."""
        if if_match is not None and self._etag_of(full) != if_match:
            raise NotAsStored(f"{self._relative(full)} is not what amlfs stored there"
                              " (changed outside amlfs)")  # fmt: skip

    def _relative(self, full: str) -> str:
        return paths.relative_to(self.root, full)

    def _find(self, full: str, progress: Progress) -> list[dict]:
        """Every file below folder FULL. On Azure, page by page (5,000 blobs a request)
        so that progress shows during a long listing; elsewhere fsspec's find."""
        if protocol_of(self.datastore.url) not in AZURE_PROTOCOLS:
            infos = list(self.fs.find(full, detail=True).values())
            progress(len(infos))
            return infos
        container, _, prefix = full.partition("/")
        pages = (
            self.fs.service_client.get_container_client(container)
            .list_blobs(name_starts_with=f"{prefix}/" if prefix else None, include=["metadata"])
            .by_page()
        )
        infos = []
        while (page := _run(self.fs, _next_page, pages)) is not None:
            infos += page
            progress(len(page))
        return infos

    def _stored(self, relative: str) -> PinnedFile | None:
        """The file at RELATIVE pinned as it is now (path RELATIVE), or None."""
        info = self._info(self.full_path(relative))
        if info is None or info.get("type") == "directory":
            return None
        pinned = self._pin(info)
        return None if pinned is None else replace(pinned, path=relative)

    def _info(self, full: str) -> dict | None:
        try:
            return self.fs.info(full)
        except FileNotFoundError:
            return None

    def _pin_all(self, infos: list[dict]) -> list[PinnedFile]:
        """The files of a listing pinned, each once, in listing order. Those that need
        requests of their own (see _pin) are pinned PIN_WORKERS at a time."""
        unique = list({info["name"]: info for info in infos}.values())  # a glob's `**` repeats
        slow = [info for info in unique if info.get("size") is None or _etag(info) is None]
        pinned = {}
        if slow:
            with ThreadPoolExecutor(min(PIN_WORKERS, len(slow))) as pool:
                names = [info["name"] for info in slow]
                pinned = dict(zip(names, pool.map(self._pin, slow), strict=True))
        files = [pinned[i["name"]] if i["name"] in pinned else self._pin(i) for i in unique]
        return [f for f in files if f is not None]

    def _pin(self, info: dict) -> PinnedFile | None:
        """The pinned record of one listed file, its path relative to the datastore. A
        listing without the file's size (an http folder index) is completed by asking
        about the file; a file that has no etag nor mtime even then is read whole and
        pinned by its content (amlfs.registry.pins)."""
        if _is_folder_marker(info):
            return None
        if info.get("size") is None:  # a listing of names only: ask about the file
            info = self.fs.info(info["name"])
        name = self.fs._strip_protocol(info["name"]).rstrip("/")
        size, etag, md5 = info.get("size"), _etag(info), _md5(info)
        if etag is None:
            md5, read = self._hash(info["name"], size=size)
            if size is not None and read != int(size):
                raise StorageError(f"{name}: {read} bytes read, {size} announced (changing?)")
            size, etag = read, pins.content_etag(md5)
        return PinnedFile(
            path=paths.relative_to(self.root, name),
            size=int(size),
            etag=etag,
            md5=md5,
            last_modified=_last_modified(info),
        )

    def _hash(self, full: str, out: BinaryIO | None = None, *,
              size: int | None = None) -> tuple[bytes, int]:  # fmt: skip
        """The MD5 and size of the file FULL, read once from its start in HASH_CHUNKs (one
        request on http, no range support needed; SIZE, if known, spares a HEAD request),
        each chunk also written to OUT if given."""
        digest, read = hashlib.md5(), 0
        web = protocol_of(self.datastore.url) in WEB_PROTOCOLS
        with self.fs.open(full, "rb", **({"block_size": 0, "size": size} if web else {})) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                read += len(chunk)
                if out is not None:
                    out.write(chunk)
        return digest.digest(), read

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn any storage failure into a StorageError with the secrets scrubbed out."""
        try:
            yield
        except (UserError, StorageError, SourceChanged, NameTaken):
            raise
        except FileNotFoundError:
            raise SourceChanged(f"{what}: the file is gone from the datastore") from None
        except PermissionError as exc:
            raise StorageError(self._scrub(f"{what}: access denied ({exc})")) from None
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            if getattr(exc, "status_code", None) == 403 or type(exc).__name__ == (
                "PermissionDeniedError"  # obstore's
            ):  # the store answered: not allowed
                detail = f"access denied (these credentials do not allow it): {detail}"
            reason = unreachable(exc)
            if reason is not None:
                raise StorageUnreachable(self._scrub(
                    f"datastore {self.datastore.name!r}: cannot {what}: {reason}: {detail}"
                )) from None  # fmt: skip
            raise StorageError(
                self._scrub(f"datastore {self.datastore.name!r}: cannot {what}: {detail}")
            ) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def cut(data: Buffer, lengths: list[int]) -> Iterator[bytes]:
    """DATA in consecutive pieces of these LENGTHS, each bytes of its own (DATA itself if
    it is bytes and one piece); short or empty at the end if DATA is short."""
    if len(lengths) == 1 and isinstance(data, bytes):
        yield data
        return
    view = memoryview(data)
    at = 0
    for length in lengths:
        yield bytes(view[at : at + length])
        at += length


def unreachable(error: BaseException) -> str | None:
    """Why the store could not be reached at all, if ERROR (raised by a storage client)
    says so: connection refused, connect timed out, name not resolved, no route. None if
    the store answered, with whatever error. Looks through the errors ERROR wraps."""
    seen: BaseException | None = error
    for _depth in range(16):  # chains are short; a cycle is not followed forever
        if seen is None:
            return None
        if isinstance(seen, socket.gaierror):
            return "name not resolved"
        if isinstance(seen, OSError) and seen.errno in UNREACHABLE_ERRNOS:
            return os.strerror(seen.errno).lower()  # also aiohttp's errors, OSErrors too
        names = {k.__name__ for k in type(seen).__mro__}
        if names & CONNECT_FAILURES:
            return "name not resolved" if "ClientConnectorDNSError" in names else (
                "connect timed out")  # fmt: skip
        if type(seen).__module__.startswith("obstore"):
            text = str(seen)
            if any(marker in text for marker in OBSTORE_CONNECT_MARKERS):
                return next((reason for clue, reason in OBSTORE_REASONS if clue in text),
                            "cannot connect")  # fmt: skip
        seen = seen.__cause__ or seen.__context__
    return None


def _run(fs: fsspec.AbstractFileSystem, coroutine: Callable, *args: object) -> object:
    """COROUTINE(FS, *ARGS) run to its end on the filesystem's event loop (fsspec's)."""
    from fsspec.asyn import sync

    return sync(fs.loop, coroutine, fs, *args)


async def _azure_upload(
    fs: fsspec.AbstractFileSystem,
    full: str,
    source: BinaryIO,
    length: int,
    md5: bytes | None,
    if_match: str | None,
) -> tuple[str, datetime]:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from azure.storage.blob import ContentSettings

    container, blob, _ = fs.split_path(full)
    condition = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
    async with fs.service_client.get_blob_client(container, blob) as client:
        try:
            result = await client.upload_blob(
                source, length=length, overwrite=True, max_concurrency=BLOB_CONCURRENCY,
                content_settings=ContentSettings(content_md5=bytearray(md5) if md5 else None),
                **(condition if if_match else {}),
            )  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError):
            raise NotAsStored(
                f"{full} is not what amlfs stored there (changed outside amlfs)"
            ) from None
    fs.invalidate_cache()
    return str(result["etag"]), result["last_modified"]


async def _azure_put(fs: fsspec.AbstractFileSystem, full: str, data: bytes,
                     if_match: str | None) -> str:  # fmt: skip
    """DATA to the blob FULL: only if it does not exist (IF_MATCH None: If-None-Match: *),
    else only if it has IF_MATCH. One Put Blob, committed at once."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

    container, blob, _ = fs.split_path(full)
    if if_match is None:
        condition = {"overwrite": False}
    else:
        condition = {"overwrite": True, "etag": if_match,
                     "match_condition": MatchConditions.IfNotModified}  # fmt: skip
    async with fs.service_client.get_blob_client(container, blob) as client:
        try:
            result = await client.upload_blob(data, length=len(data), **condition)
        except ResourceExistsError:
            raise NameTaken(f"{full} exists already") from None
        except ResourceModifiedError:
            raise NotAsStored(f"{full} changed since it was read") from None
    return str(result["etag"])


async def _azure_fetch(fs: fsspec.AbstractFileSystem, full: str) -> tuple[bytes, str] | None:
    from azure.core.exceptions import ResourceNotFoundError

    container, blob, _ = fs.split_path(full)
    async with fs.service_client.get_blob_client(container, blob) as client:
        try:
            stream = await client.download_blob()
            return await stream.readall(), str(stream.properties.etag)
        except ResourceNotFoundError:
            return None


async def _azure_fetch_many(
    fs: fsspec.AbstractFileSystem, fulls: list[str]
) -> list[tuple[bytes, str] | None]:
    import asyncio

    limit = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(full: str) -> tuple[bytes, str] | None:
        async with limit:
            return await _azure_fetch(fs, full)

    return await asyncio.gather(*(one(full) for full in fulls))


async def _azure_list_etags(fs: fsspec.AbstractFileSystem, full: str) -> dict[str, str]:
    container, _, prefix = full.partition("/")
    prefix = f"{prefix}/" if prefix else ""
    client = fs.service_client.get_container_client(container)
    # A listing gives etags without the quotes that a read's and a write's carry.
    return {blob.name[len(prefix):]: f'"{str(blob.etag).strip(chr(34))}"'
            async for blob in client.list_blobs(name_starts_with=prefix or None)}  # fmt: skip


async def _azure_delete(fs: fsspec.AbstractFileSystem, full: str, if_match: str | None) -> bool:
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    container, blob, _ = fs.split_path(full)
    condition = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
    async with fs.service_client.get_blob_client(container, blob) as client:
        try:
            await client.delete_blob(**(condition if if_match else {}))
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
    fs.invalidate_cache()
    return True


async def _azure_copy(fs: fsspec.AbstractFileSystem, full_source: str, full_target: str,
                      source_etag: str, if_match: str | None) -> None:  # fmt: skip
    import asyncio

    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

    container, blob, _ = fs.split_path(full_source)
    target_container, target_blob, _ = fs.split_path(full_target)
    condition = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
    source = fs.service_client.get_blob_client(container, blob)
    async with source, fs.service_client.get_blob_client(target_container, target_blob) as target:
        try:
            copy = await target.start_copy_from_url(
                source.url, source_etag=source_etag,
                source_match_condition=MatchConditions.IfNotModified,
                **(condition if if_match else {}),
            )  # fmt: skip
        except ResourceNotFoundError:
            raise SourceChanged(f"{full_source} is gone from the datastore") from None
        except ResourceModifiedError:
            # Either side's condition failed: say which, so that a changed source is not
            # reported as a changed target.
            props = await source.get_blob_properties()
            if props.etag != source_etag:
                raise SourceChanged(f"{full_source} changed since amlfs stored it") from None
            raise NotAsStored(f"{full_target} is not what amlfs stored there") from None
        status, deadline = copy.get("copy_status"), time.monotonic() + COPY_TIMEOUT_S
        while status == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = (await target.get_blob_properties()).copy.status
        if status != "success":
            raise StorageError(f"copy of {full_source} to {full_target} ended {status}")
    fs.invalidate_cache()


@contextlib.contextmanager
def _opened(local: Path | BinaryIO) -> Iterator[BinaryIO]:
    """LOCAL open for reading, at its start (a retried upload sends it from the start)."""
    if not isinstance(local, Path):
        local.seek(0)
        yield local
        return
    with open(local, "rb") as source:
        yield source


def _copy_bytes(source: BinaryIO, out: BinaryIO, length: int) -> None:
    """Exactly LENGTH bytes of SOURCE (at its start) to OUT, through Python: for files
    of stores other than local folders."""
    while length > 0:
        chunk = source.read(min(COPY_BUFFER, length))
        if not chunk:
            raise StorageError(f"{getattr(source, 'name', 'source')}: shorter than expected")
        out.write(chunk)
        length -= len(chunk)


def _make_folders(folder: str, mode: int) -> None:
    """FOLDER and its missing parents, each with MODE (set exactly: amlfs runs under a
    private umask, and these folders are the user's)."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another upload made it meanwhile
            os.mkdir(path)
            os.chmod(path, mode)


def _local_put(source: BinaryIO, length: int, full: str, check: Callable[[], None]) -> None:
    """LENGTH bytes of SOURCE to the local file FULL: written under a temporary name of
    its own beside it (created exclusively: it can be no one else's file, and it is short
    whatever FULL's length), synced, then compared (CHECK raises if FULL is not what it
    must be), renamed into place, and the rename synced: once this returns, the file is
    there also after a power cut, as a blob is once its upload returns."""
    folder = os.path.dirname(full)
    umask = caller_umask()  # the user's data, not amlfs's state: the user's modes
    _make_folders(folder, 0o777 & ~umask)
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".amlfs-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o666 & ~umask)
            try:
                source_fd = source.fileno()
            except (AttributeError, io.UnsupportedOperation):  # not a local file
                _copy_bytes(source, out, length)
                out.flush()
            else:
                copy_prefix(source_fd, out.fileno(), length)
            os.fsync(out.fileno())
        check()
        os.replace(partial, full)
        fsync_folder(folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


LOCAL_PRIVATE = ".amlfs-"  # names of amlfs's temporary and lock files in a local folder


def _local_etag(st: os.stat_result) -> str:
    """A local document's etag: every write of one is a new file (linked or renamed into
    place), so its inode and its times in ns tell two writes apart even within one clock
    tick and with the same size, where mtime and size alone would not."""
    return f"ino-{st.st_ino}-mtime-{st.st_mtime_ns}-ctime-{st.st_ctime_ns}-size-{st.st_size}"


def _local_partial(folder: str, data: bytes) -> str:
    """DATA in a new file of its own in FOLDER, synced: its name (the caller moves it)."""
    fd, partial = tempfile.mkstemp(dir=folder, prefix=LOCAL_PRIVATE, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o666 & ~caller_umask())
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return partial


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """An exclusive lock over the files of FOLDER, held by processes of any machine that
    shares it (flock on a lock file there: local and NFSv4 folders)."""
    import fcntl

    fd = os.open(os.path.join(folder, f"{LOCAL_PRIVATE}lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def _next_page(fs: fsspec.AbstractFileSystem, pages: object) -> list[dict] | None:
    """The next page of an Azure listing as adlfs info dicts (adlfs's own conversion, so
    that they match what its info() and find() return), or None at the end."""
    try:
        page = await pages.__anext__()
    except StopAsyncIteration:
        return None
    return await fs._details([blob async for blob in page])


def _storage_options(ds: Datastore, env: Mapping[str, str]) -> tuple[dict, list[str]]:
    """fsspec options for DS, and the secret values they contain."""
    if protocol_of(ds.url) not in AZURE_PROTOCOLS:
        return {}, []
    options: dict = {"account_name": ds.account_name} if ds.account_name else {}
    options.update(AZURE_TIMEOUTS)
    if ds.credential in _ENV_OPTION:
        secret = env.get(ds.credential_env or "")
        if not secret:
            raise UserError(
                f"datastore {ds.name!r} reads its {_ENV_OPTION[ds.credential].replace('_', ' ')}"
                f" from ${ds.credential_env}, which is not set"
            )
        options[_ENV_OPTION[ds.credential]] = secret
        secrets = [secret]
        if ds.credential == "connection-string-env":
            # A connection string embeds its key or SAS; scrub those parts on their own too.
            embedded = ("accountkey=", "sharedaccesssignature=")
            secrets += [
                part.partition("=")[2]
                for part in secret.split(";")
                if part.lower().startswith(embedded)
            ]
        return options, [s for s in secrets if s]
    options["anon"] = ds.credential == "anonymous"
    return options, []


def _azure_root(url: str) -> str:
    """container/prefix of an Azure URL (az://container/prefix, or with @ACCOUNT.…): what
    adlfs makes of it, without importing it."""
    parts = urlsplit(url)
    container = parts.netloc.partition("@")[0]
    return f"{container}{parts.path}".strip("/")


def _blob_name(full: str) -> str:
    """The blob's name in its container, of a path below the root (container/name)."""
    return full.partition("/")[2]


def _blob_reads(ds: Datastore, root: str, options: Mapping[str, object]) -> BlobReads:
    """The reader of DS's pinned blobs, with the credential OPTIONS hold (its secret)."""
    from amlfs.objects import BlobReads

    return BlobReads(root.partition("/")[0], _azure_credential(ds, options))


def _blob_documents(ds: Datastore, root: str, options: Mapping[str, object]) -> BlobDocuments:
    """The writer of DS's small documents, with the credential OPTIONS hold."""
    from amlfs.objects import BlobDocuments

    return BlobDocuments(root.partition("/")[0], _azure_credential(ds, options))


def _azure_credential(ds: Datastore, options: Mapping[str, object]) -> Credential:
    from amlfs.objects import Credential

    secret = options.get(_ENV_OPTION.get(ds.credential, ""))
    return Credential(ds.credential, ds.account_name, secret)  # type: ignore[arg-type]


def _tune_azure(fs: fsspec.AbstractFileSystem) -> None:
    """Bound how long an unreachable Azure store takes to report failure.

    adlfs builds its service client without retry settings; the SDK's retry policy
    object is shared by every request of that client, so adjusting it here is enough.
    """
    policy = fs.service_client._config.retry_policy
    for name, value in AZURE_RETRY.items():
        setattr(policy, name, value)


def _is_folder_marker(info: dict) -> bool:
    """Zero-byte blobs that stand for folders (ADLS Gen2, some upload tools)."""
    metadata = info.get("metadata") or {}
    return info.get("size") == 0 and any(
        str(metadata.get(key, "")).lower() == "true" for key in ("hdi_isfolder", "is_directory")
    )


def _etag(info: dict) -> str | None:
    """The store's etag; for stores without one (local folders), a token of mtime and size
    that changes whenever the file is rewritten; None if the store reports neither (an
    http server that sends no ETag: its Last-Modified, to the second, is too coarse)."""
    for key in ("etag", "ETag", "generation"):
        if info.get(key):
            return str(info[key])
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if mtime is None:
        return None
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    return f"mtime-{float(mtime)!r}-size-{int(info['size'])}"


def _md5(info: dict) -> bytes | None:
    # adlfs gives a dict from listings and the SDK's ContentSettings from info().
    settings = info.get("content_settings")
    md5 = settings.get("content_md5") if settings is not None else None
    return bytes(md5) if md5 else None


def _last_modified(info: dict) -> str | None:
    value = info.get("last_modified") or info.get("LastModified") or info.get("mtime")
    if value is None and info.get("Last-Modified"):  # fsspec's http: the header as sent
        with contextlib.suppress(TypeError, ValueError):
            value = parsedate_to_datetime(info["Last-Modified"])
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return str(value) if value else None
