"""Peer FUSE mounts: rclone's `azureblob` backend on the emulator, started and stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from amlfs.mounts import mounted_paths
from bench.data import CONTAINER
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class MountedTree:
    root: Path
    pid: int
    first_byte_s: float  # from starting the mount command to the first byte of a file
    peak_rss_mib: float = 0.0


def container_sas_url(port: int) -> str:
    """A read/list SAS URL for the bench container; rclone takes emulator endpoints this way."""
    sas = generate_container_sas(
        ACCOUNT, CONTAINER, account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=6),
    )  # fmt: skip
    return f"http://127.0.0.1:{port}/{ACCOUNT}/{CONTAINER}?{sas}"


@contextmanager
def rclone_mount(mode: str, sas_url: str, workdir: Path, probe: str) -> Iterator[MountedTree]:
    """A fresh read-only rclone mount (`--vfs-cache-mode mode`, empty cache) of the container."""
    mountpoint = workdir / f"rclone-{mode}"
    cache = workdir / f"rclone-{mode}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    config = workdir / "rclone.conf"  # empty: the remote is defined by the environment
    config.touch()
    env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "azureblob",
           "RCLONE_CONFIG_BENCH_SAS_URL": sas_url}  # fmt: skip
    args = [
        "rclone", "--config", str(config), "mount", f"bench:{CONTAINER}", str(mountpoint),
        "--read-only", "--vfs-cache-mode", mode, "--cache-dir", str(cache),
    ]  # fmt: skip
    with open(workdir / f"rclone-{mode}.log", "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    tree = None
    try:
        first_byte = wait_for_first_byte(mountpoint / probe, proc)
        tree = MountedTree(mountpoint, proc.pid, first_byte - started)
        yield tree
    finally:
        if tree is not None and proc.poll() is None:
            tree.peak_rss_mib = peak_rss_mib(proc.pid)
        stop(proc, mountpoint)


def wait_for_first_byte(path: Path, proc: subprocess.Popen | None) -> float:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount exited with {proc.returncode} before serving")
        try:
            with open(path, "rb") as f:
                if f.read(1):
                    return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"no byte of {path} within {READY_TIMEOUT_S:.0f} s")


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """The process's CPU time so far, in user space and in the kernel (its threads'
    included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime: proc(5)


def stop(proc: subprocess.Popen, mountpoint: Path) -> None:
    """End the mount process we started (SIGTERM unmounts), then make sure it is gone."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    unmount_if_mounted(mountpoint)


def unmount_if_mounted(mountpoint: Path) -> None:
    """Detach a mount left behind (os.path.ismount cannot see one whose daemon died)."""
    if str(mountpoint) in mounted_paths():
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, timeout=30)
