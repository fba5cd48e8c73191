"""`amlfs daemon` as systemd runs it, under a fake NOTIFY_SOCKET (a datagram socket of the
test's own): READY=1 only once the declared mounts serve, SIGHUP adds, removes and changes
mounts without touching the others, SIGTERM unmounts everything (uploads finished) and
exits 0, a bad entry is reported while the rest are served, a dead mount comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from amlfs.mounts import current_records, daemon_alive, mounted_paths
from tests.conftest import Cli, Container
from tests.support.mounts import processes_mentioning
from tests.support.sample import FILES
from tests.support.waiting import until

WAIT_S = 60.0


class Service:
    """One `amlfs daemon` process and the notifications it sends."""

    def __init__(self, cli: Cli, folder: Path):
        self.cli, self.folder = cli, folder
        self.config = folder / "mounts.yaml"
        self.address = f"\0amlfs-test-{uuid.uuid4().hex}"  # abstract: no file, no path limit
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.address)
        self.heard: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.err: list[str] = []  # its log (and its mounts'), read as it comes
        self._reader: threading.Thread | None = None

    def declare(self, *entries: dict) -> None:
        self.config.write_text(yaml.safe_dump({"mounts": list(entries)}, sort_keys=False))

    def start(self, env: dict[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Start it, with ENV added to its environment, as systemd would set it."""
        env = {**os.environ, "NOTIFY_SOCKET": "@" + self.address[1:], **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amlfs", "--home", str(self.cli.home), "daemon",
             "--config", str(self.config)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=preexec_fn,
        )  # fmt: skip
        # Read all along: a full pipe would block the mounts' daemons in their logging.
        self._reader = threading.Thread(target=self.err.extend, args=(self.proc.stderr,))
        self._reader.start()

    def wait_for(self, message: str | Callable[[str], bool]) -> list[str]:
        """Notifications up to and including the first one equal to MESSAGE (or for
        which it is true)."""
        matches = message if callable(message) else message.__eq__
        received: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.socket.recv(4096).decode()
            except TimeoutError:
                break
            received += datagram.splitlines()
            self.heard += datagram.splitlines()
            if any(matches(line) for line in datagram.splitlines()):
                return received
        pytest.fail(f"no {message} within {WAIT_S} s; heard {received}")

    def status(self) -> str:
        return [m for m in self.heard if m.startswith("STATUS=")][-1]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=WAIT_S)
        err = self._log()
        self.socket.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # what it said while stopping
                self.heard += self.socket.recv(4096).decode().splitlines()
        return self.proc.returncode, err

    def _log(self) -> str:
        """Its log, once it and its mounts' daemons (which write there too) ended."""
        assert self._reader is not None and self.proc is not None
        self._reader.join(timeout=WAIT_S)
        assert not self._reader.is_alive(), "a process of the service still runs"
        self.proc.stderr.close()
        return "".join(self.err)

    def pid_at(self, mountpoint: Path) -> int | None:
        found = [r.pid for r, alive in current_records(self.cli.home)
                 if alive and r.mountpoint == str(mountpoint)]  # fmt: skip
        return found[0] if found else None

    def cleanup(self) -> None:
        # The children first: they hold the daemon's output pipes open.
        for pid in processes_mentioning(self.folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=WAIT_S)
            if self._reader is not None:
                self._reader.join(timeout=WAIT_S)
            self.proc.stderr.close()
        for point in mounted_paths():
            if point.startswith(f"{self.folder}/"):
                subprocess.run(["fusermount3", "-u", "-z", point], check=False)
        self.socket.close()


