"""The team catalog: one registry shared by every machine, as objects in a datastore.

A state folder attached to a catalog (`amlfs catalog attach DATASTORE:PATH`) keeps its
SQLite registry as the index that mounts and commands query, and as a copy of the
catalog: every command that opens the registry through open_registry first catches up
with the catalog (listing names and etags, reading only what changed), and every write
reaches the catalog before it commits locally (link.py). docs/registry.md describes the
objects; docs/team.md how a team and a cluster use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from amlfs.catalog.link import CatalogLink
from amlfs.errors import Conflict, StorageError, UserError
from amlfs.home import registry_path
from amlfs.registry import paths, replicas
from amlfs.registry.store import Registry, now
from amlfs.storage import Store

__all__ = ["attach", "detach", "open_registry", "status"]


def open_registry(home: Path, *, offline: Callable[[str], None] | None = None) -> Registry:
    """HOME's registry, linked to its catalog if it is attached to one: each read then
    catches up with the part of the catalog it answers from (registry/shared.py). When
    the catalog cannot be read, the registry answers from the copy it has and OFFLINE
    hears why, once (one sentence); its writes then fail."""
    registry = Registry(registry_path(home))
    try:
        try:
            link = _link(registry)
        except UserError as exc:  # its datastore cannot be opened here (no credentials)
            place = replicas.attachment(registry)
            registry.shared = Unavailable(f"{place[0]}:{place[1]}", str(exc))
            (offline or _ignore)(f"{registry.shared.reason}; answering from this machine's"
                                 f" copy of {place[2]}")  # fmt: skip
            return registry
        if link is not None and offline is not None:
            link.offline = offline
    except BaseException:
        registry.close()
        raise
    return registry


def _link(registry: Registry) -> CatalogLink | None:
    """Give REGISTRY its catalog's side (registry.shared), if it is attached."""
    place = replicas.attachment(registry)
    if place is None:
        return None
    datastore, path, _refreshed = place
    registry.shared = link = CatalogLink(_store(registry, datastore), path)
    return link


def _store(registry: Registry, datastore: str) -> Store:
    # Documents only: on Azure through obstore, without importing adlfs and the SDK (half
    # a second that every command would pay).
    return Store(registry.get_datastore(datastore), reads_only=True)


class Unavailable:
    """The catalog's side of a registry whose catalog cannot even be opened here (its
    datastore's credentials are not in this environment): reads answer from the local
    copy, and every write fails with the reason."""

    def __init__(self, location: str, why: str):
        self.reason = f"the catalog at {location} cannot be opened ({why})"

    def claim_version(self, *_args: object) -> int:
        raise UserError(f"{self.reason}: nothing was registered")

    def publish(self, *_args: object) -> None:
        raise UserError(f"{self.reason}: nothing was changed")

    def catch_up(self, *_args: object) -> None:
        pass  # answered from the local copy (open_registry said so)


def _ignore(_message: str) -> None:
    pass


@dataclass
class Attached:
    """What `catalog attach` did."""

    location: str
    created: bool  # the catalog was new: this call made its marker
    published: int  # objects written: what this registry had and the catalog lacked
    read: int  # objects read from the catalog into this registry
    listed: int  # objects in the catalog after attaching

    def public_dict(self) -> dict:
        return asdict(self)


def attach(home: Path, location: str) -> Attached:
    """Share HOME's registry through the catalog at LOCATION (DATASTORE:PATH), creating
    it if the folder is empty: publish what the catalog lacks, then read what it has.
    Refuses, naming them, records that both hold with other content."""
    datastore, path = paths.parse_location(location)
    with Registry(registry_path(home)) as registry:
        place = replicas.attachment(registry)
        if place is not None and (place[0], place[1]) != (datastore, path):
            raise UserError(f"this state folder is attached to {place[0]}:{place[1]};"
                            " `amlfs catalog detach` first")  # fmt: skip
        link = CatalogLink(_store(registry, datastore), path)
        created = link.ensure_marker()
        listing = link.listing()
        if conflicts := link.conflicts(registry, listing):
            shown = "; ".join(conflicts[:5]) + (f"; and {len(conflicts) - 5} more"
                                                if len(conflicts) > 5 else "")  # fmt: skip
            raise Conflict(f"cannot attach to {link.location}: {shown}")
        with registry.transaction():
            published = link.publish_all(registry, listing)
            if place is None:
                replicas.attach(registry, datastore, path, now())
        registry.shared = link
        if published:  # else the catalog is as listed, as far as this registry knows
            listing = link.listing()
        refreshed = link.refresh(registry, keep_local={datastore}, listing=listing)
        return Attached(link.location, created, published, refreshed.read, refreshed.listed)


def detach(home: Path) -> str:
    """Stop sharing HOME's registry; it keeps everything it holds. The catalog's place."""
    with Registry(registry_path(home)) as registry:
        place = replicas.attachment(registry)
        if place is None:
            raise UserError("this state folder is not attached to a catalog")
        with registry.transaction():
            replicas.detach(registry)
    return f"{place[0]}:{place[1]}"


@dataclass
class Status:
    """Where HOME's registry is shared, and whether the catalog can be read now."""

    attached: bool
    location: str | None = None
    attached_at: str | None = None
    refreshed_at: str | None = None
    reachable: bool | None = None
    error: str | None = None
    objects: int | None = None  # in the catalog, when it was read now
    refresh_seconds: float | None = None

    def public_dict(self) -> dict:
        return asdict(self)


def status(home: Path) -> Status:
    with Registry(registry_path(home)) as registry:
        row = registry.connection.execute(
            "SELECT datastore, path, attached_at FROM catalog"
        ).fetchone()
        if row is None:
            return Status(attached=False)
        result = Status(True, f"{row[0]}:{row[1]}", row[2])
        try:
            link = _link(registry)
            refreshed = link.refresh(registry, keep_local={row[0]})
            result.reachable, result.objects = True, refreshed.listed
            result.refresh_seconds = round(refreshed.seconds, 3)
        except (StorageError, UserError) as exc:
            result.reachable, result.error = False, str(exc)
        result.refreshed_at = replicas.attachment(registry)[2]
        return result
