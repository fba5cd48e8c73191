"""Subsets in the registry: the parent's pins reused, the derivation recorded with the
version, names that hold other data refused, both parts of a split or neither."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs import home, subsets
from amlfs.errors import Conflict, UserError
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry.derivations import Derivations
from amlfs.registry.schema import MIGRATIONS, SCHEMA_VERSION

PATHS = [f"part-{i:03d}/rows.parquet" for i in range(200)] + ["README.md"]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(home.registry_path(tmp_path / "state"))
    reg.add_datastore(Datastore("local", "file:///data", "none"))
    reg.register(NewVersion("weather", "local", "Weather", ["Weather"], pins(PATHS)))
    yield reg
    reg.close()


def pins(paths: list[str]) -> list[PinnedFile]:
    return [
        PinnedFile(p, 100 + i, f'"0x8D{i:04X}"', bytes([i % 256]) * 16, "2026-11-20T10:00:00+00:00")
        for i, p in enumerate(paths)
    ]


def dump(registry: Registry) -> list[str]:
    return list(sqlite3.connect(registry.path).iterdump())


def files_of(registry: Registry, ref: str) -> dict[str, PinnedFile]:
    return {f.path: f for f in registry.iter_files(registry.resolve(ref))}


def test_a_sample_pins_exactly_the_parents_entries(registry: Registry) -> None:
    parent = registry.resolve("weather:1")
    small = subsets.sample(registry, "weather:1", 0.2, seed=5, register="small")
    assert small.ref == "small:1"
    assert (small.datastore, small.root, small.sources) == (
        parent.datastore, parent.root, parent.sources
    )  # fmt: skip
    kept, all_files = files_of(registry, "small:1"), files_of(registry, "weather:1")
    assert 0 < len(kept) < len(all_files)
    assert all(kept[path] == all_files[path] for path in kept)  # size, etag, MD5, time
    assert small.total_bytes == sum(f.size for f in kept.values())


def test_the_parent_and_parameters_are_recorded_with_the_version(registry: Registry) -> None:
    small = subsets.sample(registry, "weather", 0.2, register="small")
    derivation = Derivations(registry).of(small)
    assert derivation.parent.ref == "weather:1"
    assert (derivation.operation, derivation.parameters) == ("sample", {"fraction": 0.2, "seed": 0})
    assert small.description == "sample of weather:1 (fraction=0.2, seed=0)"
    assert Derivations(registry).of(registry.resolve("weather:1")) is None
    assert [d.version.ref for d in Derivations(registry).children(registry.resolve("weather"))] == [
        "small:1"
    ]


def test_split_registers_both_parts_and_they_make_the_parent(registry: Registry) -> None:
    train, test = subsets.split(registry, "weather", 0.7, seed=1, first="train", second="test")
    first, second = files_of(registry, train.ref), files_of(registry, test.ref)
    assert not first.keys() & second.keys()
    assert first | second == files_of(registry, "weather:1")
    assert Derivations(registry).of(test).parameters == {
        "fraction": 0.7,
        "seed": 1,
        "part": "second",
    }


def test_a_split_whose_second_name_is_refused_registers_neither(registry: Registry) -> None:
    registry.register(NewVersion("taken", "local", "", ["x"], pins(["x"])))
    before = dump(registry)
    with pytest.raises(Conflict, match="'taken' exists"):
        subsets.split(registry, "weather", 0.5, first="fresh", second="taken")
    assert dump(registry) == before


@pytest.mark.parametrize(
    ("setup", "name", "message"),
    [
        (None, "weather", "as a version of 'weather' itself"),
        ("storage", "other", "registered from storage"),
        ("filter", "other", "a filter of weather:1, not a sample"),
        ("other-parent", "other", "a sample of elsewhere:1, not a sample of weather"),
    ],
)
def test_a_name_that_holds_other_data_is_refused(
    registry: Registry, setup: str | None, name: str, message: str
) -> None:
    if setup == "storage":
        registry.register(NewVersion("other", "local", "", ["x"], pins(["x"])))
    elif setup == "filter":
        subsets.filter_files(registry, "weather", subsets.FileFilter(take=3), register="other")
    elif setup == "other-parent":
        registry.register(NewVersion("elsewhere", "local", "", ["x"], pins(PATHS)))
        subsets.sample(registry, "elsewhere", 0.5, register="other")
    before = dump(registry)
    with pytest.raises(Conflict, match=message):
        subsets.sample(registry, "weather", 0.5, register=name)
    assert dump(registry) == before


def test_a_sample_of_the_parents_next_version_is_the_next_version(registry: Registry) -> None:
    subsets.sample(registry, "weather", 0.3, register="small")
    registry.register(NewVersion("weather", "local", "Weather", ["Weather"],
                                 pins(PATHS + [f"new/{i}" for i in range(50)])))  # fmt: skip
    second = subsets.sample(registry, "weather", 0.3, register="small")
    assert second.ref == "small:2"
    old = set(files_of(registry, "small:1"))
    assert {p for p in files_of(registry, "small:2") if p in PATHS} == old


def test_an_empty_result_registers_nothing(registry: Registry) -> None:
    before = dump(registry)
    with pytest.raises(UserError, match="keeps no files; nothing registered"):
        subsets.filter_files(registry, "weather", subsets.FileFilter(include=("nothing",)),
                             register="empty")  # fmt: skip
    assert dump(registry) == before


def test_derive_once_registers_a_derivation_once(registry: Registry) -> None:
    parent = registry.resolve("weather")
    rule = subsets.Sample(0.4, 9)
    first, created = subsets.derive_once(registry, parent, rule, "small")
    again, created_again = subsets.derive_once(registry, parent, subsets.Sample(0.4, 9), "small")
    assert (created, created_again, again) == (True, False, first)
    _, other = subsets.derive_once(registry, parent, subsets.Sample(0.4, 10), "small")
    assert other


def test_a_registry_of_schema_2_gains_the_derivations_table(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    conn = sqlite3.connect(path)
    older = "".join(MIGRATIONS[:2]) + "PRAGMA user_version = 2;"
    conn.executescript(older + "INSERT INTO datasets (name, created_at) VALUES ('kept', 'then');")
    conn.close()
    with Registry(path) as reg:
        assert reg.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in reg.connection.execute("SELECT name FROM sqlite_master")}
        assert "derivations" in tables
        assert reg.connection.execute("SELECT name FROM datasets").fetchall() == [("kept",)]
