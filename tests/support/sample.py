"""A small pinned dataset for mount tests: folders, unicode, an empty file, multi-block files."""

from __future__ import annotations

import random

BLOCK = 64 * 1024  # mounts in tests use small blocks, so that small files span several
_bytes = random.Random(1234).randbytes
FILES = {
    "train/a.bin": _bytes(3 * BLOCK + 1234),
    "train/b.bin": _bytes(BLOCK),
    "train/nested/deeper/c.txt": b"deep\n",
    "train/empty.dat": b"",
    "valid/with space é.txt": b"unicode names work\n",
    "labels.csv": b"a,1\nb,2\n",
}
OPTIONS = ("--block-size", "64KiB", "--io-timeout", "5")
