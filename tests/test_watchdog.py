"""`amlfs daemon` under systemd's watchdog, with a fake NOTIFY_SOCKET and WATCHDOG_USEC as
systemd sets them: WATCHDOG=1 comes while every mount answers its health check, is
withheld while one does not, and a mount whose FUSE loop stopped is killed and served
again. And the service's mounts hold more open files than the old default of 1024."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amlfs.mounts import daemon_alive, mounted_paths
from amlfs.service import watchdog
from tests.conftest import Cli, Container, require
from tests.support.sample import FILES
from tests.test_daemon import Service, mountpoint
from tests.test_systemd_units import UNITS_DIR, one, parse

PING_EVERY_USEC = "2000000"  # WatchdogSec=2s: a ping every second
OPEN_AT_ONCE = 2000  # files open at once in one output mount: more than 1024
OLD_DEFAULT = 1024  # the soft limit on open files a service gets without LimitNOFILE=


@pytest.fixture
def service(cli: Cli, dataset: Container, tmp_path: Path, mounts) -> Iterator[Service]:
    """As in test_daemon: everything it mounted is detached, every process it started
    ended at teardown."""
    helper = Service(cli, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()


@pytest.fixture
def stopped(service: Service) -> Iterator[list[int]]:
    """Processes the test stops (SIGSTOP): continued at teardown, before the service's
    own cleanup ends them (a stopped FUSE daemon would hang whoever touches its mount)."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            if daemon_alive(pid):  # still the daemon stopped, not a process reusing its pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def test_watchdog_pings_come_while_mounts_answer_and_a_stopped_mount_is_killed_and_served_again(
    service: Service, stopped: list[int], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = mountpoint(tmp_path, "data")
    service.declare({"mountpoint": str(data), "dataset": "ds:1"})
    service.start(env={"WATCHDOG_USEC": PING_EVERY_USEC})
    service.wait_for("READY=1")
    for _ in range(3):  # keeps coming while the mount answers
        service.wait_for("WATCHDOG=1")
    first = service.pid_at(data)
    assert first is not None
    # A program holding a file in the mount: it keeps a plain unmount from detaching it.
    held = os.open(data / "labels.csv", os.O_RDONLY)
    request.addfinalizer(lambda: close_on_a_dead_mount(held))

    stopped.append(first)
    os.kill(first, signal.SIGSTOP)  # its FUSE loop no longer answers
    service.wait_for(f"STATUS=serving 1 of 1 mounts; 1 not answering ({data})")
    failing = f"STATUS=serving 0 of 1 mounts; 1 failing ({data}: its daemon stopped answering"
    meanwhile = service.wait_for(lambda line: line.startswith(failing))
    assert "WATCHDOG=1" not in meanwhile  # withheld from the failed check to the kill
    assert meanwhile[-1] == f"{failing} (pid {first}))"
    assert not daemon_alive(first)

    after = service.wait_for("STATUS=serving 1 of 1 mounts")  # again, after the back-off
    assert "WATCHDOG=1" in after  # resumed once the wedged daemon was gone
    second = service.pid_at(data)
    assert second not in (None, first)
    assert (data / "labels.csv").read_bytes() == FILES["labels.csv"]
    service.wait_for("WATCHDOG=1")
    code, err = service.stop()
    assert code == 0, err
    assert f"{data}: its daemon (pid {first}) has not answered for" in err


def close_on_a_dead_mount(fd: int) -> None:
    with contextlib.suppress(OSError):  # ENOTCONN: its daemon was killed
        os.close(fd)


def test_no_watchdog_pings_unless_systemd_asks_for_them(service: Service, tmp_path: Path) -> None:
    data = mountpoint(tmp_path, "data")
    service.declare({"mountpoint": str(data), "dataset": "ds:1"})
    service.start()  # no WATCHDOG_USEC: WatchdogSec= unset
    service.wait_for("READY=1")
    assert (data / "labels.csv").read_bytes() == FILES["labels.csv"]
    code, err = service.stop()
    assert code == 0, err
    assert "WATCHDOG=1" not in service.heard


def test_watchdog_pings_at_half_the_interval_and_only_for_the_process_named() -> None:
    assert watchdog.Watchdog({"WATCHDOG_USEC": "30000000"}).every_s == 15.0
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog.Watchdog(mine).due()
    for asked in ({}, {"WATCHDOG_USEC": "0"}, {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}):
        assert watchdog.Watchdog(asked).every_s is None
        assert not watchdog.Watchdog(asked).due()
    pinged = watchdog.Watchdog(mine)
    pinged.sent()
    assert not pinged.due()


