"""Reading a pinned version from Python through `amlfs://` (fsspec, no FUSE), beside the
best direct client (adlfs on the same blobs) and a mount of the same version.

    python -m bench.fsspec_reads [--large 3] [--large-mib 64] [--small 400]
                                 [--small-kib 100] [--repeat 3] [--delay-ms 0]

Starts its own emulator on 127.0.0.1 (with --delay-ms, through bench's delay line,
bench/latency.py, that many ms each way), stores LARGE files of LARGE_MIB and SMALL
files of SMALL_KIB, registers them as `ds:1`, then measures, alternately and --repeat
times (medians), each in a fresh process with the page cache dropped first:
- large: every large file read front to back in 1 MiB reads from a file object;
- small: every small file read whole (`cat_file`, `read_bytes`), serially;
by: adlfs (the peer), `amlfs://` cold (a fresh block cache), `amlfs://` again (the block
cache on disk from the cold pass, a new process), a mount cold (fresh cache, new
daemon), and a mount on the block cache (new daemon).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, nullcontext
from pathlib import Path

import adlfs

from bench import pagecache
from bench.common import amlfs_cmd, machine, run_command, write_results
from bench.latency import DelayProxy
from tests.support.azurite import Azurite

CONNECTION_ENV = "AMLFS_BENCH_CONNECTION_STRING"
CONTAINER = "fsspec"
CHUNK = 1 << 20
SYSTEMS = ("adlfs", "amlfs_cold", "amlfs_cached", "mount_cold", "mount_cached")

# The reader, run in a fresh process: prints {"seconds": ..., "bytes": ...}.
READER = """
import json, sys, time
kind, root, paths, whole = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
if kind == "adlfs":
    import adlfs, os
    fs = adlfs.AzureBlobFileSystem(connection_string=os.environ[sys.argv[5]])
    opener, reader = (lambda p: fs.open(f"{root}/{p}", "rb", block_size=4 << 20)), (
        lambda p: fs.cat_file(f"{root}/{p}"))
elif kind == "amlfs":
    import fsspec
    fs = fsspec.filesystem("amlfs", home=sys.argv[5])
    opener, reader = (lambda p: fs.open(f"{root}/{p}", "rb")), (
        lambda p: fs.cat_file(f"{root}/{p}"))
else:
    opener, reader = (lambda p: open(f"{root}/{p}", "rb")), (
        lambda p: open(f"{root}/{p}", "rb").read())
total = 0
started = time.perf_counter()
for path in paths:
    if whole:
        total += len(reader(path))
    else:
        with opener(path) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
