"""Conditional writes, which the team catalog rests on, on Azure (the emulator) and on a
local folder: a name is created once however many writers race for it, and a replace
over an etag succeeds for one writer only."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from amlfs.datastores import make_datastore
from amlfs.errors import NameTaken, NotAsStored
from amlfs.storage import Store
from tests.conftest import CONNECTION_ENV, Container

WRITERS = 8


@pytest.fixture(params=["azure", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "azure":
        container: Container = request.getfixturevalue("container")
        return Store(make_datastore("s", container.url, connection_string_env=CONNECTION_ENV))
    (tmp_path / "folder").mkdir()
    return Store(make_datastore("s", (tmp_path / "folder").as_uri()))


def race(action, count: int = WRITERS) -> list[object]:
    """ACTION(i) for i in range(COUNT), all at once: each result or the exception."""

    def attempt(i: int) -> object:
        try:
            return action(i)
        except Exception as exc:  # the race's losers are the point
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(attempt, range(count)))


def test_a_name_is_created_by_exactly_one_of_many_writers(store: Store) -> None:
    results = race(lambda i: store.create("cat/v/0000000001.json", f"writer {i}".encode()))
    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, NameTaken) for r in results if not isinstance(r, str))
    data, etag = store.fetch("cat/v/0000000001.json")
    assert data == f"writer {winners[0]}".encode()
    assert etag == results[winners[0]]


def test_a_replace_over_an_etag_succeeds_for_exactly_one_writer(store: Store) -> None:
    first = store.create("cat/d.json", b"first")
    results = race(lambda i: store.replace("cat/d.json", f"writer {i}".encode(), first))
    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, NotAsStored) for r in results if not isinstance(r, str))
    data, etag = store.fetch("cat/d.json")
    assert (data, etag) == (f"writer {winners[0]}".encode(), results[winners[0]])
    with pytest.raises(NotAsStored):
        store.replace("cat/d.json", b"stale", first)


def test_listing_gives_every_name_with_the_etag_a_fetch_gives(store: Store) -> None:
    for name in ("a.json", "sub/b.json", "sub/deeper/c.json"):
        store.create(f"cat/{name}", name.encode())
    store.create("elsewhere.json", b"x")
    listed = store.list_etags("cat")
    assert set(listed) == {"a.json", "sub/b.json", "sub/deeper/c.json"}
    for name, etag in listed.items():
        assert store.fetch(f"cat/{name}") == (name.encode(), etag)
    found = store.fetch_many(["cat/a.json", "cat/missing.json", "cat/sub/b.json"])
    assert set(found) == {"cat/a.json", "cat/sub/b.json"}
    assert store.fetch("cat/missing.json") is None
    assert store.list_etags("nothing-here") == {}


def test_a_local_folder_leaves_no_temporary_or_lock_files_in_listings(tmp_path: Path) -> None:
    store = Store(make_datastore("s", tmp_path.as_uri()))
    etag = store.create("cat/x.json", b"1")
    store.replace("cat/x.json", b"2", etag)
    with pytest.raises(NameTaken):
        store.create("cat/x.json", b"3")
    assert list(store.list_etags("cat")) == ["x.json"]
    assert not [n for n in os.listdir(tmp_path / "cat") if n.endswith(".part")]


def test_a_rewrite_of_the_same_size_at_once_still_changes_the_etag(store: Store) -> None:
    """Two writes of one size within one clock tick: a swap over the first etag fails."""
    first = store.create("cat/same.json", b"aaaaa")
    second = store.replace("cat/same.json", b"bbbbb", first)
    assert second != first
    with pytest.raises(NotAsStored):
        store.replace("cat/same.json", b"ccccc", first)
    assert store.fetch("cat/same.json") == (b"bbbbb", second)
