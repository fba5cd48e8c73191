"""Read workloads over a directory tree: local disk, a peer mount or an amlfs mount.

Each returns (value, note, extra) in the unit its row in `plan.py` names. Every loop is
bounded by a count and by the scale's time cap.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from amlfs.sampler import HintedSampler
from bench.data import DataSets
from bench.plan import MiB, Scale

Figure = tuple[float, str, dict]


def seq_cat(root: Path, data: DataSets, scale: Scale) -> Figure:
    paths = [str(root / "large" / name) for name, _ in data.large]
    started = time.perf_counter()
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)
    took = time.perf_counter() - started
    return data.large_bytes / MiB / took, "", {"seconds": took, "bytes": data.large_bytes}


def seq_fio(jobs: int) -> Callable[[Path, DataSets, Scale], Figure]:
    """`jobs` readers share the large files: one file each, or equal parts of one."""

    def run(root: Path, data: DataSets, scale: Scale) -> Figure:
        files = data.large if jobs > 1 else data.large[:1]
        parts = -(-jobs // len(files))  # ceiling division
        sections = []
        for job in range(jobs):
            name, size = files[job % len(files)]
            part = job // len(files)
            length = size // parts
            sections.append(
                f"[seq{job}]\nfilename={root / 'large' / name}\nrw=read\nbs=1M\n"
                f"offset={part * length}\nsize={length}\n"
            )
        result = fio("".join(sections))
        return result["bw_bytes"] / MiB, "", result

    return run


RAND_SEED = 20_261_202  # every random pass draws the same offsets, in the same order


def rand_fio(jobs: int, ios: int | None = None) -> Callable[[Path, DataSets, Scale], Figure]:
    """Random 4 KiB reads of the first large file, each block at most once within a pass
    (fio's random map); `jobs` readers split the file. The offsets come from a fixed seed,
    so every pass reads the same ones in the same order: a pass bounded by IOS (the total
    another pass read) re-reads exactly what that pass read, which is how an epoch re-reads
    the samples of the last one. Without IOS the pass stops at the scale's time bound."""

    def run(root: Path, data: DataSets, scale: Scale) -> Figure:
        name, size = data.large[0]
        region = size // jobs // 4096 * 4096
        section = (
            f"[rand]\nfilename={root / 'large' / name}\nrw=randread\nbs=4k\n"
            f"numjobs={jobs}\nsize={region}\noffset_increment={region}\n"
            f"runtime={scale.rand_seconds}\nrandrepeat=1\nrandseed={RAND_SEED}\n"
        )
        if ios is not None:
            section += f"number_ios={max(1, ios // jobs)}\n"
        result = fio(section)
        return result["iops"], "", result

    return run


def fio(sections: str) -> dict:
    """Run fio on existing files, read-only, through the page cache; the group's totals."""
    jobfile = "[global]\nioengine=psync\ninvalidate=0\ngroup_reporting\n" + sections
    with tempfile.NamedTemporaryFile("w", suffix=".fio") as spec:
        spec.write(jobfile)
        spec.flush()
        proc = subprocess.run(
            ["fio", "--readonly", "--output-format=json", spec.name],
            capture_output=True, text=True
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"fio: {(proc.stderr or proc.stdout).strip()[-200:]}")
    reads = [job["read"] for job in json.loads(proc.stdout)["jobs"]]
    return {
        "bw_bytes": sum(r["bw_bytes"] for r in reads),
        "iops": sum(r["iops"] for r in reads),
        "io_bytes": sum(r["io_bytes"] for r in reads),
        "ios": sum(r["total_ios"] for r in reads),
    }


def small_files(threads: int, shuffled: bool = False, hinted: bool = False
                ) -> Callable[[Path, DataSets, Scale], Figure]:  # fmt: skip
    """Read whole image files, in listing order or shuffled like a DataLoader epoch;
    HINTED: the order goes to the mount ahead of the readers, as a sampler wrapped in
    amlfs.sampler.HintedSampler sends it (docs/hints.md)."""

    def run(root: Path, data: DataSets, scale: Scale) -> Figure:
        paths = [root / "images" / name for name, _ in data.images]
        if shuffled:
            random.Random(42).shuffle(paths)
        items = HintedSampler(paths, lambda path: path, root) if hinted else paths
        return files_per_second(items, threads, scale.cap_seconds, read_local)

    return run


def read_local(path: Path) -> int:
    with open(path, "rb", buffering=0) as f:
        return len(f.read())


def files_per_second(
    items: list | HintedSampler, threads: int, cap_seconds: float, read: Callable[..., int]
) -> Figure:
    """Files/s of `threads` readers pulling from one queue, with per-file latency."""
    queue = iter(items)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[OSError] = []
    done_bytes = [0]
    deadline = time.monotonic() + cap_seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            started = time.perf_counter()
            try:
                size = read(item)
            except OSError as error:  # the first failure ends this reader, and the figure
                errors.append(error)
                return
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                done_bytes[0] += size

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.perf_counter() - started
    if errors:
        raise errors[0]
    p50, p99 = percentiles(latencies)
    note = f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"
    extra = {"files": len(latencies), "of": len(items), "seconds": took, "bytes": done_bytes[0],
             "p50_s": p50, "p99_s": p99}  # fmt: skip
    return len(latencies) / took, note, extra


def percentiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return (samples[0], samples[0]) if samples else (0.0, 0.0)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def find(root: Path, data: DataSets, scale: Scale) -> Figure:
    started = time.perf_counter()
    proc = subprocess.run(
        ["find", str(root / "meta"), "-type", "f"],
        capture_output=True, check=True,
    )  # fmt: skip
    took = time.perf_counter() - started
    found = proc.stdout.count(b"\n")
    expect_count(found, len(data.meta))
    return took, f"{found / took:,.0f} files/s", {"files": found}


def walk_stat(root: Path, data: DataSets, scale: Scale) -> Figure:
    started = time.perf_counter()
    found = 0
    for folder, _dirs, names in os.walk(root / "meta"):
        for name in names:
            os.stat(os.path.join(folder, name))
            found += 1
    took = time.perf_counter() - started
    expect_count(found, len(data.meta))
    return took, f"{found / took:,.0f} files/s", {"files": found}


def timeout_for(workload: str, data: DataSets, scale: Scale) -> float:
    """Generous bounds: a figure that takes longer means the system under test hangs."""
    slowest_credible = 10 * MiB  # bytes/s
    if workload.startswith("seq"):
        return 60 + data.large_bytes / slowest_credible
    if workload.startswith("rand"):
        return 60 + scale.rand_seconds
    if workload in ("find", "walk-stat"):
        return 60 + len(data.meta) / 200
    return 60 + scale.cap_seconds


def expect_count(found: int, expected: int) -> None:
    if found != expected:
        raise RuntimeError(f"saw {found} files, expected {expected}")


RAND_JOBS = {"rand-qd1": 1, "rand-8": 8}  # readers of each random row

WORKLOADS: dict[str, Callable[[Path, DataSets, Scale], Figure]] = {
    "seq-cat": seq_cat,
    "seq-fio-1": seq_fio(1),
    "seq-fio-4": seq_fio(4),
    **{key: rand_fio(jobs) for key, jobs in RAND_JOBS.items()},
    "small-serial": small_files(1),
    "small-8": small_files(8),
    "shuffle": small_files(4, shuffled=True),
    "find": find,
    "walk-stat": walk_stat,
}
# The rows of plan.HINTED_READS, read with hints.
HINTED: dict[str, Callable[[Path, DataSets, Scale], Figure]] = {
    "small-serial": small_files(1, hinted=True),
    "shuffle": small_files(4, shuffled=True, hinted=True),
}