print(json.dumps({"seconds": time.perf_counter() - started, "bytes": total}))
"""


def read_pass(kind: str, root: str, paths: list[str], whole: bool, extra: str,
              env: dict) -> dict:  # fmt: skip
    pagecache.drop()
    out = run_command([sys.executable, "-c", READER, kind, root, json.dumps(paths),
                       "1" if whole else "0", extra], env)  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def bench(args: argparse.Namespace, work: Path) -> dict:
    large = [f"large/f{i}.bin" for i in range(args.large)]
    small = [f"small/d{i % 20:02}/f{i:05}.bin" for i in range(args.small)]
    figures: dict[str, dict[str, list[float]]] = {
        w: {s: [] for s in SYSTEMS} for w in ("large", "small")
    }
    with ExitStack() as stack:
        emulator = stack.enter_context(Azurite(work / "azurite"))
        fs = adlfs.AzureBlobFileSystem(connection_string=emulator.connection_string,
                                       skip_instance_cache=True)  # fmt: skip
        fs.mkdir(CONTAINER)
        for path in large:
            fs.pipe_file(f"{CONTAINER}/{path}", os.urandom(args.large_mib << 20))
        for start in range(0, len(small), 200):
            fs.pipe({f"{CONTAINER}/{p}": os.urandom(args.small_kib << 10)
                     for p in small[start : start + 200]})  # fmt: skip
        proxy = DelayProxy(emulator.port, args.delay_ms / 1000) if args.delay_ms else None
        stack.enter_context(proxy or nullcontext())
        port = proxy.port if proxy else emulator.port
        connection = emulator.connection_string.replace(f":{emulator.port}/", f":{port}/")
        env = {**os.environ, CONNECTION_ENV: connection}
        for run in range(args.repeat):
            home = work / f"home{run}"
            run_command(amlfs_cmd(home, "datastore", "add", "blob", f"az://{CONTAINER}",
                                  "--connection-string-env", CONNECTION_ENV), env)  # fmt: skip
            run_command(amlfs_cmd(home, "dataset", "register", "ds", "--datastore", "blob",
                                  "--path", "."), env)  # fmt: skip
            sizes = {"large": args.large_mib << 20, "small": args.small_kib << 10}
            for workload, paths, whole in (("large", large, False), ("small", small, True)):
                cell, expected = figures[workload], len(paths) * sizes[workload]

                def record(system: str, result: dict, cell: dict = cell,
                           expected: int = expected) -> None:  # fmt: skip
                    if result["bytes"] != expected:  # every reader reads every byte, or fails
                        raise RuntimeError(f"{system} read {result['bytes']} of {expected} bytes")
                    cell[system].append(result["bytes"] / result["seconds"])

                record("adlfs", read_pass("adlfs", CONTAINER, paths, whole, CONNECTION_ENV, env))
                amlfs_home = work / f"fs-{workload}{run}"
                shutil.copytree(home, amlfs_home, ignore=shutil.ignore_patterns("cache", "logs"))
                for system in ("amlfs_cold", "amlfs_cached"):
                    record(system, read_pass("amlfs", "ds:1", paths, whole, str(amlfs_home), env))
                mount_home = work / f"mnt-{workload}{run}"
                shutil.copytree(home, mount_home, ignore=shutil.ignore_patterns("cache", "logs"))
                for system in ("mount_cold", "mount_cached"):
                    mountpoint = work / f"mnt-{workload}{run}-{system}"
                    mountpoint.mkdir()
                    run_command(amlfs_cmd(mount_home, "mount", "ds:1", str(mountpoint)), env)
                    try:
                        record(system, read_pass("local", str(mountpoint), paths, whole, "", env))
                    finally:
                        subprocess.run(amlfs_cmd(mount_home, "unmount", str(mountpoint)),
                                       env=env, check=False, capture_output=True)  # fmt: skip
            print(f"bench.fsspec_reads: pass {run + 1} of {args.repeat} done", file=sys.stderr)
    return {
        "large": args.large, "large_mib": args.large_mib, "small": args.small,
        "small_kib": args.small_kib, "repeat": args.repeat, "delay_ms": args.delay_ms,
        "bytes_per_s": {w: {s: statistics.median(v) for s, v in cells.items()}
                        for w, cells in figures.items()},
        "passes": figures,
    }  # fmt: skip


def report(r: dict) -> str:
    labels = {"adlfs": "adlfs, direct (peer)", "amlfs_cold": "`amlfs://` cold",
              "amlfs_cached": "`amlfs://` from the block cache", "mount_cold": "mount cold",
              "mount_cached": "mount from the block cache"}  # fmt: skip
    where = f"{r['delay_ms']:g} ms each way" if r["delay_ms"] else "on 127.0.0.1"
    lines = [
        f"### Reads from Python: `amlfs://` beside adlfs and a mount (Azurite {where})",
        "",
        f"{r['large']} × {r['large_mib']} MiB read in 1 MiB reads; {r['small']} × "
        f"{r['small_kib']} KiB read whole, serially; medians of {r['repeat']} passes, "
        "page cache dropped before each.",
        "",
        "| reader | large MiB/s | ÷ adlfs | small files/s | ÷ adlfs |",
        "|---|---|---|---|---|",
    ]
    rates = r["bytes_per_s"]
    for system, label in labels.items():
        big, little = rates["large"][system], rates["small"][system]
        files_s = little / (r["small_kib"] << 10)
        lines.append(f"| {label} | {big / 2**20:.0f} | {big / rates['large']['adlfs']:.2f}× |"
                     f" {files_s:.0f} | {little / rates['small']['adlfs']:.2f}× |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=400)
    parser.add_argument("--small-kib", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="delay the latency proxy adds each way")  # fmt: skip
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: mounts unmounted, the emulator stopped, files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-fsspec-"))
    try:
        results = {"machine": machine(), **bench(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("fsspec_reads", results)
    print(report(results))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
