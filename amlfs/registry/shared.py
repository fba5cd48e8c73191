"""What the registry asks of the catalog it is shared through (amlfs.catalog), if any.

The registry does not import the catalog: whoever opens a registry that is attached to
one hands it a Shared (amlfs.catalog.open_registry). Writes then reach the catalog
before they commit here: a version's number is claimed there first, and every other
change is published just before the local transaction commits, so a failure to publish
leaves this registry as it was. Reads first catch up with the part of the catalog they
answer from (a scope), once per registry object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from amlfs.registry.models import NewVersion
    from amlfs.registry.store import Registry


# What a read needs to be current (Shared.catch_up): the datastores; one dataset (its
# versions, snapshots and prunes); every dataset; the runs; the pipeline runs; all.
DATASTORES = "datastores"
VERSIONS = "versions"
RUNS = "runs"
PIPELINES = "pipelines"
EVERYTHING = "everything"


def dataset_scope(name: str) -> str:
    return f"dataset:{name}"


class Change(NamedTuple):
    """A record that a transaction wrote: KIND (datastore, snapshot, prune, run,
    pipeline) and what names it locally (a name; a version row id and a name; ...)."""

    kind: str
    key: tuple


class Shared(Protocol):
    def claim_version(self, registry: Registry, new: NewVersion, digest: str, created_at: str,
                      first: int) -> int:  # fmt: skip
        """Publish NEW under the lowest free number of its dataset that is at least FIRST,
        the claim and the content in one write, and return that number."""

    def publish(self, registry: Registry, changes: list[Change]) -> None:
        """Write the records CHANGES name, as they stand in REGISTRY's open transaction."""

    def catch_up(self, registry: Registry, scope: str) -> None:
        """Bring what REGISTRY holds of SCOPE up to the catalog, if this has not been done
        yet for this registry object; when the catalog cannot be read, leave it as it is
        (the caller answers from the local copy; writes will fail)."""
