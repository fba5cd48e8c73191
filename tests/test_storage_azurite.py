"""Storage against the real emulator: listing, pinning, and failing fast and quietly."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amlfs import objects
from amlfs.datastores import make_datastore
from amlfs.errors import SourceChanged, StorageError, StorageUnreachable, UserError
from amlfs.storage import STREAMED_FROM, Listing, Store
from tests.conftest import CONNECTION_ENV, Container
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port

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
    secret = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/{ACCOUNT};"
    )
    ds = make_datastore("down", "az://nothing", connection_string_env="DOWN_CONN")
    store = Store(ds, env={"DOWN_CONN": secret})
    started = time.monotonic()
    with pytest.raises(StorageUnreachable) as raised:  # an outage, not an answer
        store.list_source("a")
    assert time.monotonic() - started < 30
    assert "cannot list a: connection refused" in str(raised.value)
    assert ACCOUNT_KEY not in str(raised.value) and secret not in str(raised.value)


def test_listing_reports_progress_as_it_goes(store: Store) -> None:
    heard: list[int] = []
    listing = store.list_source("Weather", heard.append)
    assert sum(heard) == len(listing.files) == 4
    heard.clear()
    listing = store.list_source("Weather/*/*.csv", heard.append)
    assert sum(heard) == len(listing.files) == 2


# Reads of pinned blobs (amlfs.objects): ranged, conditional on the pinned etag, with every
# credential kind the emulator can check; an account key or a SAS signs requests to
# ACCOUNT.blob.core.windows.net, pointed at the emulator here.

SECRET_ENV = "AMLFS_TEST_READ_SECRET"
BLOB = "Weather/week27/sub/b.csv"


def container_sas(container: Container) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        ACCOUNT, container.name, account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip


@pytest.fixture
def emulated_endpoint(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        objects, "blob_endpoint", lambda account: f"http://127.0.0.1:{azurite.port}/{account}"
    )


def reader(container: Container, kind: str, azurite: Azurite) -> Store:
    """A Store of CONTAINER that reads with the credential KIND (made for reading only)."""
    if kind == "connection-string-env":
        ds = make_datastore("r", container.url, connection_string_env=SECRET_ENV)
        return Store(ds, env={SECRET_ENV: azurite.connection_string}, reads_only=True)
    if kind == "account-key-env":
        ds = make_datastore("r", container.url, account_key_env=SECRET_ENV, account_name=ACCOUNT)
        return Store(ds, env={SECRET_ENV: ACCOUNT_KEY}, reads_only=True)
    ds = make_datastore("r", container.url, sas_token_env=SECRET_ENV, account_name=ACCOUNT)
    return Store(ds, env={SECRET_ENV: container_sas(container)}, reads_only=True)


KINDS = ["connection-string-env", "account-key-env", "sas-token-env"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_ranged_read_returns_the_pinned_bytes_with_each_credential(
    store: Store, container: Container, azurite: Azurite, emulated_endpoint: None, kind: str
) -> None:
    (pinned,) = store.list_source(BLOB).files
    data = FILES[BLOB]
    assert (
        reader(container, kind, azurite).read_pinned(BLOB, 10, 1500, pinned.etag) == data[10:1500]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_blob_changed_or_deleted_after_pinning_is_never_read(
    store: Store, container: Container, azurite: Azurite, emulated_endpoint: None, kind: str
) -> None:
    (pinned,) = store.list_source(BLOB).files
    store_reads = reader(container, kind, azurite)
    container.put({BLOB: b"x" * 2000})
    with pytest.raises(SourceChanged, match="changed since it was pinned"):
        store_reads.read_pinned(BLOB, 0, 100, pinned.etag)
    container.fs.rm_file(f"{container.name}/{BLOB}")
    with pytest.raises(SourceChanged):
        store_reads.read_pinned(BLOB, 0, 100, pinned.etag)


@pytest.mark.parametrize("size", [STREAMED_FROM - 1, 3 * STREAMED_FROM + 5])
def test_a_range_read_in_pieces_gives_the_pinned_bytes_piece_by_piece(
    store: Store, container: Container, size: int
) -> None:
    data = os.urandom(size)
    container.put({"big.bin": data})
    (pinned,) = store.list_source("big.bin").files
    lengths = [size // 3, size // 3, size - 2 * (size // 3) - 10]  # from byte 10 to the end
    pieces = list(store.read_pinned_pieces("big.bin", 10, lengths, pinned.etag))
    assert [len(piece) for piece in pieces] == lengths
    assert b"".join(pieces) == data[10:]
    container.put({"big.bin": data[::-1]})
    with pytest.raises(SourceChanged, match="changed since it was pinned"):
        list(store.read_pinned_pieces("big.bin", 0, lengths, pinned.etag))


def test_a_whole_download_is_the_pinned_file_or_source_changed(
    store: Store, container: Container, tmp_path: Path
) -> None:
    (pinned,) = store.list_source(BLOB).files
    store.download_pinned(BLOB, pinned.etag, tmp_path / "b.csv")
    assert (tmp_path / "b.csv").read_bytes() == FILES[BLOB]
    container.put({BLOB: b"rewritten"})
    with pytest.raises(SourceChanged):
        store.download_pinned(BLOB, pinned.etag, tmp_path / "again.csv")


def test_reading_from_an_unreachable_store_fails_within_seconds_and_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    sas = "sv=2024-01-01&ss=b&srt=sco&sp=rl&sig=SuperSecretSignature%2Fvalue%3D"
    monkeypatch.setattr(
        objects, "blob_endpoint", lambda account: f"http://127.0.0.1:{port}/{account}"
    )
    secret = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    by_string = make_datastore("down", "az://nothing", connection_string_env="DOWN")
    by_sas = make_datastore("down", "az://nothing", sas_token_env="DOWN", account_name=ACCOUNT)
    for ds, value in ((by_string, secret), (by_sas, sas)):
        store = Store(ds, env={"DOWN": value}, reads_only=True)
        started = time.monotonic()
        with pytest.raises(StorageError) as raised:
            store.read_pinned("a.bin", 0, 10, '"0x1"')
        assert time.monotonic() - started < 15
        assert "cannot read a.bin" in str(raised.value)
        assert not leaked(str(raised.value), [secret, ACCOUNT_KEY, sas, "SuperSecretSignature"])


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def test_reading_pinned_blobs_imports_neither_adlfs_nor_the_azure_sdk(
    store: Store, container: Container, azurite: Azurite
) -> None:
    """What lets a mount daemon start at once: its reads need no half second of imports."""
    (pinned,) = store.list_source(BLOB).files
    script = f"""
