"""A snapshot's copy: the pinned bytes of a version copied below DATASTORE:PATH.

Layout: PATH/NAME/VERSION/SNAP-<8 random hex digits>/<the file's path in the version>.
The random part keeps two snapshots that share a name (on two machines, or one deleted
and taken again) from ever writing the same blob; a snapshot's delete removes exactly the
blobs its copy pinned.

Each file is copied server-side where the store can (the version and the copy in one
datastore, the file pinned by its store's etag): the copy is conditional on the pinned
etag, so it holds the pinned bytes or fails. Otherwise it is streamed through a local
file, read only if it still has its pinned etag (or, pinned by content, if its MD5 is the
pinned one). Every copy is checked against the pinned size and MD5 (the MD5 is computed
while streaming where none is pinned, and stored as the copy's Content-MD5).

An interrupted copy is resumed by taking the same snapshot again: the folder chosen is
remembered in the state folder until the snapshot is recorded, and the blobs already
there with the pinned size and MD5 are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from amlfs.errors import AmlfsError, SourceChanged, StorageError
from amlfs.registry import paths, pins
from amlfs.registry.models import NewVersion, PinnedFile, Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.transfer.parallel import run_parallel, with_retries

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16
HASH_CHUNK = 1 << 20
FAILURES_NAMED = 5  # in the error line; each failure is logged


class CopyFailed(StorageError):
    """Some files could not be copied: nothing is recorded, and a re-run resumes."""


@dataclass(frozen=True)
class Target:
    """Where a snapshot's copy goes: DATASTORE, and the folder FOLDER below its root."""

    datastore: str
    folder: str

    @property
    def location(self) -> str:
        return f"{self.datastore}:{self.folder}"


