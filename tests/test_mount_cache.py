"""The disk cache under a real mount of a local-folder (file://) datastore: a cold pass
over a version smaller than the cache leaves every block it read in the cache, so the
next pass needs no storage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.mounts import Mounts, status_of

IMAGES = 300
IMAGE_BYTES = 100 * 1024


@pytest.fixture
def images(cli: Cli, tmp_path: Path) -> dict[str, bytes]:
    """300 files of 100 KiB in a local folder, registered as `img:1` of datastore `local`."""
    folder = tmp_path / "store" / "images"
    folder.mkdir(parents=True)
    rng = random.Random(3)
    files = {f"{i:04d}.jpg": rng.randbytes(IMAGE_BYTES) for i in range(IMAGES)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cli.ok("datastore", "add", "local", f"file://{tmp_path / 'store'}")
    cli.ok("dataset", "register", "img", "--datastore", "local", "--path", "images")
    return files


def test_a_cold_pass_leaves_every_block_it_read_in_the_disk_cache(
    cli: Cli, images: dict[str, bytes], mounts: Mounts
) -> None:
    root = mounts.mount("img:1")  # the default 4 MiB blocks: one block per file
    mounted = sorted(p for p in root.rglob("*") if p.is_file())
    assert sorted(p.name for p in mounted) == sorted(images)
    for path in mounted:  # one file after another, as `cat` or a data loader would
        assert path.read_bytes() == images[path.name]

    stats = status_of(cli, root)
    assert (stats["writes_skipped"], stats["pending_writes"]) == (0, 0)
    assert stats["bytes_fetched"] == IMAGES * IMAGE_BYTES  # each file fetched once
    assert json.loads(cli.ok("cache", "stats", "--json").out)["blocks"] == IMAGES
