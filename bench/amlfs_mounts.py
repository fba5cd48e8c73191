"""amlfs mounts for the benchmark, through the real command line, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amlfs.mounts import daemon_alive
from bench.common import amlfs_cmd
from bench.mounts import MountedTree, peak_rss_mib, unmount_if_mounted, wait_for_first_byte

STOP_TIMEOUT_S = 15.0
CACHE_SIZE = "50GiB"  # larger than any data set: the bench measures hits, not eviction


class AmlfsMounts:
    def __init__(self, home: Path, work: Path, env: dict):
        self.home = home
        self.env = env
        self.cache = work / "amlfs-cache"
        self.mountpoint = work / "amlfs-mnt"

    def clear_cache(self) -> None:
        """No mount is running here: removing the folder is `amlfs cache clear`, faster."""
        shutil.rmtree(self.cache, ignore_errors=True)

    @contextmanager
    def mounted(self, ref: str, probe: str | None, *extra: str) -> Iterator[MountedTree]:
        """`amlfs mount REF` (which returns once it serves), then the first byte of PROBE."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        args = amlfs_cmd(self.home, "mount", ref, str(self.mountpoint), "--cache-dir",
                         str(self.cache), "--cache-size", CACHE_SIZE, *extra)  # fmt: skip
        started = time.perf_counter()
        out = run(args, self.env)
        pid = int(out.rsplit("(pid ", 1)[1].rstrip(")\n"))
        try:
            first = time.perf_counter()
            if probe is not None:
                first = wait_for_first_byte(self.mountpoint / probe, None)
            tree = MountedTree(self.mountpoint, pid, first - started)
            yield tree
            tree.peak_rss_mib = peak_rss_mib(pid)
        finally:
            self.unmount(pid)

    def unmount(self, pid: int) -> None:
        """`amlfs unmount`; if that fails (a reader still busy after a time-out or Ctrl-C),
        end the daemon and detach the mount. Never raises: it runs while unwinding."""
        # What `amlfs unmount` does, without starting an interpreter for it each time.
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while daemon_alive(pid) and time.monotonic() < deadline:  # a zombie counts as gone
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # still there after unmount: never left behind
        unmount_if_mounted(self.mountpoint)


def run(args: list[str], env: dict) -> str:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[3:6])}: {proc.stderr.strip()}")
    return proc.stdout
