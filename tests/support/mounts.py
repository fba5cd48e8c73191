"""Mounting in tests: every mount a test makes is unmounted and its daemon ended (by
pid) in the fixture's finalizer, also when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from amlfs.mounts import daemon_alive, mounted_paths


def processes_mentioning(folder: Path) -> list[int]:
    """Processes (other than this one) whose command line names FOLDER: the daemons and
    emulators a test started there."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in cmdline:
            found.append(int(entry.name))
    return found


class Mounts:
    def __init__(self, cli, tmp_path: Path):
        self.cli = cli
        self.tmp_path = tmp_path
        self.pids: dict[Path, int] = {}
        self._count = 0

    def mountpoint(self) -> Path:
        self._count += 1
        path = self.tmp_path / f"mnt{self._count}"
        path.mkdir()
        return path

    def mount(self, ref: str, *options: str, mountpoint: Path | None = None) -> Path:
        """`amlfs mount` as a real process; returns the mountpoint once it serves."""
        path = mountpoint or self.mountpoint()
        result = self.cli.process("mount", ref, str(path), *options)
        assert result.code == 0, result.err
        self.pids[path] = int(re.search(r"\(pid (\d+)\)", result.out).group(1))
        return path

    def output(self, location: str, *options: str, mountpoint: Path | None = None) -> Path:
        """`amlfs output mount` as a real process; returns the mountpoint once it serves."""
        path = mountpoint or self.mountpoint()
        result = self.cli.process("output", "mount", location, str(path), *options)
        assert result.code == 0, result.err
        self.pids[path] = int(re.search(r"\(pid (\d+)\)", result.out).group(1))
        return path

    def unmount(self, path: Path) -> None:
        result = self.cli.process("unmount", str(path))
        assert result.code == 0, result.err

    def daemon_alive(self, path: Path) -> bool:
        return daemon_alive(self.pids[path])

    def wait_gone(self, path: Path, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.daemon_alive(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.daemon_alive(path)

    def cleanup(self) -> None:
        for path, pid in self.pids.items():
            if str(path) in mounted_paths():
                subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def status_of(cli, root: Path, wait_s: float = 3.0) -> dict:
    """The mount's counters once its status record has caught up: it is written every
    second, so they are taken once two records a second apart agree (a busy machine may
    delay a write)."""

    def stats() -> dict:
        listed = json.loads(cli.ok("status", "--json").out)
        return next(m for m in listed if m["mountpoint"] == str(root))["stats"]

    deadline = time.monotonic() + wait_s
    while not stats().get("reads") and time.monotonic() < deadline:
        time.sleep(0.1)
    latest, settle_by = stats(), time.monotonic() + 15.0
    while time.monotonic() < settle_by:
        time.sleep(1.1)
        previous, latest = latest, stats()
        if latest == previous:
            break
    return latest
