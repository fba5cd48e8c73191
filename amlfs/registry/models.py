"""Plain records the registry hands out and takes in."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CREDENTIAL_KINDS = (
    "connection-string-env",
    "account-key-env",
    "sas-token-env",
    "default",
    "anonymous",
    "none",
)


@dataclass(frozen=True)
class Datastore:
    """A named storage root and where its credentials come from (never the secret itself)."""

    name: str
    url: str
    credential: str  # one of CREDENTIAL_KINDS
    credential_env: str | None = None
    account_name: str | None = None
    created_at: str = ""

    def public_dict(self) -> dict:
        """What `datastore show --json` prints: no secret is ever part of a Datastore."""
        return asdict(self)


@dataclass(frozen=True)
class PinnedFile:
    """One file of a version as pinned at registration."""

    path: str  # relative to the version's root, '/'-separated
    size: int
    etag: str
    md5: bytes | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class Version:
    """One immutable version of a dataset (without its files)."""

    id: int
    dataset: str
    version: int
    datastore: str
    root: str
    sources: list[str]
    description: str
    tags: dict[str, str]
    file_count: int
    total_bytes: int
    manifest_sha256: str
    created_at: str
    # A snapshot of the version, read as NAME:VERSION@SNAPSHOT: then id, datastore, root
    # and sources are its copy's when it has one (see registry/snapshots.py).
    snapshot: str | None = None
    # When `pipeline prune` deleted its data (the row and its lineage stay): see
    # registry/prunes.py, which refuses reading it.
    pruned_at: str | None = None

    @property
    def ref(self) -> str:
        at = f"@{self.snapshot}" if self.snapshot else ""
        return f"{self.dataset}:{self.version}{at}"

    def public_dict(self) -> dict:
        """Every field but the registry's internal row id (and `snapshot` and `pruned_at`
        where they are None)."""
        optional = {"snapshot", "pruned_at"}
        return {k: v for k, v in asdict(self).items()
                if k != "id" and not (k in optional and v is None)}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """A folder or file of a version's tree, as a mount sees it."""

    id: int
    parent_id: int | None
    name: str
    is_dir: bool
    size: int = 0
    etag: str | None = None
    md5: bytes | None = None
    last_modified: str | None = None


@dataclass
class NewVersion:
    """What a registration or an import asks the registry to store."""

    dataset: str
    datastore: str
    root: str
    sources: list[str]
    files: list[PinnedFile]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # Made from another version's files (subsets): recorded with the version, as one.
    derived_from: DerivedFrom | None = None


@dataclass(frozen=True)
class DerivedFrom:
    """How a new version is made from PARENT: OPERATION (sample, split, filter) given
    PARAMETERS (see registry/derivations.py)."""

    parent: Version
    operation: str
    parameters: dict
