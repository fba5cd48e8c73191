"""A mount's memory under a real mount on the emulator: once the blocks of a cold pass
are served and written to the disk cache, the daemon holds what its memory cache holds,
not the high-water mark of every block it ever handled."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts, status_of
from tests.support.waiting import until

MiB = 1024 * 1024
MEMORY_CACHE_MIB = 16
# Python's own allocations while serving (the registry's pages, request objects) and
# the kernel's share of a daemon's pages: far below the blocks of one cold pass.
MARGIN_MIB = 24


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_blocks_served_cold_leave_the_daemon_once_written(
    cli: Cli, container: Container, mounts: Mounts
) -> None:
    rng = random.Random(7)
    files = {f"big/f{i}.bin": rng.randbytes(32 * MiB) for i in range(3)}
    container.put(files)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "big", "--datastore", "blob", "--path", "big")
    root = mounts.mount("big:1", "--memory-cache", f"{MEMORY_CACHE_MIB}MiB", "--io-timeout", "30")
    pid = mounts.pids[root]
    before = resident_mib(pid)
    for path, data in files.items():  # 96 MiB of 4 MiB blocks, fetched and freed
        read = (root / path.removeprefix("big/")).read_bytes()
        assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()
    until(lambda: _settled(cli, root), "read-ahead and writes behind done")
    assert resident_mib(pid) - before <= MEMORY_CACHE_MIB + MARGIN_MIB


def _settled(cli: Cli, root: Path) -> bool:
    stats = status_of(cli, root)
    return stats["pending_writes"] == stats["fetches_in_flight"] == stats["prefetches"] == 0
