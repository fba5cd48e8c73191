"""The benchmark's data sets: generated on local disk, then uploaded to the emulator.

Every system reads these same bytes: local disk from `root`, the emulator's copy under
the container `bench`, the mounts through their own paths `large/`, `images/`, `meta/`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.plan import KiB, MiB, Scale

CONTAINER = "bench"
SETS = ("large", "images", "meta")
CHUNK = 16 * MiB
UPLOAD_BATCH = 2000  # files handed to one fsspec `pipe`, which runs them concurrently

Files = list[tuple[str, int]]  # (path relative to the set's folder, size)


@dataclass
class DataSets:
    root: Path
    large: Files
    images: Files
    meta: Files
    register: Files  # empty local files, for registration on file:// only

    @property
    def large_bytes(self) -> int:
        return sum(size for _, size in self.large)

    @property
    def images_bytes(self) -> int:
        return sum(size for _, size in self.images)

    def local(self, which: str) -> list[Path]:
        return [self.root / which / name for name, _ in getattr(self, which)]

    def describe(self) -> dict:
        return {
            "large": f"{len(self.large)} × {self.large[0][1] // MiB} MiB",
            "images": f"{len(self.images)} × {self.images[0][1] // KiB} KiB",
            "meta": f"{len(self.meta):,} tiny files",
            "register": f"{len(self.register):,} empty files",
        }


def generate(root: Path, scale: Scale) -> DataSets:
    """Random (incompressible) bytes for large and image files; tiny text for metadata."""
    large = [(f"part-{i:03}.bin", scale.large_mib * MiB) for i in range(scale.large_files)]
    for name, size in large:
        write_random(root / "large" / name, size)
    # In listing order, as `find` or a dataset index built from a listing gives them.
    images = sorted(
        (f"class{i % scale.image_folders:03}/img{i:06}.jpg", scale.image_kib * KiB)
        for i in range(scale.images)
    )
    for name, size in images:
        write_random(root / "images" / name, size)
    meta_folders = max(1, scale.meta_files // 500)
    meta = [(f"d{i % meta_folders:03}/s{i:07}.txt", 16) for i in range(scale.meta_files)]
    for name, _ in meta:
        write_file(root / "meta" / name, b"tiny sample \n\n\n\n")
    register = [(f"r{i % 100:02}/f{i:07}", 0) for i in range(scale.register_files)]
    for name, _ in register:
        write_file(root / "register" / name, b"")
    return DataSets(root, large, images, meta, register)


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for offset in range(0, size, CHUNK):
            f.write(os.urandom(min(CHUNK, size - offset)))


def write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def upload(fs, data: DataSets) -> float:
    """Copy the three read sets into the emulator's `bench` container; seconds taken."""
    started = time.perf_counter()
    fs.mkdir(CONTAINER)
    for which in SETS:
        names = [name for name, _ in getattr(data, which)]
        for start in range(0, len(names), UPLOAD_BATCH):
            batch = names[start : start + UPLOAD_BATCH]
            fs.pipe({
                f"{CONTAINER}/{which}/{name}": (data.root / which / name).read_bytes()
                for name in batch
            })  # fmt: skip
    return time.perf_counter() - started
