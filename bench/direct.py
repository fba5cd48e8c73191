"""The no-FUSE ceiling: the same read workloads as direct adlfs calls on the emulator.

adlfs's parallelism is `max_concurrency` (ranged GETs of one blob at once) and fsspec's
batching of many files; the sequential figures use the best `max_concurrency` measured
in the run, and the multi-reader ones use threads like the path workloads do.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import adlfs

from bench.data import CONTAINER, DataSets
from bench.pathreads import Figure, expect_count, files_per_second
from bench.plan import MiB, Scale

CONCURRENCY_CHOICES = (1, 4, 8)


class Direct:
    """Direct reads of the `bench` container; a fresh filesystem object per workload."""

    def __init__(self, connection_string: str):
        self.connection_string = connection_string
        self.concurrency = 1

    def fs(self, concurrency: int | None = None) -> adlfs.AzureBlobFileSystem:
        return adlfs.AzureBlobFileSystem(
            connection_string=self.connection_string,
            skip_instance_cache=True,
            max_concurrency=concurrency or self.concurrency,
        )

    def seq_one(self, data: DataSets, scale: Scale) -> Figure:
        """One large blob at each `max_concurrency`; the best one is kept for later rows."""
        name = data.large[0][0]
        rates = {}
        for concurrency in CONCURRENCY_CHOICES:
            fs = self.fs(concurrency)
            started = time.perf_counter()
            got = len(fs.cat_file(f"{CONTAINER}/large/{name}"))
            rates[concurrency] = got / MiB / (time.perf_counter() - started)
        self.concurrency = max(rates, key=rates.get)
        note = f"max_concurrency={self.concurrency}"
        return rates[self.concurrency], note, {"by_max_concurrency": rates}

    def seq_all(self, data: DataSets, scale: Scale) -> Figure:
        fs = self.fs()
        started = time.perf_counter()
        for name, _ in data.large:
            fs.cat_file(f"{CONTAINER}/large/{name}")
        took = time.perf_counter() - started
        return data.large_bytes / MiB / took, f"max_concurrency={self.concurrency}", {}

    def seq_parts(self, readers: int) -> Callable[[DataSets, Scale], Figure]:
        def run(data: DataSets, scale: Scale) -> Figure:
            fs = self.fs()
            parts = -(-readers // len(data.large))
            ranges = []
            for reader in range(readers):
                name, size = data.large[reader % len(data.large)]
                length = size // parts
                start = (reader // len(data.large)) * length
                ranges.append((f"{CONTAINER}/large/{name}", start, start + length))
            started = time.perf_counter()
            threads = [threading.Thread(target=fs.cat_file, args=r, daemon=True) for r in ranges]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took = time.perf_counter() - started
            total = sum(end - start for _, start, end in ranges)
            return total / MiB / took, f"{readers} readers", {}

        return run

    def random_reads(self, readers: int) -> Callable[[DataSets, Scale], Figure]:
        def run(data: DataSets, scale: Scale) -> Figure:
            """Like fio's: the first large file split between readers, each block once."""
            fs = self.fs(1)
            name, size = data.large[0]
            path = f"{CONTAINER}/large/{name}"
            blocks = size // 4096 // readers
            counts = [0] * readers
            deadline = time.monotonic() + scale.rand_seconds

            def reader(index: int) -> None:
                order = list(range(index * blocks, (index + 1) * blocks))
                random.Random(index).shuffle(order)
                for block in order:
                    if time.monotonic() >= deadline:
                        return
                    fs.cat_file(path, block * 4096, block * 4096 + 4096)
                    counts[index] += 1

            started = time.perf_counter()
            threads = [
                threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(counts) / (time.perf_counter() - started), "", {"reads": sum(counts)}

        return run

    def small_files(self, threads: int, shuffled: bool = False) -> Callable:
        def run(data: DataSets, scale: Scale) -> Figure:
            fs = self.fs(1)
            paths = [f"{CONTAINER}/images/{name}" for name, _ in data.images]
            if shuffled:
                random.Random(42).shuffle(paths)
            return files_per_second(
                paths, threads, scale.cap_seconds, lambda p: len(fs.cat_file(p))
            )

        return run

    def find(self, detail: bool) -> Callable[[DataSets, Scale], Figure]:
        def run(data: DataSets, scale: Scale) -> Figure:
            fs = self.fs()
            started = time.perf_counter()
            found = len(fs.find(f"{CONTAINER}/meta", detail=detail))
            took = time.perf_counter() - started
            expect_count(found, len(data.meta))
            return took, f"{found / took:,.0f} files/s", {"files": found}

        return run

    def first_byte(self, data: DataSets, scale: Scale) -> Figure:
        started = time.perf_counter()
        fs = self.fs()
        fs.cat_file(f"{CONTAINER}/images/{data.images[0][0]}", 0, 1)
        return time.perf_counter() - started, "new client + 1-byte GET", {}

    def workloads(self) -> dict[str, Callable[[DataSets, Scale], Figure]]:
        # seq-fio-1 first: it picks the max_concurrency the other sequential rows use.
        return {
            "seq-fio-1": self.seq_one,
            "seq-cat": self.seq_all,
            "seq-fio-4": self.seq_parts(4),
            "rand-qd1": self.random_reads(1),
            "rand-8": self.random_reads(8),
            "small-serial": self.small_files(1),
            "small-8": self.small_files(8),
            "shuffle": self.small_files(4, shuffled=True),
            "find": self.find(detail=False),
            "walk-stat": self.find(detail=True),
            "first-byte": self.first_byte,
        }
