"""Storage against the real emulator: listing, pinning, and failing fast and quietly."""

from __future__ import annotations

import hashlib
import time

import pytest

from amlfs.datastores import make_datastore
from amlfs.errors import StorageError, UserError
from amlfs.storage import Listing, Store
from tests.conftest import CONNECTION_ENV, Container

FILES = {
    "Weather/week27/a.csv": b"a" * 10,
    "Weather/week27/sub/b.csv": b"bb" * 1000,
    "Weather/week28/c.csv": b"c",
    "Weather/week28/d.json": b"{}",
    "other/x.bin": b"x" * 3,
}


@pytest.fixture
def store(container: Container) -> Store:
    container.put(FILES)
    ds = make_datastore("blob", container.url, connection_string_env=CONNECTION_ENV)
    return Store(ds)


def names(listing: Listing) -> set[str]:
    return {f.path for f in listing.files}


def test_a_folder_lists_every_file_below_it(store: Store) -> None:
    listing = store.list_source("Weather/week27")
    assert names(listing) == {"Weather/week27/a.csv", "Weather/week27/sub/b.csv"}
    assert listing.base == "Weather/week27"


def test_a_file_lists_itself_rooted_at_its_folder(store: Store) -> None:
    listing = store.list_source("Weather/week28/c.csv")
    assert names(listing) == {"Weather/week28/c.csv"}
    assert listing.base == "Weather/week28"


def test_a_glob_lists_its_matches_rooted_at_its_fixed_part(store: Store) -> None:
    listing = store.list_source("Weather/*/*.csv")
    assert names(listing) == {"Weather/week27/a.csv", "Weather/week28/c.csv"}
    assert listing.base == "Weather"


def test_a_missing_path_lists_nothing(store: Store) -> None:
    assert store.list_source("Weather/week99").files == []


def test_every_file_is_pinned_with_size_etag_md5_and_mtime(
    store: Store, container: Container
) -> None:
    (pinned,) = store.list_source("Weather/week27/sub/b.csv").files
    info = container.fs.info(f"{container.name}/Weather/week27/sub/b.csv")
    assert pinned.size == 2000
    assert pinned.etag == info["etag"]
    assert pinned.md5 == hashlib.md5(FILES["Weather/week27/sub/b.csv"]).digest()
    assert pinned.last_modified.startswith(str(info["last_modified"].year))


def test_a_rewritten_blob_gets_a_new_etag(store: Store, container: Container) -> None:
    (before,) = store.list_source("other/x.bin").files
    container.put({"other/x.bin": b"y" * 3})
    (after,) = store.list_source("other/x.bin").files
    assert after.etag != before.etag and after.size == before.size


def test_a_missing_secret_is_a_user_error(container: Container) -> None:
    ds = make_datastore("blob", container.url, connection_string_env="AMLFS_TEST_UNSET_VAR")
    with pytest.raises(UserError, match=r"\$AMLFS_TEST_UNSET_VAR, which is not set"):
        Store(ds, env={})


def test_an_unreachable_store_fails_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, free_port

    secret = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};"
    )
    ds = make_datastore("down", "az://nothing", connection_string_env="DOWN_CONN")
    store = Store(ds, env={"DOWN_CONN": secret})
    started = time.monotonic()
    with pytest.raises(StorageError) as raised:
        store.list_source("a")
    assert time.monotonic() - started < 30
    assert "cannot list a" in str(raised.value)
    assert ACCOUNT_KEY not in str(raised.value) and secret not in str(raised.value)


def test_listing_reports_progress_as_it_goes(store: Store) -> None:
    heard: list[int] = []
    listing = store.list_source("Weather", heard.append)
    assert sum(heard) == len(listing.files) == 4
    heard.clear()
    listing = store.list_source("Weather/*/*.csv", heard.append)
    assert sum(heard) == len(listing.files) == 2
