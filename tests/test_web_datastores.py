"""Datasets from public URLs: an http datastore served on 127.0.0.1.

A server that sends no ETag has its files pinned by content (their MD5, computed when
they are registered): a mount, a download and `dataset verify` serve or accept them only
as pinned, and a file rewritten at the server fails each of them, naming the file. A
server that sends ETags keeps its files pinned by ETag and read by range.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.registry import pins
from amlfs.registry.models import Datastore
from amlfs.storage import Store
from tests.conftest import Cli
from tests.support.mounts import Mounts
from tests.support.sample import BLOCK, OPTIONS
from tests.support.web import WebServer

FILES = {
    "data/labels.csv": b"a,1\nb,2\n",
    "data/train/big.bin": random.Random(7).randbytes(5 * BLOCK + 321),  # several blocks
    "data/train/small.bin": random.Random(8).randbytes(1000),
    "data/empty.dat": b"",
}
IN_VERSION = {path.removeprefix("data/"): data for path, data in FILES.items()}


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def tree_sha256s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def daemon_log(cli: Cli) -> str:
    return "".join(p.read_text() for p in (cli.home / "logs").glob("mount-*.log"))


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    """FILES on a server that sends no ETag and ignores ranges; stopped at teardown."""
    server = WebServer(tmp_path / "site")
    server.put(FILES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tagged_web(tmp_path: Path) -> Iterator[WebServer]:
    """FILES on a server that sends ETags and answers ranges; stopped at teardown."""
    server = WebServer(tmp_path / "tagged-site", etags=True)
    server.put(FILES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def register(cli: Cli, server: WebServer) -> None:
    cli.ok("datastore", "add", "web", server.url)
    cli.ok("dataset", "register", "pub", "--datastore", "web", "--path", "data/**")


def pinned_files(cli: Cli) -> dict[str, dict]:
    shown = json.loads(cli.ok("dataset", "show", "pub:1", "--files", "--json").out)
    return {f["path"]: f for f in shown["files"]}


def test_datastore_add_of_a_web_url_ends_its_confirmation_with_a_newline(cli: Cli) -> None:
    for name, url in (("web", "http://127.0.0.1:8080/data/"), ("tls", "https://example.org/x")):
        for result in (
            cli.ok("datastore", "add", name, url),
            cli.process("datastore", "show", name),
        ):
            assert result.out.endswith("\n") and result.out.count("\n") >= 1
    added = cli.process("datastore", "add", "third", "http://127.0.0.1:8080")
    assert added.code == 0
    assert added.out == "datastore third added (http://127.0.0.1:8080, credentials: none)\n"


def test_files_of_a_server_without_etags_are_pinned_by_their_md5(cli: Cli, web: WebServer) -> None:
    register(cli, web)
    files = pinned_files(cli)
    assert set(files) == set(IN_VERSION)
    for path, data in IN_VERSION.items():
        md5 = hashlib.md5(data).hexdigest()
        assert (files[path]["size"], files[path]["md5"]) == (len(data), md5)
        assert files[path]["etag"] == f"content-md5 {md5}"
        assert files[path]["last_modified"].endswith("+00:00")  # the server's Last-Modified


def test_a_manifest_of_pins_by_content_imports_back_to_the_same_version_and_no_other(
    cli: Cli, web: WebServer, tmp_path: Path
) -> None:
    register(cli, web)
    exported = tmp_path / "pub.yaml"
    cli.ok("dataset", "export", "pub:1", "-o", str(exported))
    assert cli.ok("dataset", "import", str(exported)).last_line == "pub:1"  # the same pins
    md5 = hashlib.md5(FILES["data/labels.csv"]).hexdigest()
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(exported.read_text().replace(f"md5: {md5}", f"md5: {'f' * 32}"))
    refused = cli("dataset", "import", str(tampered))
    assert refused.code == 2
    assert f"pins by content, so md5 must be {md5}" in refused.err


def test_a_mount_download_and_verify_give_the_pinned_bytes_of_a_server_without_etags(
    cli: Cli, web: WebServer, mounts: Mounts, tmp_path: Path
) -> None:
    register(cli, web)
    registered = len(web.gets("/data/train/big.bin"))
    root = mounts.mount("pub:1", *OPTIONS)
    with open(root / "train" / "big.bin", "rb") as f:  # a first read in the middle
        f.seek(3 * BLOCK + 5)
        assert f.read(BLOCK) == IN_VERSION["train/big.bin"][3 * BLOCK + 5 : 4 * BLOCK + 5]
    assert tree_sha256s(root) == sha256s(IN_VERSION)
    # Fetched whole, once (no ranges: this server has none); every block from then on
    # came from what that fetch checked and cached.
    assert web.gets("/data/train/big.bin")[registered:] == [None]
    mounts.unmount(root)
    cli.ok("download", "pub:1", str(tmp_path / "dest"))
    assert tree_sha256s(tmp_path / "dest") == sha256s(IN_VERSION)
    verified = cli.ok("dataset", "verify", "pub:1")
    assert "4 files checked, 0 changed, 0 missing" in verified.out


def test_a_file_rewritten_at_a_server_without_etags_fails_its_read_verify_and_download(
    cli: Cli, web: WebServer, mounts: Mounts, tmp_path: Path
) -> None:
    register(cli, web)
    root = mounts.mount("pub:1", *OPTIONS)
    rewritten = bytearray(FILES["data/train/big.bin"])
    rewritten[4 * BLOCK] ^= 0xFF  # same size, one byte differs, in a block not read first
    web.put({"data/train/big.bin": bytes(rewritten)})
    with open(root / "train" / "big.bin", "rb") as f, pytest.raises(OSError) as raised:
        f.read(100)
    assert raised.value.errno == errno.EIO
    assert (root / "labels.csv").read_bytes() == FILES["data/labels.csv"]
    assert "pub:1 train/big.bin changed since its version was registered" in daemon_log(cli)

    verified = cli("dataset", "verify", "pub:1")
    assert verified.code == 1
    assert "changed  train/big.bin" in verified.out

    downloaded = cli("download", "pub:1", str(tmp_path / "dest"))
    assert downloaded.code == 1
    assert "train/big.bin: changed at the source since the version was registered" in (
        downloaded.err
    )
    assert not (tmp_path / "dest" / "train" / "big.bin").exists()
    assert (tmp_path / "dest" / "labels.csv").read_bytes() == FILES["data/labels.csv"]


def test_blocks_cached_after_the_check_are_served_once_the_server_changed(
    cli: Cli, web: WebServer, mounts: Mounts
) -> None:
    register(cli, web)
    first = mounts.mount("pub:1", *OPTIONS)
    assert (first / "train" / "big.bin").read_bytes() == FILES["data/train/big.bin"]
    mounts.unmount(first)
    web.put({"data/train/big.bin": b"rewritten since"})
    again = mounts.mount("pub:1", *OPTIONS)  # another daemon: only the disk cache is shared
    assert (again / "train" / "big.bin").read_bytes() == FILES["data/train/big.bin"]


def test_a_server_with_etags_keeps_pins_by_etag_and_reads_by_range(
    cli: Cli, tagged_web: WebServer, mounts: Mounts
) -> None:
    register(cli, tagged_web)
    files = pinned_files(cli)
    assert all(f["etag"].startswith('"') and f["md5"] is None for f in files.values())
    root = mounts.mount("pub:1", *OPTIONS)
    big = FILES["data/train/big.bin"]
    with open(root / "train" / "big.bin", "rb") as f:  # a range in the middle, by range
        f.seek(3 * BLOCK + 5)
        assert f.read(BLOCK) == big[3 * BLOCK + 5 : 4 * BLOCK + 5]
    assert (root / "train" / "big.bin").read_bytes() == big
    ranged = tagged_web.gets("/data/train/big.bin")
    assert ranged and all(wanted is not None for wanted in ranged)
    tagged_web.put({"data/train/small.bin": b"rewritten since"})  # not read yet
    with pytest.raises(OSError) as raised:
        (root / "train" / "small.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    assert cli("dataset", "verify", "pub:1").code == 1


def test_a_pin_by_content_is_never_read_by_range_nor_sent_as_an_etag() -> None:
    token = pins.content_etag(bytes(range(16)))
    assert token == "content-md5 000102030405060708090a0b0c0d0e0f"
    assert pins.pinned_md5(token) == bytes(range(16))
    assert pins.pinned_md5('"0x8DC0FFEE"') is None
    assert pins.pinned_md5("mtime-1.5-size-3") is None
    store = Store(Datastore("web", "http://127.0.0.1:9/data", "none"))
    with pytest.raises(ValueError, match="pinned by content"):
        store.read_pinned("a.bin", 0, 10, token)


@pytest.mark.parametrize(
    ("etag", "md5", "problem"),
    [
        ("content-md5 " + "ab" * 16, "ab" * 16, None),
        ('"0x8DC0FFEE"', None, None),
        ("content-md5 " + "ab" * 16, None, "md5 must be"),
        ("content-md5 " + "ab" * 16, "cd" * 16, "md5 must be"),
        ("content-md5 ABC", None, "32 hex digits"),
    ],
)
def test_an_imported_pin_by_content_must_agree_with_its_md5(
    etag: str, md5: str | None, problem: str | None
) -> None:
    found = pins.problem(etag, bytes.fromhex(md5) if md5 else None)
    assert (found is None) if problem is None else (problem in found)
