"""What `amlfs run` and `amlfs daemon` cost, against doing the same steps by hand.

A job here is one pass over the image set (`cat` of every file). Its ceiling is what a
user would script without `amlfs run`: mount (or download), the pass, unmount (or
remove). The daemon's ceiling for four mounts is four `amlfs mount` commands in a row.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from amlfs.mounts import mounted_paths
from bench import pagecache
from bench.common import amlfs_cmd, run_command
from bench.mounts import unmount_if_mounted
from bench.pathreads import Figure

PASS = "find {} -type f -exec cat {{}} + > /dev/null"  # one epoch over a folder
DAEMON_MOUNTS = 4
READY_TIMEOUT_S = 300.0


class Jobs:
    def __init__(self, home: Path, work: Path, env: dict, files: int):
        self.home, self.work, self.env, self.files = home, work, env, files

    def _cold(self) -> None:
        shutil.rmtree(self.home / "cache", ignore_errors=True)  # no block from an earlier pass
        pagecache.drop()

    def _pass(self, folder: str) -> None:
        run_command(["sh", "-c", PASS.format(folder)], self.env, timeout=3600)

    def by_hand_mounted(self, ref: str) -> Figure:
        self._cold()
        mountpoint = Path(tempfile.mkdtemp(dir=self.work, prefix="job-"))
        started = time.perf_counter()
        try:
            run_command(amlfs_cmd(self.home, "mount", ref, str(mountpoint)), self.env)
            self._pass(str(mountpoint))
            run_command(amlfs_cmd(self.home, "unmount", str(mountpoint)), self.env)
        finally:
            unmount_if_mounted(mountpoint)
        took = time.perf_counter() - started
        return took, f"mount, {self.files:,} files read, unmount", {}

    def run_mounted(self, ref: str) -> Figure:
        self._cold()
        command = ["run", "--input", f"d={ref}", "--", "sh", "-c", PASS.format("{inputs.d}")]
        started = time.perf_counter()
        run_command(amlfs_cmd(self.home, *command), self.env, timeout=3600)
        return time.perf_counter() - started, "amlfs run, input mounted", {}

    def by_hand_downloaded(self, ref: str) -> Figure:
        self._cold()
        dest = Path(tempfile.mkdtemp(dir=self.work, prefix="job-")) / "data"
        started = time.perf_counter()
        run_command(amlfs_cmd(self.home, "download", ref, str(dest)), self.env, timeout=3600)
        self._pass(str(dest))
        shutil.rmtree(dest.parent)
        took = time.perf_counter() - started
        return took, f"download, {self.files:,} files read, remove", {}

    def run_downloaded(self, ref: str) -> Figure:
        self._cold()
        command = ["run", "--input", f"d={ref},mode=download", "--",
                   "sh", "-c", PASS.format("{inputs.d}")]  # fmt: skip
        started = time.perf_counter()
        run_command(amlfs_cmd(self.home, *command), self.env, timeout=3600)
        return time.perf_counter() - started, "amlfs run, input downloaded", {}

    def mounts_one_by_one(self, ref: str) -> Figure:
        points = [Path(tempfile.mkdtemp(dir=self.work, prefix="m-")) for _ in range(DAEMON_MOUNTS)]
        started = time.perf_counter()
        try:
            for point in points:
                run_command(amlfs_cmd(self.home, "mount", ref, str(point)), self.env)
            took = time.perf_counter() - started
        finally:
            for point in points:
                with contextlib.suppress(Exception):
                    run_command(amlfs_cmd(self.home, "unmount", str(point)), self.env)
                unmount_if_mounted(point)
        return took, f"{DAEMON_MOUNTS} × amlfs mount", {}

    def daemon_ready(self, ref: str) -> Figure:
        """Start to READY=1 of `amlfs daemon` serving DAEMON_MOUNTS mounts of REF."""
        points = [Path(tempfile.mkdtemp(dir=self.work, prefix="m-")) for _ in range(DAEMON_MOUNTS)]
        config = self.work / "daemon.yaml"
        config.write_text("mounts:\n" + "".join(f"  - {{mountpoint: {p}, dataset: {ref}}}\n"
                                                for p in points))  # fmt: skip
        address = f"\0amlfs-bench-{uuid.uuid4().hex}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        env = {**self.env, "NOTIFY_SOCKET": "@" + address[1:]}
        started = time.perf_counter()
        command = amlfs_cmd(self.home, "daemon", "--config", str(config))
        quiet = subprocess.DEVNULL
        proc = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet)
        try:
            listener.settimeout(READY_TIMEOUT_S)
            while b"READY=1" not in listener.recv(4096).split(b"\n"):
                pass
            took = time.perf_counter() - started
            serving = sum(str(p) in _mounted() for p in points)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            listener.close()
            for point in points:
                unmount_if_mounted(point)
        return took, f"amlfs daemon, {serving} of {DAEMON_MOUNTS} serving at READY=1", {}


def _mounted() -> set[str]:
    return set(mounted_paths())
