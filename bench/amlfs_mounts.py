"""amlfs mounts for the benchmark, through the real command line, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from amlfs import mounts
from amlfs.errors import AmlfsError
from bench.common import amlfs_cmd, run_command
from bench.mounts import MountedTree, peak_rss_mib, unmount_if_mounted, wait_for_first_byte

CACHE_SIZE = "50GiB"  # larger than any data set: the bench measures hits, not eviction


class AmlfsMounts:
    def __init__(self, home: Path, work: Path, env: dict, options: tuple[str, ...] = ()):
        self.home = home
        self.env = env
        self.options = options  # given to every `amlfs mount` (bench --mount-option)
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
                         str(self.cache), "--cache-size", CACHE_SIZE, *self.options,
                         *extra)  # fmt: skip
        started = time.perf_counter()
        out = run_command(args, self.env, timeout=600)
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
        """What `amlfs unmount` does (called in-process: no interpreter per unmount); if
        that fails (a reader still busy after a time-out or Ctrl-C), end the daemon and
        detach the mount. Never raises: it runs while unwinding."""
        with contextlib.suppress(AmlfsError):
            mounts.unmount(self.home, self.mountpoint)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # still there after unmount: never left behind
        unmount_if_mounted(self.mountpoint)