def test_a_silent_mount_has_one_check_outstanding_fails_then_counts_as_wedged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watchdog, "ANSWER_WITHIN_S", 0.05)
    monkeypatch.setattr(watchdog, "WEDGED_AFTER_S", 0.2)
    answer = threading.Event()
    asked: list[str] = []

    def statfs(path: str) -> None:  # as on a stopped FUSE daemon: no answer until told
        asked.append(path)
        answer.wait(timeout=60)

    health = watchdog.Health(ask=statfs)
    health.check({7: "/mnt/wedged"})
    assert health.passes()
    checking(health, lambda: not health.passes(), "the check fails")
    assert not health.wedged(7)
    checking(health, lambda: health.wedged(7), "the mount counts as wedged")
    assert asked == ["/mnt/wedged"]  # however many rounds of checks: one thread waits

    answer.set()
    checking(health, lambda: len(asked) == 2 and health.passes(), "it answers again")
    health.check({})  # it ended: forgotten
    assert health.passes() and not health.wedged(7)


def checking(health: watchdog.Health, condition: Callable[[], bool], what: str) -> None:
    """Rounds of checks of pid 7 until CONDITION holds (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        health.check({7: "/mnt/wedged"})
        if condition():
            return
        assert time.monotonic() < deadline, f"not within 10 s: {what}"
        time.sleep(0.01)


def test_the_units_give_the_service_time_to_restart_a_wedged_mount_itself() -> None:
    """The longest gap between pings while the daemon ends a wedged mount: at most a
    ping interval before the check failed, then until the mount counts as wedged, plus a
    round of checks and one of the supervisor. It must stay under WatchdogSec=."""
    for name in ("amlfs.service", "amlfs-mount@.service"):
        watchdog_s = float(one(parse(UNITS_DIR / name), "Service", "WatchdogSec").rstrip("s"))
        gap = (watchdog_s / 2 + watchdog.WEDGED_AFTER_S - watchdog.ANSWER_WITHIN_S
               + 2 * watchdog.CHECK_EVERY_S)  # fmt: skip
        assert gap < watchdog_s


def open_files_limit() -> int:
    """LimitNOFILE= of the units (both the same: test_systemd_units)."""
    return int(one(parse(UNITS_DIR / "amlfs.service"), "Service", "LimitNOFILE"))


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """This test process may hold OPEN_AT_ONCE files and more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(hard >= 2 * OPEN_AT_ONCE, f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_output_mount_of_the_service_holds_more_open_files_than_the_old_default(
    service: Service, dataset: Container, tmp_path: Path, many_open_files: None
) -> None:
    limit = open_files_limit()
    assert limit > OPEN_AT_ONCE
    # The unit's limit as the hard one, as systemd sets it; lower if this process's own
    # hard limit is (raising it takes CAP_SYS_RESOURCE).
    hard = min(limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    def as_in_the_unit() -> None:
        # The soft limit stays at the old default: the daemon raises it itself.
        resource.setrlimit(resource.RLIMIT_NOFILE, (OLD_DEFAULT, hard))

    out = mountpoint(tmp_path, "out")
    service.declare({"mountpoint": str(out), "output": "blob:service/many", "workers": 8})
    service.start(preexec_fn=as_in_the_unit)
    service.wait_for("READY=1")
    daemon = service.pid_at(out)
    assert daemon is not None
    assert _open_files_limits(daemon) == (hard, hard)

    kept = [number for number in range(OPEN_AT_ONCE) if number % 100 == 99]
    with contextlib.ExitStack() as files:
        for number in range(OPEN_AT_ONCE):
            file = files.enter_context(open(out / f"{number:04d}.txt", "w"))
            file.write(f"file {number}\n")
        assert len(os.listdir(f"/proc/{daemon}/fd")) > OPEN_AT_ONCE  # each one held there
        for number in set(range(OPEN_AT_ONCE)) - set(kept):  # not worth uploading
            (out / f"{number:04d}.txt").unlink()
    code, err = service.stop()  # after the uploads of the files kept
    assert code == 0, err
    assert str(out) not in mounted_paths()
    stored = sorted(dataset.fs.find(f"{dataset.name}/service/many"))
    assert stored == [f"{dataset.name}/service/many/{number:04d}.txt" for number in kept]
    assert dataset.fs.cat_file(stored[-1]) == f"file {kept[-1]}\n".encode()


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open files limit in /proc/{pid}/limits")
