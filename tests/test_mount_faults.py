"""Faults under a mount: changed sources, storage going away, a damaged or full cache.

Never different bytes, never a hung reader; the log says what happened."""

from __future__ import annotations

import errno
import json
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
from tests.support.waiting import until

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


IO_TIMEOUT_S = 5.0
MORE = {f"more/f{i}.bin": bytes([i]) * 5000 for i in range(4)}  # small files, one block each


def stats_now(cli: Cli, root: Path) -> dict:
    """The mount's latest status record (written every second)."""
    listed = json.loads(cli.ok("status", "--json").out)
    return next(m for m in listed if m["mountpoint"] == str(root))["stats"]


def storage_state(cli: Cli, root: Path) -> dict:
    return stats_now(cli, root).get("storage", {})


def hits(cli: Cli, root: Path) -> int:
    stats = stats_now(cli, root)
    return stats.get("memory_hits", 0) + stats.get("disk_hits", 0)


def eio_within(path: Path, offset: int, bound_s: float) -> None:
    """A read of PATH at OFFSET fails with EIO, within BOUND_S seconds."""
    started = time.monotonic()
    with pytest.raises(OSError) as raised, open(path, "rb", buffering=0) as f:
        os.pread(f.fileno(), 1000, offset)
    took = time.monotonic() - started
    assert raised.value.errno == errno.EIO
    assert took < bound_s, f"{path.name}: the reader waited {took:.1f} s"


def reads_again_within(path: Path, expected: bytes, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    while True:  # bounded by the deadline; each failing read fails at once
        try:
            assert path.read_bytes() == expected
            return
        except OSError as error:
            assert error.errno == errno.EIO
            if time.monotonic() > deadline:
                pytest.fail(f"{path.name} not readable within {bound_s} s of storage's return")
        time.sleep(0.2)


def test_storage_down_fails_the_first_read_within_the_bound_and_the_next_at_once(
    cli: Cli, own_emulator: Azurite, mounts: Mounts
) -> None:
    """Once storage is known unreachable, reads of uncached data fail at once (not each
    after --io-timeout) while listings and cached data are served; status says so; reads
    come back without a remount when storage does."""
    fs = adlfs.AzureBlobFileSystem(
        connection_string=own_emulator.connection_string, skip_instance_cache=True
    )
    fs.mkdir("faults")
    fs.pipe({f"faults/{path}": data for path, data in {**FILES, **MORE}.items()})
    cli.ok("datastore", "add", "own", "az://faults", "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "ds", "--datastore", "own", "--path", ".")
    root = mounts.mount("ds:1", "--block-size", "64KiB", "--io-timeout", str(IO_TIMEOUT_S))
    big, cached = root / "train" / "a.bin", root / "labels.csv"
    with open(big, "rb", buffering=0) as f:
        assert f.read(1000) == FILES["train/a.bin"][:1000]
    assert cached.read_bytes() == FILES["labels.csv"]
    until(lambda: storage_state(cli, root) == {"state": "reachable"}, "status: reachable")

    own_emulator.stop()
    eio_within(big, 3 * 64 * 1024, IO_TIMEOUT_S + 5)  # a block nobody fetched yet
    for path in MORE:  # known unreachable: each further uncached read fails at once
        eio_within(root / path, 0, 5)
    assert sorted(os.listdir(root / "train")) == ["a.bin", "b.bin", "empty.dat", "nested"]
    assert (root / "more" / "f0.bin").stat().st_size == 5000
    hits_before = hits(cli, root)
    with open(cached, "rb") as f:  # dropped from the kernel's cache: asked of the daemon
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == FILES["labels.csv"]
    until(lambda: hits(cli, root) > hits_before, "the cached file served by the daemon")
    state = storage_state(cli, root)
    assert state["state"] == "unreachable" and "connection refused" in state["error"]
    assert time.time() - 120 < state["since"] <= time.time()
    text = cli.ok("status").out
    assert "storage unreachable since" in text

    own_emulator.start()  # same port, same data
    reads_again_within(root / "more" / "f1.bin", MORE["more/f1.bin"], 15)
    assert big.read_bytes() == FILES["train/a.bin"]
    until(lambda: storage_state(cli, root) == {"state": "reachable"}, "status: reachable")


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
