"""Faults under a mount: changed sources, storage going away, a damaged or full cache.

Never different bytes, never a hung reader; the log says what happened."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import adlfs
import diskcache
import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container, require
from tests.support.azurite import Azurite
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS

IO_TIMEOUT_S = 3.0


def daemon_log(cli: Cli) -> str:
    return "".join(p.read_text() for p in (cli.home / "logs").glob("mount-*.log"))


def test_a_changed_source_fails_that_file_only_and_says_so(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    dataset.put({"train/b.bin": b"rewritten after version 1 was registered"})
    with pytest.raises(OSError) as raised:
        (root / "train" / "b.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    assert (root / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    assert "ds:1 train/b.bin changed since its version was registered" in daemon_log(cli)


def test_storage_down_is_eio_within_the_bound_and_reads_recover_when_it_returns(
    cli: Cli, own_emulator: Azurite, mounts: Mounts
) -> None:
    fs = adlfs.AzureBlobFileSystem(
        connection_string=own_emulator.connection_string, skip_instance_cache=True
    )
    fs.mkdir("faults")
    fs.pipe({f"faults/{path}": data for path, data in FILES.items()})
    cli.ok("datastore", "add", "own", "az://faults", "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "ds", "--datastore", "own", "--path", ".")
    root = mounts.mount("ds:1", "--block-size", "64KiB", "--io-timeout", str(IO_TIMEOUT_S))
    big = root / "train" / "a.bin"
    with open(big, "rb", buffering=0) as f:
        assert f.read(1000) == FILES["train/a.bin"][:1000]

    own_emulator.stop()
    started = time.monotonic()
    with pytest.raises(OSError) as raised, open(big, "rb", buffering=0) as f:
        os.pread(f.fileno(), 1000, 3 * 64 * 1024)  # a block nobody fetched yet
    took = time.monotonic() - started
    assert raised.value.errno == errno.EIO
    assert took < IO_TIMEOUT_S + 5, f"the reader waited {took:.1f} s"
    assert sorted(os.listdir(root / "train")) == ["a.bin", "b.bin", "empty.dat", "nested"]

    own_emulator.start()  # same port, same data
    assert big.read_bytes() == FILES["train/a.bin"]


def test_a_damaged_cached_block_is_dropped_and_fetched_again(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    assert (root / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    mounts.unmount(root)
    assert mounts.wait_gone(root)

    with diskcache.Cache(str(cli.home / "cache" / "blocks")) as store:
        keys = list(store.iterkeys())
        assert keys
        for key in keys:
            value, crc = store.get(key, tag=True)
            damaged = bytearray(value)
            damaged[-1] ^= 0xFF  # one flipped bit pattern in the data...
            store.set(key, bytes(damaged), tag=crc)  # ...under its old CRC: only it tells

    again = mounts.mount("ds:1", *OPTIONS)
    assert (again / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    assert "dropping a damaged cached block" in daemon_log(cli)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: room for the cache's database and a block or two, no more."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_cache_disk_still_serves_every_read(
    cli: Cli, dataset: Container, mounts: Mounts, tiny_disk: Path
) -> None:
    root = mounts.mount("ds:1", *OPTIONS, "--cache-dir", str(tiny_disk / "cache"))
    for _ in range(2):
        for path, data in FILES.items():
            assert (root / path).read_bytes() == data
    assert "block cache write failed" in daemon_log(cli)
