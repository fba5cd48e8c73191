"""`amlfs snapshot create --copy-to` of N files, beside copying the same files directly.

    python -m bench.snapshot_copy [--files 2000] [--size 65536] [--workers 16] [--repeat 3]

Starts its own emulator on 127.0.0.1, stores N files of SIZE random bytes, registers
them, then times, in the same run and alternately, each into a folder of its own:
- server-side, within one datastore: `amlfs snapshot create --copy-to` as a process (it
  also checks every pin against the source and computes the profile first) beside the
  peer, the same store's server-side copy (`Store.copy`, conditional on the source's
  etag) of every file from WORKERS threads, nothing else;
- streamed, into another datastore: `amlfs snapshot create --copy-to` beside the peer,
  adlfs reading each file whole (`cat_file`) and writing it (`pipe_file`) from WORKERS
  threads, without any check.
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import adlfs

from amlfs.registry import Datastore, Registry
from amlfs.storage import Store
from bench.common import amlfs_cmd, machine, run_command, write_results
from tests.support.azurite import Azurite

CONNECTION_ENV = "AMLFS_BENCH_CONNECTION_STRING"
CONTAINER = "snapshots"


def timed(action: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def bench(n: int, size: int, workers: int, repeat: int, work: Path) -> dict:
    with Azurite(work / "azurite") as emulator:
        env = {**os.environ, CONNECTION_ENV: emulator.connection_string}
        fs = adlfs.AzureBlobFileSystem(connection_string=emulator.connection_string,
                                       skip_instance_cache=True)  # fmt: skip
        fs.mkdir(CONTAINER)
        rng = random.Random(0)
        names = [f"data/d{i // 100:03}/f{i:06}.bin" for i in range(n)]
        for start in range(0, n, 200):
            fs.pipe({f"{CONTAINER}/{p}": rng.randbytes(size) for p in names[start : start + 200]})
        home = work / "home"
        for name, url in (("blob", f"az://{CONTAINER}"), ("other", f"az://{CONTAINER}/other")):
            run_command(amlfs_cmd(home, "datastore", "add", name, url,
                                  "--connection-string-env", CONNECTION_ENV), env)  # fmt: skip
        run_command(amlfs_cmd(home, "dataset", "register", "ds", "--datastore", "blob",
                              "--path", "data"), env)  # fmt: skip
        with Registry(home / "registry.db") as registry:
            pins = list(registry.iter_files(registry.resolve("ds:1")))
        store = Store(Datastore("blob", f"az://{CONTAINER}", "connection-string-env",
                                CONNECTION_ENV), env)  # fmt: skip
        figures: dict[str, list[float]] = {k: [] for k in
                                           ("server_amlfs", "server_peer", "stream_amlfs",
                                            "stream_peer")}  # fmt: skip

        def snapshot(name: str, to: str) -> None:
            run_command(amlfs_cmd(home, "snapshot", "create", "ds:1", "--name", name,
                                  "--copy-to", to, "--workers", str(workers)), env)  # fmt: skip

        def server_peer(run: int) -> None:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda f: store.copy(f"data/{f.path}", f"peer{run}/{f.path}",
                                                   source_etag=f.etag), pins))  # fmt: skip

        def stream_peer(run: int) -> None:
            def one(path: str) -> None:
                fs.pipe_file(f"{CONTAINER}/other/peer{run}/{path}",
                             fs.cat_file(f"{CONTAINER}/data/{path}"))  # fmt: skip

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, [f.path for f in pins]))

        for run in range(repeat):  # alternately, so that a noisy neighbour hits each one
            figures["server_amlfs"].append(timed(snapshot, f"s{run}", "blob:snaps"))
            figures["server_peer"].append(timed(server_peer, run))
            figures["stream_amlfs"].append(timed(snapshot, f"t{run}", "other:snaps"))
            figures["stream_peer"].append(timed(stream_peer, run))
    return {
        "files": n,
        "size": size,
        "workers": workers,
        "repeat": repeat,
        **{f"{k}_s": statistics.median(v) for k, v in figures.items()},
    }


def report(r: dict) -> str:
    mib = r["files"] * r["size"] / 2**20

    def row(what: str, key: str, peer: str) -> str:
        return f"| {what} | {r[key]:.2f} s | {mib / r[key]:.1f} MiB/s | {r[peer] / r[key]:.2f}× |"

    return "\n".join([
        f"### A snapshot's copy of {r['files']:,} files of {r['size'] // 1024} KiB "
        f"({mib:.0f} MiB), {r['workers']} workers",
        "",
        f"Azurite on 127.0.0.1; medians of {r['repeat']} runs, alternately.",
        "",
        "| what | time | rate | against its peer (above 1: faster) |",
        "|---|---|---|---|",
        row("server-side: `Store.copy` of every file (peer)", "server_peer_s", "server_peer_s"),
        row("server-side: `amlfs snapshot create --copy-to`, a process", "server_amlfs_s",
            "server_peer_s"),
        row("streamed: adlfs `cat_file` + `pipe_file` (peer)", "stream_peer_s", "stream_peer_s"),
        row("streamed: `amlfs snapshot create --copy-to` another datastore, a process",
            "stream_amlfs_s", "stream_peer_s"),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=65536, help="bytes per file")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-"))
    try:
        results = {"machine": machine(),
                   **bench(args.files, args.size, args.workers, args.repeat, work)}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("snapshot_copy", results)
    print(report(results))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