@pytest.fixture
def service(cli: Cli, dataset: Container, tmp_path: Path, mounts) -> Iterator[Service]:
    """The daemon of this test (`mounts` checks FUSE is there); everything it mounted is
    detached and every process it started is ended at teardown."""
    helper = Service(cli, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()


def mountpoint(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_ready_comes_once_every_mount_serves_and_sigterm_unmounts_everything(
    service: Service, dataset: Container, tmp_path: Path
) -> None:
    data, out = mountpoint(tmp_path, "data"), mountpoint(tmp_path, "out")
    service.declare(
        {"mountpoint": str(data), "dataset": "ds:1", "block_size": "64KiB"},
        {"mountpoint": str(out), "output": "blob:service/out", "workers": 2},
    )
    service.start()
    service.wait_for("READY=1")
    assert {str(data), str(out)} <= set(mounted_paths())  # already serving at READY=1
    assert (data / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert service.status() == "STATUS=serving 2 of 2 mounts"
    (out / "result.txt").write_text("written through the service\n")
    children = [service.pid_at(data), service.pid_at(out)]

    code, err = service.stop()
    assert code == 0, err
    assert "STOPPING=1" in service.heard
    assert not {str(data), str(out)} & set(mounted_paths())
    until(lambda: not any(daemon_alive(pid) for pid in children if pid), "the children end")
    stored = dataset.fs.cat_file(f"{dataset.name}/service/out/result.txt")
    assert stored == b"written through the service\n"


def test_sighup_adds_removes_and_changes_mounts_and_leaves_the_rest_alone(
    service: Service, cli: Cli, tmp_path: Path
) -> None:
    kept, removed, added = (mountpoint(tmp_path, n) for n in ("kept", "removed", "added"))
    latest = mountpoint(tmp_path, "latest")
    service.declare(
        {"mountpoint": str(kept), "dataset": "ds:1"},
        {"mountpoint": str(removed), "dataset": "ds:1"},
        {"mountpoint": str(latest), "dataset": "ds"},  # the latest: ds:1 for now
    )
    service.start()
    service.wait_for("READY=1")
    before = {p: service.pid_at(p) for p in (kept, removed, latest)}

    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", "train")  # ds:2
    service.declare(
        {"mountpoint": str(kept), "dataset": "ds:1"},
        {"mountpoint": str(latest), "dataset": "ds"},
        {"mountpoint": str(added), "dataset": "ds:1"},
    )
    service.signal(signal.SIGHUP)
    assert service.wait_for("READY=1")[0] == "RELOADING=1"
    table = mounted_paths()
    assert service.pid_at(kept) == before[kept] and str(kept) in table  # untouched
    assert str(removed) not in table and not daemon_alive(before[removed])
    assert str(added) in table and (added / "labels.csv").exists()
    # "ds" was read again: it now means ds:2, whose root is train/.
    assert service.pid_at(latest) != before[latest]
    assert sorted(os.listdir(latest)) == ["a.bin", "b.bin", "empty.dat", "nested"]
    assert service.status() == "STATUS=serving 3 of 3 mounts"


def test_a_bad_entry_is_reported_and_skipped_while_the_others_are_served(
    service: Service, tmp_path: Path
) -> None:
    good, busy = mountpoint(tmp_path, "good"), mountpoint(tmp_path, "busy")
    (busy / "someone-elses-file").write_text("x")
    service.declare(
        {"mountpoint": str(good), "dataset": "ds:1"},
        {"mountpoint": str(tmp_path / "a"), "dataset": "no-such-dataset"},
        {"mountpoint": str(tmp_path / "b"), "dataset": "ds", "cache_sise": "1GiB"},
        {"mountpoint": str(busy), "dataset": "ds:1"},
    )
    service.start()
    service.wait_for("READY=1")
    assert (good / "labels.csv").read_bytes() == FILES["labels.csv"]
    status = service.status()
    assert status.startswith("STATUS=serving 1 of 4 mounts; 1 failing (")
    assert f"mountpoint {busy} is not empty" in status
    assert f"2 bad entries ({service.config}:4: no dataset named 'no-such-dataset')" in status

    (busy / "someone-elses-file").unlink()  # fixed: a reload serves it at once
    service.signal(signal.SIGHUP)
    service.wait_for("READY=1")
    assert service.status().startswith("STATUS=serving 2 of 4 mounts; 2 bad entries")
    assert (busy / "labels.csv").exists()
    code, err = service.stop()
    assert code == 0
    assert f"{service.config}:8: cache_sise: Extra inputs are not permitted" in err


def test_a_mount_whose_daemon_dies_is_detached_and_served_again(
    service: Service, tmp_path: Path
) -> None:
    data = mountpoint(tmp_path, "data")
    service.declare({"mountpoint": str(data), "dataset": "ds:1"})
    service.start()
    service.wait_for("READY=1")
    first = service.pid_at(data)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    service.wait_for("STATUS=serving 0 of 1 mounts; 1 failing (" + str(data)
                     + f": its daemon ended (pid {first}))")  # fmt: skip
    service.wait_for("STATUS=serving 1 of 1 mounts")  # after the 5 s back-off
    assert service.pid_at(data) not in (None, first)
    assert (data / "labels.csv").read_bytes() == FILES["labels.csv"]


def test_a_config_that_cannot_be_read_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "mounts.yaml"
    config.write_text("mounts: [\n")
    result = cli("daemon", "--config", str(config))
    assert result.code == 2
    assert result.err.startswith(f"amlfs: error: {config}:") and "not valid YAML" in result.err
    result = cli("daemon", "--config", str(tmp_path / "missing.yaml"))
    assert result.code == 2 and "No such file or directory" in result.err
