"""Registration and registry scale.

    python -m bench.registry_scale [--files 100000] [--million 1000000]

1. Registers N files from a local folder and from the Azurite emulator with
   `amlfs dataset register` (a real process, start-up included), beside the ceiling:
   one bare fsspec/adlfs listing of the same files in the same run.
2. Stores a synthetic version of M files (the manifest is what matters, not the
   bytes) and times folder lookups and listings on it, with the registry's size and
   the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import adlfs
import fsspec

from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from bench.common import amlfs_cmd, db_size, machine, timed_run, write_results
from tests.support.azurite import Azurite

FOLDERS = 100  # files spread over this many folders, like an image dataset


def file_names(n: int) -> list[str]:
    return [f"set/d{i % FOLDERS:03}/f{i:07}.bin" for i in range(n)]


def bench_local(n: int, work: Path) -> dict:
    data = work / "local-data"
    for name in file_names(n):
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    started = time.perf_counter()
    listed = fsspec.filesystem("file").find(str(data / "set"), detail=True)
    ceiling = time.perf_counter() - started
    assert len(listed) == n
    home = work / "home-local"
    timed_run(amlfs_cmd(home, "datastore", "add", "local", f"file://{data}"))
    took = timed_run(
        amlfs_cmd(home, "dataset", "register", "scale", "--datastore", "local", "--path", "set")
    )
    return {"register_s": took, "listing_ceiling_s": ceiling, "registry_bytes": db_size(home)}


def bench_azurite(n: int, work: Path) -> dict:
    with Azurite(work / "azurite") as emulator:
        fs = adlfs.AzureBlobFileSystem(
            connection_string=emulator.connection_string, skip_instance_cache=True
        )
        fs.mkdir("scale")
        started = time.perf_counter()
        names = file_names(n)
        for chunk in range(0, n, 5000):
            fs.pipe({f"scale/{name}": b"x" for name in names[chunk : chunk + 5000]})
        upload = time.perf_counter() - started
        started = time.perf_counter()
        listed = fs.find("scale/set", detail=True)
        ceiling = time.perf_counter() - started
        assert len(listed) == n
        home = work / "home-az"
        env = {**os.environ, "BENCH_CONN": emulator.connection_string}
        timed_run(
            amlfs_cmd(home, "datastore", "add", "az", "az://scale",
                      "--connection-string-env", "BENCH_CONN"), env,
        )  # fmt: skip
        took = timed_run(
            amlfs_cmd(home, "dataset", "register", "scale", "--datastore", "az", "--path", "set"),
            env,
        )
        verify = timed_run(amlfs_cmd(home, "dataset", "verify", "scale"), env)
    return {
        "register_s": took,
        "listing_ceiling_s": ceiling,
        "verify_s": verify,
        "registry_bytes": db_size(home),
        "seed_upload_s": upload,
    }


def bench_million(m: int, work: Path) -> dict:
    home = work / "home-million"
    home.mkdir(mode=0o700)
    (home / "registry.db").touch(mode=0o600)
    files = [PinnedFile(name, 1, f'"0x{i:015X}"', os.urandom(16), None)
             for i, name in enumerate(file_names(m))]  # fmt: skip
    with Registry(home / "registry.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        started = time.perf_counter()
        version = registry.register(NewVersion("million", "synthetic", "", ["set"], files))
        insert = time.perf_counter() - started
        del files
        root = registry.root(version)
        top = registry.lookup(root.id, "set")
        folders = registry.list_folder(top.id, limit=FOLDERS)
        lookups, listings = [], []
        rng = random.Random(0)
        for _ in range(2000):
            folder = rng.choice(folders)
            name = f"f{rng.randrange(m) // FOLDERS * FOLDERS + int(folder.name[1:]):07}.bin"
            started = time.perf_counter()
            found = registry.lookup(folder.id, name)
            lookups.append(time.perf_counter() - started)
            assert found is not None or int(name[1:8]) >= m
            started = time.perf_counter()
            registry.list_folder(folder.id, after=name, limit=100)
            listings.append(time.perf_counter() - started)
    return {
        "files": m,
        "insert_s": insert,
        "registry_bytes": db_size(home),
        "lookup_p50_us": statistics.median(lookups) * 1e6,
        "lookup_p99_us": statistics.quantiles(lookups, n=100)[98] * 1e6,
        "list100_p50_us": statistics.median(listings) * 1e6,
        "list100_p99_us": statistics.quantiles(listings, n=100)[98] * 1e6,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(results: dict) -> str:
    n = results["files"]
    lines = [
        f"### Registration of {n:,} files ({FOLDERS} folders)",
        "",
        "| datastore | `dataset register` | bare listing (ceiling) | ratio | registry size |",
        "|---|---|---|---|---|",
    ]
    for kind in ("local", "azurite"):
        r = results[kind]
        lines.append(
            f"| {kind} | {r['register_s']:.2f} s | {r['listing_ceiling_s']:.2f} s | "
            f"{r['register_s'] / r['listing_ceiling_s']:.2f}× | "
            f"{r['registry_bytes'] / 2**20:.1f} MiB |"
        )
    az = results["azurite"]
    lines += ["", f"`dataset verify` of the same {n:,} blobs on Azurite: {az['verify_s']:.2f} s."]
    if million := results.get("million"):
        lines += [
            "",
            f"### A version of {million['files']:,} files in the registry",
            "",
            "| insert | registry size | lookup p50 / p99 | list 100 entries p50 / p99 |"
            " peak RSS of the process |",
            "|---|---|---|---|---|",
            f"| {million['insert_s']:.1f} s | {million['registry_bytes'] / 2**20:.0f} MiB | "
            f"{million['lookup_p50_us']:.0f} / {million['lookup_p99_us']:.0f} µs | "
            f"{million['list100_p50_us']:.0f} / {million['list100_p99_us']:.0f} µs | "
            f"{million['peak_rss_mib']:.0f} MiB (includes the {million['files']:,} "
            "records built to insert) |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--million", type=int, default=1_000_000, help="0 to skip")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-"))
    try:
        results = {"machine": machine(), "files": args.files}
        results["local"] = bench_local(args.files, work)
        results["azurite"] = bench_azurite(args.files, work)
        if args.million:
            results["million"] = bench_million(args.million, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("registry_scale", results)
    print(report(results))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