def target(pending: Path, version: Version, name: str, datastore: str, path: str) -> Target:
    """The copy's folder: the one an interrupted copy of the same snapshot (VERSION, NAME,
    DATASTORE:PATH) chose, recorded under PENDING, or a new one."""
    marker = _marker(pending, version, name, datastore, path)
    try:
        return Target(datastore, json.loads(marker.read_text())["folder"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    folder = paths.join(path, version.dataset, str(version.version),
                        f"{name}-{secrets.token_hex(4)}")  # fmt: skip
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = marker.with_suffix(".tmp")
    temporary.write_text(json.dumps({"folder": folder}))
    os.replace(temporary, marker)
    return Target(datastore, folder)


def forget_target(pending: Path, version: Version, name: str, datastore: str, path: str) -> None:
    """Once the snapshot is recorded, its copy is no longer pending."""
    _marker(pending, version, name, datastore, path).unlink(missing_ok=True)


def _marker(pending: Path, version: Version, name: str, datastore: str, path: str) -> Path:
    key = hashlib.sha256(f"{version.id}\0{name}\0{datastore}\0{path}".encode()).hexdigest()
    return pending / f"{key[:32]}.json"


def copy_version(
    registry: Registry,
    version: Version,
    to: Target,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[int], None] = lambda _n: None,
    env: Mapping[str, str] = os.environ,
) -> NewVersion:
    """Copy every pinned file of VERSION below TO; the copy's pins (same relative paths,
    sizes and MD5s, the copies' etags). PROGRESS hears the bytes of each file done."""
    source = Store(registry.get_datastore(version.datastore), env)
    store = source if to.datastore == version.datastore else Store(
        registry.get_datastore(to.datastore), env
    )  # fmt: skip
    # One listing finds what an interrupted copy left (nothing, the first time), rather
    # than a request per file.
    left = {f.path: f for f in store.list_source(to.folder).files}
    copier = _Copier(source, store, version.root, to.folder, left)
    files = list(registry.iter_files(version))
    copied: dict[str, PinnedFile] = {}
    failed: dict[str, str] = {}
    stopping = threading.Event()

    def work(f: PinnedFile) -> PinnedFile:
        return with_retries(lambda: copier.copy(f), f"copy {f.path}", stopping)

    def done(f: PinnedFile, pinned: PinnedFile) -> None:
        copied[f.path] = pinned
        progress(f.size)

    def fail(f: PinnedFile, error: Exception) -> None:
        log.error("copy of %s failed: %s", f.path, error)
        failed[f.path] = str(error)

    run_parallel(files, work, workers, done, fail, (AmlfsError, OSError), stopping)
    if failed:
        named = ", ".join(sorted(failed)[:FAILURES_NAMED])
        raise CopyFailed(
            f"{len(failed)} of {len(files)} file(s) could not be copied ({named}); nothing was "
            "recorded: take the snapshot again, with the same --name, to resume"
        )
    return NewVersion(
        dataset=version.dataset, datastore=to.datastore, root=to.folder, sources=[to.folder],
        files=[copied[f.path] for f in files],
        description=f"copy of {version.ref}",
    )  # fmt: skip


class _Copier:
    """Copies one pinned file at a time (from any thread) and checks what it wrote."""

    def __init__(self, source: Store, target: Store, root: str, folder: str,
                 left: Mapping[str, PinnedFile]):  # fmt: skip
        self.source, self.target, self.root, self.folder = source, target, root, folder
        self.left = left  # what is below the folder already: path (in the store) -> pin

    def copy(self, f: PinnedFile) -> PinnedFile:
        """F copied (or found copied already) below the folder, pinned with F's path."""
        name = paths.join(self.folder, f.path)
        copied = self._reusable(f, name)
        if copied is None:
            server_side = self.source is self.target and pins.pinned_md5(f.etag) is None
            copied = self._server_side(f, name) if server_side else self._streamed(f, name)
        return replace(copied, path=f.path)

    def _reusable(self, f: PinnedFile, name: str) -> PinnedFile | None:
        """What an earlier, interrupted copy left at NAME, if it has F's size and MD5."""
        found = self.left.get(name)
        if found is None or found.size != f.size:
            return None
        if found.md5 is None and f.md5 is not None:
            # A store that lists no MD5 (a local folder): hash the copy to compare.
            found = replace(found, md5=self.target.digest(name))
        if found.md5 is None or (f.md5 is not None and found.md5 != f.md5):
            return None  # nothing to check it against, or other bytes: copied again
        return found

    def _server_side(self, f: PinnedFile, name: str) -> PinnedFile:
        copied = self.target.copy(paths.join(self.root, f.path), name, source_etag=f.etag)
        self._check(f, copied)
        if copied.md5 is None:
            # The store keeps no MD5 for it: compute one, so the copy is checked whole
            # where F pins an MD5, and a resumed copy can recognise it.
            copied = replace(copied, md5=self.target.digest(name))
            self._check(f, copied)
        return copied

    def _streamed(self, f: PinnedFile, name: str) -> PinnedFile:
        with tempfile.TemporaryDirectory(prefix="amlfs-snapshot-") as folder:
            local = Path(folder) / "data"
            self.source.download_pinned(paths.join(self.root, f.path), f.etag, local)
            digest = hashlib.md5()
            with open(local, "rb") as data:
                while chunk := data.read(HASH_CHUNK):
                    digest.update(chunk)
            md5 = digest.digest()
            if f.md5 is not None and md5 != f.md5:
                raise SourceChanged(f"{f.path}: the bytes read do not have the pinned MD5")
            copied = self.target.upload(local, name, md5)
        copied = replace(copied, md5=copied.md5 or md5)
        self._check(f, copied)
        return copied

    @staticmethod
    def _check(f: PinnedFile, copied: PinnedFile) -> None:
        if copied.size != f.size:
            raise StorageError(f"{f.path}: copied {copied.size} bytes, {f.size} pinned")
        if f.md5 is not None and copied.md5 is not None and copied.md5 != f.md5:
            raise StorageError(f"{f.path}: the copy's MD5 is not the pinned one")