import sys
from amlfs.registry.models import Datastore
from amlfs.storage import Store
ds = Datastore("r", {container.url!r}, "connection-string-env", {SECRET_ENV!r})  # as registered
assert Store(ds, reads_only=True).read_pinned({BLOB!r}, 0, 2000, {pinned.etag!r}) == {FILES[BLOB]!r}
print(sorted(m for m in sys.modules if m.split(".")[0] in ("adlfs", "azure", "fsspec")))
"""
    env = {**os.environ, SECRET_ENV: azurite.connection_string}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "url",
    ["az://data", "az://data/Weather/week27/", "abfs://data@acct.dfs.core.windows.net/x/y",
     "az://data@acct.blob.core.windows.net/x"],
)  # fmt: skip
def test_an_azure_datastore_is_rooted_and_named_as_adlfs_names_it(url: str) -> None:
    """Cached blocks are keyed by these names: they must not move."""
    ds = make_datastore("n", url, connection_string_env=SECRET_ENV)
    conn = f"AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/x"
    store = Store(ds, env={SECRET_ENV: conn}, reads_only=True)
    adlfs_root = store.fs._strip_protocol(url).rstrip("/")  # the filesystem opened only now
    assert store.root == adlfs_root
    assert store.identity == f"{url.split(':')[0]}://{store.fs.account_name or ''}@{adlfs_root}"
