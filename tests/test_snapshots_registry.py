"""Snapshots in the registry alone: how `NAME:VERSION@SNAP` resolves, with and without a
copy, how a copy's version maps back to its snapshot, and that the copies' dataset
stays out of every listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.errors import NotFound, UserError
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry.paths import COPIES_DATASET
from amlfs.registry.snapshots import Snapshots

FILES = [PinnedFile("a.csv", 3, '"e1"', b"\1" * 16), PinnedFile("d/b.bin", 5, '"e2"', b"\2" * 16)]
COPY = [PinnedFile("a.csv", 3, '"c1"', b"\1" * 16), PinnedFile("d/b.bin", 5, '"c2"', b"\2" * 16)]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as registry:
        registry.add_datastore(Datastore("src", "file:///src", "none"))
        registry.add_datastore(Datastore("dst", "file:///dst", "none"))
        registry.register(NewVersion("ds", "src", "data", ["data"], FILES))
        yield registry


def copy_of(name: str) -> NewVersion:
    return NewVersion("ds", "dst", f"snaps/ds/1/{name}-0", [f"snaps/ds/1/{name}-0"], COPY)


def test_a_snapshot_without_a_copy_resolves_to_its_versions_files(registry: Registry) -> None:
    version = registry.resolve("ds:1")
    Snapshots(registry).record(version, "plain", {"files": 2})
    snap = registry.resolve("ds:1@plain")
    assert snap.ref == "ds:1@plain"
    assert (snap.id, snap.datastore, snap.root) == (version.id, "src", "data")
    assert snap.public_dict()["snapshot"] == "plain"
    assert "snapshot" not in version.public_dict()


def test_a_snapshot_with_a_copy_resolves_to_the_copys_pins_and_maps_back(
    registry: Registry,
) -> None:
    version = registry.resolve("ds:1")
    taken = Snapshots(registry).record(version, "s", {}, copy_of("s"), "dst:snaps")
    snap = registry.resolve("ds:1@s")
    assert (snap.dataset, snap.version, snap.snapshot) == ("ds", 1, "s")
    assert (snap.datastore, snap.root) == ("dst", "snaps/ds/1/s-0")
    assert snap.id == taken.copy.id != version.id
    assert list(registry.iter_files(snap)) == sorted(COPY, key=lambda f: f.path)
    assert registry.version_by_id(snap.id).ref == "ds:1@s"
    assert [v.dataset for v in registry.list_datasets()] == ["ds"]
    with pytest.raises(NotFound):
        registry.list_versions(COPIES_DATASET)
    with pytest.raises(UserError):
        registry.resolve(f"{COPIES_DATASET}:1")


def test_a_deleted_snapshot_no_longer_resolves_but_its_copy_still_names_it(
    registry: Registry,
) -> None:
    snapshots = Snapshots(registry)
    taken = snapshots.record(registry.resolve("ds:1"), "s", {}, copy_of("s"), "dst:snaps")
    snapshots.remove(taken)
    with pytest.raises(NotFound):
        registry.resolve("ds:1@s")
    assert registry.version_by_id(taken.copy.id).ref == "ds:1@s"
    assert snapshots.list() == []
    again = snapshots.record(registry.resolve("ds:1"), "s", {}, copy_of("s"), "dst:snaps")
    assert registry.resolve("ds:1@s").id == again.copy.id != taken.copy.id


@pytest.mark.parametrize("ref", ["ds@s", "ds:latest@s", "ds:1@", "ds:1@-x", "ds:1@a@b"])
def test_a_malformed_snapshot_reference_is_a_usage_error(registry: Registry, ref: str) -> None:
    with pytest.raises(UserError):
        registry.resolve(ref)
