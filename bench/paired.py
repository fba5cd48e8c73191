"""Two builds of amlfs side by side: a cold `cat` through a fresh mount, in pairs.

    python -m bench.paired --old REV [--new REV] [--files 3] [--mib 128] [--pairs 4]
                           [--delay-ms 0]

On this kind of machine one cell of the full bench moves by 30% between runs, more than
most changes to the data path are worth; so a change is measured here in pairs: the old
build and the new one alternately, on the same blobs in the same emulator, each with a
fresh mount and an empty cache. Each build runs from a git worktree of its revision (the
new one defaults to the working tree), with a state folder of its own (registries of
different schema versions cannot share one). With --delay-ms the emulator is reached
through bench's delay line (bench/latency.py), that many ms each way.

Per pass: MiB/s of `cat` over all the files, the requests the mount made (`fetches` in
its status), the daemon's peak RSS, and the CPU time the daemon spent during the `cat`
(in user space and in the kernel). Besides, the same `cat` through rclone's
`--vfs-cache-mode full` mount of the same container, when rclone is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from bench.common import machine, run_command, write_results
from bench.data import CONTAINER  # the container bench.mounts' SAS and rclone remote name
from bench.latency import DelayProxy
from bench.mounts import container_sas_url, cpu_seconds, peak_rss_mib, rclone_mount
from tests.support.azurite import Azurite

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "AMLFS_PAIRED_CONNECTION"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired")
    parser.add_argument("--old", required=True, help="git revision of the build before")
    parser.add_argument("--new", help="git revision of the build after (default: working tree)")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="amlfs-paired-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        builds = {"old": stack.enter_context(_worktree(args.old, work / "old")),
                  "new": stack.enter_context(_worktree(args.new, work / "new"))}  # fmt: skip
        emulator = stack.enter_context(Azurite(work / "azurite"))
        names = _upload(emulator.connection_string, args.files, args.mib)
        proxy = DelayProxy(emulator.port, args.delay_ms / 1000) if args.delay_ms else None
        stack.enter_context(proxy or nullcontext())
        port = proxy.port if proxy else emulator.port
        connection = emulator.connection_string.replace(f":{emulator.port}/", f":{port}/")
        env = {**os.environ, ENV_VAR: connection}
        homes = {which: _register(code, work / f"home-{which}", env)
                 for which, code in builds.items()}  # fmt: skip
        total_mib = args.files * args.mib
        passes: dict[str, list[dict]] = {"old": [], "new": []}
        for pair in range(args.pairs):
            for which in ("old", "new"):
                figure = _cold_cat(builds[which], homes[which], work, env, total_mib)
                passes[which].append(figure)
                print(f"bench.paired: pair {pair + 1} {which}: {figure['mib_s']:.0f} MiB/s, "
                      f"{figure['requests']} requests, peak {figure['rss_mib']:.0f} MiB, "
                      f"daemon CPU {figure['cpu_user_s']:.2f} s user + "
                      f"{figure['cpu_kernel_s']:.2f} s kernel", file=sys.stderr)  # fmt: skip
        rclone = _rclone_cat(port, work, names, total_mib) if shutil.which("rclone") else None
    results = {"old": args.old, "new": args.new or "working tree", "files": args.files,
               "mib": args.mib, "delay_ms": args.delay_ms, "passes": passes,
               "rclone_full": rclone, "machine": machine()}  # fmt: skip
    path = write_results("paired", results)
    for which in ("old", "new"):
        speeds = [p["mib_s"] for p in passes[which]]
        cpu = statistics.median(p["cpu_user_s"] + p["cpu_kernel_s"] for p in passes[which])
        print(f"{which}: MiB/s {', '.join(f'{s:.0f}' for s in speeds)} (median "
              f"{statistics.median(speeds):.0f}); requests "
              f"{min(p['requests'] for p in passes[which])}-"
              f"{max(p['requests'] for p in passes[which])}; peak RSS "
              f"{min(p['rss_mib'] for p in passes[which]):.0f}-"
              f"{max(p['rss_mib'] for p in passes[which]):.0f} MiB; daemon CPU (user + "
              f"kernel) median {cpu:.2f} s")  # fmt: skip
    if rclone:
        print(f"rclone full: {rclone['mib_s']:.0f} MiB/s, peak {rclone['rss_mib']:.0f} MiB")
    print(f"bench.paired: raw results: {path}", file=sys.stderr)
    return 0


class _worktree:
    """A checkout of REV under PATH (None: the working tree itself), removed afterwards."""

    def __init__(self, rev: str | None, path: Path):
        self.rev, self.path = rev, path

    def __enter__(self) -> Path:
        if self.rev is None:
            return REPO
        run_command(["git", "-C", str(REPO), "worktree", "add", "--detach", str(self.path),
                     self.rev])  # fmt: skip
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.rev is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(self.path)], check=False, capture_output=True)  # fmt: skip


def _upload(connection: str, files: int, mib: int) -> list[str]:
    container = BlobServiceClient.from_connection_string(connection).get_container_client(CONTAINER)
    container.create_container()
    names = [f"large/f{i}.bin" for i in range(files)]
    for name in names:
        container.upload_blob(name, os.urandom(mib << 20), max_concurrency=4)
    return names


def _amlfs(code: Path, home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "amlfs", "--home", str(home), *args]


def _run_in(code: Path, args: list[str], env: dict) -> str:
    proc = subprocess.run(args, cwd=code, env={**env, "PYTHONPATH": str(code)},
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _register(code: Path, home: Path, env: dict) -> Path:
    _run_in(code, _amlfs(code, home, "datastore", "add", "blob", f"az://{CONTAINER}",
                         "--connection-string-env", ENV_VAR), env)  # fmt: skip
    _run_in(code, _amlfs(code, home, "dataset", "register", "big", "--datastore", "blob",
                         "--path", "large"), env)  # fmt: skip
    return home


def _cold_cat(code: Path, home: Path, work: Path, env: dict, total_mib: int) -> dict:
    mountpoint, cache = work / "mnt", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    mountpoint.mkdir(exist_ok=True)
    said = _run_in(code, _amlfs(code, home, "mount", "big", str(mountpoint), "--cache-dir",
                                str(cache)), env)  # fmt: skip
    pid = int(said.rsplit("(pid ", 1)[1].rstrip(")\n"))
    try:
        files = sorted(str(p) for p in mountpoint.iterdir())
        user, kernel = cpu_seconds(pid)
        started = time.perf_counter()
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
        took = time.perf_counter() - started
        user_after, kernel_after = cpu_seconds(pid)
        rss = peak_rss_mib(pid)
        stats = _settled_status(code, home, mountpoint, env, total_mib << 20)
    finally:
        _run_in(code, _amlfs(code, home, "unmount", str(mountpoint)), env)
    return {
        "mib_s": total_mib / took,
        "requests": stats["fetches"],
        "rss_mib": rss,
        "cpu_user_s": user_after - user,
        "cpu_kernel_s": kernel_after - kernel,
    }


def _settled_status(code: Path, home: Path, mountpoint: Path, env: dict, served: int) -> dict:
    """The mount's counters once its status record (written every second) shows every
    byte of the pass served; the last record seen after 10 s."""
    deadline = time.monotonic() + 10
    while True:  # bounded by the deadline
        listed = json.loads(_run_in(code, _amlfs(code, home, "status", "--json"), env))
        stats = next(m for m in listed if m["mountpoint"] == str(mountpoint))["stats"]
        if stats.get("bytes_served", 0) >= served or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def _rclone_cat(port: int, work: Path, names: list[str], total_mib: int) -> dict:
    with rclone_mount("full", container_sas_url(port), work, names[0]) as tree:
        started = time.perf_counter()
        subprocess.run(["cat", *(str(tree.root / name) for name in names)],
                       stdout=subprocess.DEVNULL, check=True)  # fmt: skip
        took = time.perf_counter() - started
        rss = peak_rss_mib(tree.pid)
    return {"mib_s": total_mib / took, "rss_mib": rss}


if __name__ == "__main__":
    sys.exit(main())
