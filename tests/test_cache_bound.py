"""The block cache's bound under pressure: four mounts share one cache folder and read,
at once, four times more than its limit. The folder never takes more space on disk than
its limit plus the documented margin (docs/cache.md, "The bound on disk"), and every
byte read is right, though blocks are evicted all the time by the other mounts."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

from amlfs.cache.blocks import on_disk_margin
from amlfs.reader import WRITERS
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts, status_of

MIB = 2**20
LIMIT = 32 * MIB
BLOCK = MIB
MOUNTS = 4
FILE_SIZE = 48 * MIB  # each mount reads a file of its own twice: 4 × 96 MiB through 32 MiB
CHUNK = 256 * 1024


def on_disk(folder: Path) -> int:
    """What FOLDER takes on disk, as du counts it: st_blocks of every file and folder
    under it. Entries removed while it walks are skipped."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except FileNotFoundError:
                continue
    return total


class Sampler(threading.Thread):
    """Samples the folder's size on disk, as often as it can, until stopped."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.stop = threading.Event()
        self.sizes: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.sizes.append(on_disk(self.folder))


def read_twice(path: Path, digests: dict[str, list[str]]) -> None:
    """Read PATH forwards, drop its pages from the kernel's cache, then read it backwards
    by CHUNK: its last blocks are then still in the shared folder, and the others' reads
    evict them meanwhile. The SHA-256 of each pass."""
    found = []
    with open(path, "rb", buffering=0) as source:
        digest = hashlib.sha256()
        while chunk := source.read(CHUNK):
            digest.update(chunk)
        found.append(digest.hexdigest())
        os.posix_fadvise(source.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = [os.pread(source.fileno(), CHUNK, at) for at in range(0, FILE_SIZE, CHUNK)[::-1]]
        found.append(hashlib.sha256(b"".join(reversed(chunks))).hexdigest())
    digests[path.name] = found


def test_four_mounts_reading_four_times_the_limit_keep_the_folder_within_its_margin(
    cli: Cli, container: Container, mounts: Mounts, tmp_path: Path
) -> None:
    files = {f"f{i}.bin": random.Random(i).randbytes(FILE_SIZE) for i in range(MOUNTS)}
    container.put({f"big/{name}": data for name, data in files.items()})
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "big", "--datastore", "blob", "--path", "big")
    cache = tmp_path / "cache"
    options = ("--cache-dir", str(cache), "--cache-size", "32MiB", "--block-size", "1MiB",
               "--memory-cache", "4MiB")  # fmt: skip
    roots = [mounts.mount("big:1", *options) for _ in range(MOUNTS)]
    digests: dict[str, list[str]] = {}
    readers = [threading.Thread(target=read_twice, args=(root / name, digests))
               for root, name in zip(roots, sorted(files), strict=True)]  # fmt: skip
    sampler = Sampler(cache)
    sampler.start()
    try:
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
    finally:
        sampler.stop.set()
        sampler.join(30)

    expected = {name: [hashlib.sha256(data).hexdigest()] * 2 for name, data in files.items()}
    assert digests == expected  # every byte read is the source's
    # ... and some were served from the shared folder, while the others evicted blocks
    assert sum(status_of(cli, root)["disk_hits"] for root in roots) > 0
    margin = on_disk_margin(LIMIT, MOUNTS * WRITERS, BLOCK)
    assert len(sampler.sizes) > 20, "the folder was sampled often"
    assert max(sampler.sizes) > LIMIT * 3 // 4, "the cache filled up"
    assert max(sampler.sizes) <= LIMIT + margin, (
        f"{max(sampler.sizes) / MIB:.1f} MiB on disk, over {LIMIT / MIB:.0f} MiB "
        f"+ {margin / MIB:.1f} MiB"
    )
