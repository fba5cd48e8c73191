"""A registry's link to its catalog: writes go to the catalog first, reads catch up.

Writing (the registry's Shared, see registry/shared.py):
- a version is claimed and written in one create-only request at the next free number
  of its dataset; a machine that loses the race for a number takes the next;
- every other record is written when the registry's transaction is about to commit:
  created if new, else replaced only over the etag this registry last saw (compare and
  swap), so a change made elsewhere meanwhile is never overwritten: the command fails
  with Conflict and the registry is left as it was.

Reading: before a read, catch_up() refreshes the part of the catalog it answers from
(a scope: one dataset, the runs, ...): it lists those folders (names and etags only),
reads the objects whose etag this registry has not seen and the records they name that
it lacks, and applies them in one local transaction.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from amlfs.catalog import layout
from amlfs.errors import (
    Conflict,
    NameTaken,
    NotAsStored,
    NotFound,
    StorageError,
    StorageUnreachable,
    UserError,
)
from amlfs.registry import paths, replicas
from amlfs.registry import shared as scopes
from amlfs.registry.models import NewVersion
from amlfs.registry.shared import Change
from amlfs.registry.store import Registry, now
from amlfs.storage import Store

log = logging.getLogger(__name__)

# A claim that loses this many races in a row gives up (with as many machines registering
# the same dataset at the same moment); a listing is taken again after each loss.
CLAIM_ATTEMPTS = 64
CLAIM_DEADLINE_S = 120.0
# A refresh that finds nothing new writes down when it caught up only this often.
REFRESHED_AT_RESOLUTION_S = 60.0


@dataclass
class Refreshed:
    """What a refresh did: objects listed and read, and contradictions it left alone."""

    listed: int
    read: int
    conflicts: list[str]
    seconds: float


class CatalogLink:
    """The catalog below DATASTORE:PATH, as one registry reads and writes it."""

    def __init__(self, store: Store, path: str):
        if not store.conditional:
            raise UserError(
                f"datastore {store.datastore.name!r} cannot hold a catalog: amlfs needs"
                " conditional writes (an Azure or a local-folder datastore)"
            )
        self.store, self.path = store, path.strip("/")
        self.location = f"{store.datastore.name}:{self.path}"
        # Why the catalog could not be reached just now, if it could not: writes then
        # fail at once instead of retrying for many seconds.
        self.unreachable: str | None = None
        self.keep_local = {store.datastore.name}  # this machine reaches its catalog its way
        self.offline: Callable[[str], None] = lambda _message: None
        self._caught_up: set[str] = set()  # scopes its registry caught up with (one link each)

    def _full(self, key: str) -> str:
        return paths.join(self.path, key) if self.path else key

    # -- Shared -----------------------------------------------------------------------

    def claim_version(self, registry: Registry, new: NewVersion, digest: str, created_at: str,
                      first: int) -> int:  # fmt: skip
        self._check_reachable()
        deadline = time.monotonic() + CLAIM_DEADLINE_S
        number = max(first, self._next_number(new.dataset))
        for _attempt in range(CLAIM_ATTEMPTS):
            key = layout.version_key(new.dataset, number)
            document = replicas.new_version_document(new, number, digest, created_at)
            try:
                with self._writing():
                    etag = self.store.create(self._full(key), layout.encode(key, document))
            except NameTaken:
                log.info("%s:%d was taken meanwhile (another machine)", new.dataset, number)
                if time.monotonic() > deadline:
                    break
                number = max(number + 1, self._next_number(new.dataset))
                continue
            replicas.remember(registry, key, etag)
            return number
        raise Conflict(
            f"no free version number for {new.dataset!r} in the catalog at {self.location}"
            f" after {CLAIM_ATTEMPTS} tries (that many machines registering it at once?)"
        )

    def publish(self, registry: Registry, changes: list[Change]) -> None:
        self._check_reachable()
        for change in dict.fromkeys(changes):  # once each, in order
            key, document = self._document(registry, change)
            self._put(registry, key, document)

    def _check_reachable(self) -> None:
        if self.unreachable is not None:
            raise StorageUnreachable(f"the catalog at {self.location} cannot be reached"
                                     f" ({self.unreachable}): nothing was changed")  # fmt: skip

    # -- reading ------------------------------------------------------------------------

    def catch_up(self, registry: Registry, scope: str) -> None:
        """Shared.catch_up: each scope once (a link serves one opened registry: a command's
        reads see one state of the catalog and pay for each part of it once); none once
        the catalog was found unreachable, which OFFLINE hears about once."""
        done = self._caught_up
        if self.unreachable is not None or scope in done or scopes.EVERYTHING in done:
            return
        if scope.startswith("dataset:") and scopes.VERSIONS in done:
            return
        try:
            self.refresh(registry, keep_local=self.keep_local, scope=scope)
        except StorageError as exc:
            self.unreachable = self.unreachable or str(exc)
            since = replicas.attachment(registry)[2]
            self.offline(f"the catalog at {self.location} cannot be read ({exc}); answering"
                         f" from this machine's copy of {since}")  # fmt: skip
            return
        self._caught_up.add(scope)

    def refresh(self, registry: Registry, *, keep_local: set[str],
                scope: str = scopes.EVERYTHING,
                listing: dict[str, str] | None = None) -> Refreshed:  # fmt: skip
        """Bring what REGISTRY holds of SCOPE up to the catalog: list its folders (unless
        the caller just listed them: LISTING), read what changed since this registry last
        looked (and the records those documents name that it lacks), apply it.
        KEEP_LOCAL: datastores whose credential source stays this machine's."""
        started = time.monotonic()
        if listing is None:
            try:
                # One quick request first: an unreachable store fails it at once, where a
                # listing would retry for many seconds.
                self.store.probe(self._full(layout.MARKER))
            except StorageUnreachable as exc:
                self.unreachable = str(exc)
                raise
            everything = scope == scopes.EVERYTHING
            listing = self.listing() if everything else self._listing_of(scope)
        known = replicas.known_etags(registry)
        wanted = {key: etag for key, etag in listing.items()
                  if known.get(key) != etag and layout.parse(key)}  # fmt: skip
        documents = self._read_all(wanted)
        self._add_needed(registry, documents)
        conflicts = []
        if documents or _stale(replicas.attachment(registry)[2]):
            # Nothing new takes no write lock (a long registration may hold it), unless
            # the time this registry last caught up is worth writing down again.
            with registry.transaction():
                for key, (document, etag) in _in_order(documents):
                    conflict = _apply(registry, key, document, keep_local)
                    if conflict is None:
                        replicas.remember(registry, key, etag)
                    else:
                        conflicts.append(conflict)
                replicas.refreshed(registry, now())
        for conflict in conflicts:
            log.warning("catalog %s: %s (left as it is here)", self.location, conflict)
        return Refreshed(len(listing), len(documents), conflicts, time.monotonic() - started)

    def _listing_of(self, scope: str) -> dict[str, str]:
        """Names and etags in the folders that hold SCOPE."""
        folders = {
            scopes.DATASTORES: [],
            scopes.VERSIONS: [layout.VERSIONS, layout.SNAPSHOTS, layout.PRUNES],
            scopes.RUNS: [layout.RUNS],
            scopes.PIPELINES: [layout.PIPELINES, layout.RUNS],
        }.get(scope)
        if folders is None:  # dataset:NAME
            folders = layout.dataset_folders(scope.partition(":")[2])
        folders = folders or [layout.DATASTORES]  # (a version's datastore is a need)
        # At once: each listing is a round trip to the store, and they do not depend on
        # each other.
        with ThreadPoolExecutor(len(folders)) as pool:
            listings = pool.map(lambda folder: self.store.list_etags(self._full(folder)),
                                folders)  # fmt: skip
            return {f"{folder}/{name}": etag for folder, listed in zip(folders, listings,
                    strict=True) for name, etag in listed.items()}  # fmt: skip

    def _add_needed(self, registry: Registry, documents: dict[str, tuple[dict, str]]) -> None:
        """Add to DOCUMENTS the versions (and snapshots) they name that neither they nor
        REGISTRY hold: a subset's parent, a run's inputs, a snapshot's copy, read by name."""
        pending = list(documents)
        for _round in range(len(documents) + 64):  # each round reads one layer of needs
            needed = {key for doc_key in pending
                      for key in layout.needs(doc_key, documents[doc_key][0])
                      if key not in documents and not _holds(registry, key)}  # fmt: skip
            if not needed:
                return
            found = self._read_all(dict.fromkeys(sorted(needed), ""))
            documents.update(found)
            pending = list(found)
            if not found:
                return

    def listing(self) -> dict[str, str]:
        """Every object's name (below the catalog's path) and etag: listings only."""
        found = self.store.list_etags(self.path)
        if layout.MARKER not in found:
            raise UserError(
                f"{self.location} is not an amlfs catalog (no {layout.MARKER} there):"
                " `amlfs catalog attach` creates one"
            )
        return found

    def ensure_marker(self) -> bool:
        """Make this folder a catalog if it is none yet; True if this call made it."""
        marker = self._full(layout.MARKER)
        found = self.store.fetch(marker)
        if found is not None:
            layout.check_marker(found[0], self.location)
            return False
        try:
            self.store.create(marker, layout.marker())
        except NameTaken:  # another machine made it meanwhile
            self.ensure_marker()
            return False
        return True

    def conflicts(self, registry: Registry, listing: dict[str, str]) -> list[str]:
        """What this registry holds that the catalog contradicts: the same datastore name
        with another URL, the same version number with other files."""
        found, known = [], replicas.known_etags(registry)
        for ds in registry.list_datastores():
            key = layout.datastore_key(ds.name)
            if key in listing:
                document = self._read(key)[0]
                if not document.get("removed") and document["url"] != ds.url:
                    found.append(f"datastore {ds.name!r} is {ds.url!r} here and"
                                 f" {document['url']!r} in the catalog")  # fmt: skip
        for version_id in replicas.version_ids(registry):
            version = registry.stored_version(version_id)
            key = layout.version_key(version.dataset, version.version)
            if key in listing and key not in known:
                document = self._read(key)[0]
                if document["manifest_sha256"] != version.manifest_sha256:
                    found.append(f"{version.dataset}:{version.version} pins other files here"
                                 " than in the catalog")  # fmt: skip
        return found

    def publish_all(self, registry: Registry, listing: dict[str, str]) -> int:
        """Write what this registry has and the catalog lacks (at attach): every record,
        each under its own name and number. Returns how many objects were written."""
        written = 0
        for version_id in replicas.version_ids(registry):
            dataset, number = replicas.natural_version(registry, version_id)
            key = layout.version_key(dataset, number)
            if key not in listing:
                self._put(registry, key, replicas.version_document(registry, version_id))
                written += 1
        changes = (
            [Change("datastore", (ds.name,)) for ds in registry.list_datastores()]
            + [Change("prune", (vid,)) for vid in replicas.pruned_ids(registry)]
            + [Change("snapshot", key) for key in replicas.snapshot_names(registry)]
            + [Change("run", (rid,)) for rid in replicas.run_ids(registry)]
            + [Change("pipeline", (pid,)) for pid in replicas.pipeline_ids(registry)]
        )
        for change in changes:
            key, document = self._document(registry, change)
            if key not in listing:
                self._put(registry, key, document)
                written += 1
        return written

    # -- objects --------------------------------------------------------------------

    def _document(self, registry: Registry, change: Change) -> tuple[str, dict]:
        """The catalog object a changed record is written to, and its document."""
        kind, key = change
        if kind == "datastore":
            return layout.datastore_key(key[0]), replicas.datastore_document(registry, key[0])
        if kind == "snapshot":
            dataset, number = replicas.natural_version(registry, key[0])
            return (layout.snapshot_key(dataset, number, key[1]),
                    replicas.snapshot_document(registry, *key))  # fmt: skip
        if kind == "prune":
            dataset, number = replicas.natural_version(registry, key[0])
            return layout.prune_key(dataset, number), replicas.prune_document(registry, key[0])
        if kind == "run":
            return layout.run_key(key[0]), replicas.run_document(registry, key[0])
        if kind == "pipeline":
            return layout.pipeline_key(key[0]), replicas.pipeline_document(registry, key[0])
        raise ValueError(f"unknown kind of change {kind!r}")

    def _put(self, registry: Registry, key: str, document: dict) -> None:
        """Create KEY, or replace it over the etag this registry last saw."""
        data, seen = layout.encode(key, document), replicas.known_etag(registry, key)
        try:
            with self._writing():
                if seen is None:
                    etag = self.store.create(self._full(key), data)
                else:
                    etag = self.store.replace(self._full(key), data, seen)
        except (NameTaken, NotAsStored):
            raise Conflict(
                f"{key} in the catalog at {self.location} was changed by another machine"
                " meanwhile; nothing was changed here: run the command again"
            ) from None
        replicas.remember(registry, key, etag)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Say that a write failed in the catalog (and that nothing changed here)."""
        try:
            yield
        except (NameTaken, NotAsStored):
            raise
        except StorageError as exc:
            raise type(exc)(f"cannot write to the catalog at {self.location}, nothing was"
                            f" changed: {exc}") from None  # fmt: skip

    def _read(self, key: str) -> tuple[dict, str]:
        found = self.store.fetch(self._full(key))
        if found is None:
            raise NotFound(f"{key} is gone from the catalog at {self.location}")
        data, etag = found
        return layout.decode(key, data), etag

    def _read_all(self, keys: dict[str, str]) -> dict[str, tuple[dict, str]]:
        """The documents of KEYS, read many at once; a key gone since the listing is
        left out (the next refresh sees what replaced it)."""
        found = self.store.fetch_many([self._full(key) for key in keys])
        documents = {}
        for key in keys:
            got = found.get(self._full(key))
            if got is not None:
                documents[key] = (layout.decode(key, got[0]), got[1])
        return documents

    def _next_number(self, dataset: str) -> int:
        taken = self.store.list_etags(self._full(layout.versions_folder(dataset)))
        numbers = [layout.version_number(name) for name in taken if name.endswith(".json.gz")]
        return max(numbers, default=0) + 1


def _in_order(documents: dict[str, tuple[dict, str]]) -> list[tuple[str, tuple[dict, str]]]:
    """Documents in an order they can be applied in: by kind (layout.KINDS), a version
    after the version it was derived from, the rest by name."""
    by_kind: dict[str, list[str]] = {kind: [] for kind in layout.KINDS}
    for key in sorted(documents):
        by_kind[layout.parse(key).kind].append(key)
    ordered: list[str] = []
    placed: set[str] = set()

    def place(key: str) -> None:
        # Derivation chains are short and never cycle (a parent exists before its child);
        # the depth is bounded by the number of versions read anyway.
        if key in placed:
            return
        placed.add(key)
        made = documents[key][0].get("derived_from")
        if made is not None:
            parent = layout.version_key(made["dataset"], made["version"])
            if parent in documents:
                place(parent)
        ordered.append(key)

    for kind in layout.KINDS:
        for key in by_kind[kind]:
            place(key) if kind == layout.VERSIONS else ordered.append(key)
    return [(key, documents[key]) for key in ordered]


def _holds(registry: Registry, key: str) -> bool:
    """Whether REGISTRY holds the record catalog object KEY names (a datastore, a version,
    a snapshot)."""
    parsed = layout.parse(key)
    if parsed.kind == layout.DATASTORES:
        return (
            registry.connection.execute(
                "SELECT 1 FROM datastores WHERE name = ?", (parsed.parts["name"],)
            ).fetchone()
            is not None
        )
    number = int(parsed.parts["number"])
    if parsed.kind == layout.VERSIONS:
        return replicas.holds_version(registry, parsed.parts["dataset"], number)
    return replicas.holds_snapshot(registry, parsed.parts["dataset"], number,
                                   parsed.parts["name"])  # fmt: skip


def _stale(refreshed_at: str | None) -> bool:
    if refreshed_at is None:
        return True
    age = datetime.now(UTC) - datetime.fromisoformat(refreshed_at)
    return age.total_seconds() > REFRESHED_AT_RESOLUTION_S


def _apply(registry: Registry, key: str, document: dict, keep_local: set[str]) -> str | None:
    """Apply one document, all of it or (with a conflict returned) none of it."""
    kind, conn = layout.parse(key).kind, registry.connection
    if (mismatch := layout.mismatch(key, document)) is not None:
        return mismatch
    conn.execute("SAVEPOINT document")
    try:
        if kind == layout.DATASTORES:
            conflict = replicas.apply_datastore(registry, document, keep_local)
        else:
            appliers = {
                layout.VERSIONS: replicas.apply_version, layout.PRUNES: replicas.apply_prune,
                layout.SNAPSHOTS: replicas.apply_snapshot, layout.RUNS: replicas.apply_run,
                layout.PIPELINES: replicas.apply_pipeline,
            }  # fmt: skip
            conflict = appliers[kind](registry, document)
    except (NotFound, KeyError, TypeError, ValueError, sqlite3.IntegrityError) as exc:
        conflict = f"{key}: cannot be applied ({type(exc).__name__}: {exc})"
    if conflict is not None:
        conn.execute("ROLLBACK TO document")
    conn.execute("RELEASE document")
    return conflict
