"""Faults under a mount: changed sources, storage going away, a damaged or full cache.

Never different bytes, never a hung reader; the log says what happened."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import adlfs
import diskcache
import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container, require
from tests.support.azurite import Azurite
from tests.support.mounts import Mounts, status_of
from tests.support.sample import FILES, OPTIONS

IO_TIMEOUT_S = 3.0
MiB = 1024 * 1024


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


def block_file(cache_dir: Path, index: int) -> Path:
    """The file the block cache keeps block INDEX of the one cached blob in."""
    with diskcache.Cache(str(cache_dir)) as store:
        keys = [k for k in store.iterkeys() if k.startswith("v2|") and k.endswith(f"|{index}")]
        assert len(keys) == 1, keys
        with store.read(keys[0]) as stored:
            return Path(stored.name)


def test_a_flipped_byte_in_a_cached_block_is_mended_from_storage_by_its_sub_block(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    """The read returns the pinned bytes, the log names the block, and only the damaged
    64 KiB of the 1 MiB block is fetched again; the mended block replaces the damaged one."""
    big = random.Random(7).randbytes(3 * MiB + 1000)
    dataset.put({"big.bin": big})
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")  # ds:2
    options = ("--block-size", "1MiB", "--io-timeout", "5")
    root = mounts.mount("ds:2", *options)
    assert (root / "big.bin").read_bytes() == big
    assert status_of(cli, root)["pending_writes"] == 0  # every block is written
    mounts.unmount(root)
    assert mounts.wait_gone(root)

    cache_dir = cli.home / "cache" / "blocks"
    damaged = block_file(cache_dir, 1)
    with open(damaged, "r+b") as f:  # one byte in the second 64 KiB of block 1
        f.seek(100_000)
        byte = f.read(1)
        f.seek(100_000)
        f.write(bytes([byte[0] ^ 0x01]))

    again = mounts.mount("ds:2", *options)
    assert (again / "big.bin").read_bytes() == big
    stats = status_of(cli, again)
    assert (stats["bytes_fetched"], stats["fetches"], stats["mended"]) == (64 * 1024, 1, 1)
    assert "ds:2 big.bin: cached block 1 is damaged (bytes 65536-131072 of it)" in daemon_log(cli)
    mounts.unmount(again)
    assert mounts.wait_gone(again)

    third = mounts.mount("ds:2", *options)
    assert (third / "big.bin").read_bytes() == big
    assert status_of(cli, third)["bytes_fetched"] == 0  # the mended block was kept


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
    assert "serving without" in daemon_log(cli)  # the cache says it is not used
    assert status_of(cli, root)["writes_skipped"] > 0
