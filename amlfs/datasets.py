"""Registering datasets from a datastore and checking versions against it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from amlfs.errors import UserError
from amlfs.registry import paths
from amlfs.registry.models import NewVersion, PinnedFile, Version
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry
from amlfs.storage import Listing, Progress, Store


def collect(
    store: Store,
    dataset: str,
    sources: list[str],
    *,
    description: str = "",
    tags: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> NewVersion:
    """List SOURCES once each and pin every file, relative to their longest common folder."""
    sources = paths.normalise_sources(sources)
    if not sources:
        raise UserError("give at least one --path")
    listings: list[Listing] = []
    for source in sources:
        listing = store.list_source(source, progress)
        if not listing.files:
            raise UserError(
                f"path {source or '/'!r} matched no files in datastore {store.datastore.name!r}"
            )
        listings.append(listing)
    root = paths.common_folder(listing.base for listing in listings)
    pinned: dict[str, PinnedFile] = {}
    for listing in listings:
        for f in listing.files:
            rel = paths.relative_to(root, f.path)
            pinned.setdefault(rel, PinnedFile(rel, f.size, f.etag, f.md5, f.last_modified))
    return NewVersion(
        dataset=dataset,
        datastore=store.datastore.name,
        root=root,
        sources=sources,
        files=list(pinned.values()),
        description=description,
        tags=dict(tags or {}),
    )


def register(
    registry: Registry,
    dataset: str,
    datastore: str,
    sources: list[str],
    *,
    description: str = "",
    tags: Mapping[str, str] | None = None,
    env: Mapping[str, str] = os.environ,
    progress: Progress | None = None,
) -> Version:
    """List, pin and store SOURCES as the next version of DATASET."""
    paths.check_name("dataset", dataset)
    store = Store(registry.get_datastore(datastore), env)
    new = collect(store, dataset, sources, description=description, tags=tags, progress=progress)
    return registry.register(new)


@dataclass
class Change:
    path: str
    pinned_size: int
    pinned_etag: str
    size: int
    etag: str


@dataclass
class VerifyReport:
    version: Version
    checked: int = 0
    changed: list[Change] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changed and not self.missing


def verify(
    registry: Registry, version: Version, env: Mapping[str, str] = os.environ
) -> VerifyReport:
    """Compare every pinned file of VERSION with its store, listing each source once
    (a handful of listing calls, not one request per file; but a file pinned by content
    is read whole again to be hashed, see amlfs.registry.pins)."""
    require_data(version)
    store = Store(registry.get_datastore(version.datastore), env)
    current: dict[str, PinnedFile] = {}
    for source in version.sources:
        for f in store.list_source(source).files:
            current[f.path] = f
    report = VerifyReport(version)
    for pinned in registry.iter_files(version):
        report.checked += 1
        now = current.get(paths.join(version.root, pinned.path))
        if now is None:
            report.missing.append(pinned.path)
        elif (now.etag, now.size) != (pinned.etag, pinned.size) or (
            now.md5 and pinned.md5 and now.md5 != pinned.md5
        ):
            report.changed.append(Change(pinned.path, pinned.size, pinned.etag, now.size, now.etag))
    return report
