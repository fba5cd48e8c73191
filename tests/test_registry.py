"""The registry as the store of record: versions, the pinned tree, files on disk."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from amlfs import home
from amlfs.errors import Conflict, NotFound, UserError
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry.schema import SCHEMA_VERSION


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(home.registry_path(tmp_path / "state"))
    reg.add_datastore(Datastore("local", "file:///data", "none"))
    yield reg
    reg.close()


def files(*specs: str) -> list[PinnedFile]:
    return [PinnedFile(p, len(p), f'"etag-{p}"', None, None) for p in specs]


def new(dataset: str = "ds", *paths: str) -> NewVersion:
    return NewVersion(dataset, "local", "root", ["root"], files(*(paths or ("a.txt",))))


def test_state_folder_and_registry_are_private(tmp_path: Path) -> None:
    path = home.registry_path(tmp_path / "state")
    with Registry(path) as reg:
        reg.add_datastore(Datastore("local", "file:///data", "none"))
        reg.register(new())
        assert Path(f"{path}-wal").exists()
        assert stat.S_IMODE(os.stat(f"{path}-wal").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_schema_is_versioned_in_wal_mode_with_foreign_keys(registry: Registry) -> None:
    conn = sqlite3.connect(registry.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert registry._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = home.registry_path(tmp_path / "state")
    Registry(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this amlfs"):
        Registry(path)


def test_versions_count_from_one_per_dataset(registry: Registry) -> None:
    assert [registry.register(new("a")).version for _ in range(3)] == [1, 2, 3]
    assert registry.register(new("b")).version == 1
    assert registry.get_version("a").version == 3
    assert registry.resolve("a:2").version == 2
    assert [v.version for v in registry.list_versions("a")] == [1, 2, 3]
    assert [(v.dataset, v.version) for v in registry.list_datasets()] == [("a", 3), ("b", 1)]


def test_unknown_names_and_versions_are_not_found(registry: Registry) -> None:
    registry.register(new("a"))
    with pytest.raises(NotFound):
        registry.resolve("a:2")
    with pytest.raises(NotFound):
        registry.resolve("zzz")
    with pytest.raises(NotFound):
        registry.register(NewVersion("b", "nope", "", ["x"], files("x")))


def test_a_version_records_what_it_pins(registry: Registry) -> None:
    version = registry.register(
        NewVersion("a", "local", "r", ["r/x", "r/y"], files("x/1", "y/22"), "desc", {"k": "v"})
    )
    assert (version.file_count, version.total_bytes) == (2, 7)
    assert (version.root, version.sources, version.description, version.tags) == (
        "r", ["r/x", "r/y"], "desc", {"k": "v"}
    )  # fmt: skip
    assert [f.path for f in registry.iter_files(version)] == ["x/1", "y/22"]


def test_an_invalid_tree_registers_nothing(registry: Registry) -> None:
    for bad in (["a", "a/b"], ["a", "a"], ["../x"], ["/abs"]):
        with pytest.raises(UserError):
            registry.register(new("d", *bad))
    with pytest.raises(NotFound):
        registry.get_version("d")
    assert registry._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0


def test_the_tree_answers_lookups_and_listings_by_query(registry: Registry) -> None:
    version = registry.register(new("t", "b/z", "b/a", "a", "c/d/e", "b/c/x"))
    root = registry.root(version)
    assert [e.name for e in registry.list_folder(root.id)] == ["a", "b", "c"]
    b = registry.lookup(root.id, "b")
    assert b.is_dir
    assert [(e.name, e.is_dir) for e in registry.list_folder(b.id)] == [
        ("a", False), ("c", True), ("z", False)
    ]  # fmt: skip
    assert [e.name for e in registry.list_folder(b.id, after="a")] == ["c", "z"]
    assert [e.name for e in registry.list_folder(b.id, after="a", limit=1)] == ["c"]
    z = registry.lookup(b.id, "z")
    assert (z.size, z.etag, z.is_dir) == (3, '"etag-b/z"', False)
    assert registry.lookup(b.id, "nope") is None
    assert registry.entry(z.id) == z


def test_entry_ids_are_permanent_and_distinct_across_versions(tmp_path: Path) -> None:
    path = home.registry_path(tmp_path / "state")
    with Registry(path) as reg:
        reg.add_datastore(Datastore("local", "file:///data", "none"))
        v1, v2 = reg.register(new("t", "a/b")), reg.register(new("t", "a/b"))
        ids = (reg.lookup(reg.root(v1).id, "a").id, reg.lookup(reg.root(v2).id, "a").id)
    assert ids[0] != ids[1]
    with Registry(path) as reg:
        again = reg.lookup(reg.root(reg.resolve("t:1")).id, "a").id
    assert again == ids[0]


def test_lookups_and_listings_use_the_index_not_a_scan(registry: Registry) -> None:
    version = registry.register(new("t", "a/b", "a/c"))
    statements: list[str] = []
    registry._conn.set_trace_callback(statements.append)
    root = registry.root(version)
    folder = registry.lookup(root.id, "a")
    registry.list_folder(folder.id, after="b")
    registry._conn.set_trace_callback(None)
    assert len(statements) == 3
    for sql in statements:
        plan = " ".join(row[-1] for row in registry._conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert plan.startswith("SEARCH entries USING"), (sql, plan)
        assert "INDEX entries_" in plan, (sql, plan)


def test_datastores_in_use_cannot_be_removed_or_repointed(registry: Registry) -> None:
    registry.register(new("a"))
    with pytest.raises(Conflict, match="used by 1 dataset version"):
        registry.remove_datastore("local")
    with pytest.raises(Conflict, match="cannot change"):
        registry.put_datastore(Datastore("local", "file:///elsewhere", "none"))
    with pytest.raises(Conflict, match="already exists"):
        registry.add_datastore(Datastore("local", "file:///data", "none"))
    registry.add_datastore(Datastore("spare", "file:///spare", "none"))
    registry.remove_datastore("spare")
    assert [d.name for d in registry.list_datastores()] == ["local"]


def test_put_datastore_reports_what_it_did(registry: Registry) -> None:
    ds = Datastore("az", "az://c", "connection-string-env", "CONN")
    assert registry.put_datastore(ds) == "created"
    assert registry.put_datastore(ds) == "unchanged"
    rotated = Datastore("az", "az://c", "connection-string-env", "OTHER")
    assert registry.put_datastore(rotated) == "updated"
    assert registry.get_datastore("az").credential_env == "OTHER"


def test_importing_the_latest_manifest_again_changes_nothing(registry: Registry) -> None:
    first, created = registry.import_version(new("a", "x", "y"))
    again, created_again = registry.import_version(new("a", "y", "x"))
    assert created and not created_again and again.version == first.version
    changed, created = registry.import_version(new("a", "x"))
    assert created and changed.version == 2


def test_a_failed_transaction_leaves_nothing(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.transaction():
        registry.register(new("a"))
        raise RuntimeError("boom")
    with pytest.raises(NotFound):
        registry.get_version("a")
