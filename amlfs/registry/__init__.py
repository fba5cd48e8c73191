"""The registry: datastores, datasets and their pinned versions (SQLite, YAML manifests)."""

from amlfs.registry.models import Datastore, Entry, NewVersion, PinnedFile, Version
from amlfs.registry.store import Registry

__all__ = ["Datastore", "Entry", "NewVersion", "PinnedFile", "Registry", "Version"]
