"""Domain errors. Importable from every layer; the CLI turns them into one-line messages."""

from __future__ import annotations

# Exit codes of the command line (interface.md).
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class AmlfsError(Exception):
    """Base of every error amlfs raises on purpose."""

    exit_code = EXIT_RUNTIME


class UserError(AmlfsError):
    """Bad usage or bad input: the user can fix it by changing what they asked for."""

    exit_code = EXIT_USAGE


class NotFound(UserError):
    """A named thing (datastore, dataset, version) does not exist."""


class Conflict(UserError):
    """The request contradicts what the registry already holds."""


class Pruned(UserError):
    """`amlfs pipeline prune` deleted a version's data: its record and lineage stay, its
    bytes are gone, so nothing mounts, downloads or reuses it."""


class ManifestError(UserError):
    """A YAML document (manifest or declaration) is malformed or unsafe."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        where = source or "<yaml>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
        self.line = line


class SourceChanged(AmlfsError):
    """A pinned file no longer has the etag its version recorded: never serve its bytes."""


class StorageError(AmlfsError):
    """The storage behind a datastore failed or could not be reached."""


class StorageUnreachable(StorageError):
    """No connection to the storage could be made (refused, timed out, the name not
    resolved): an outage of the store, not an answer about one file."""


class NotAsStored(StorageError):
    """A conditional overwrite or delete found something other than what amlfs last stored
    at that name: amlfs never replaces or removes a file it did not write."""


class NameTaken(AmlfsError):
    """A create-only write found something at the name already (another writer won it)."""
