"""Logs of mount daemons are bounded: past their size they rotate (NAME.log, .1, .2),
whatever writes to them, logging or raw output on stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from amlfs import logs
from amlfs.logs import RotatingLog
from tests.conftest import Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import OPTIONS

DEADLINE_S = 30.0


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_log_is_shifted_and_its_writers_move_to_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    fd = os.open(path, logs.FLAGS, 0o600)
    try:
        log = RotatingLog(path, fds=(fd,), max_bytes=1000, keep=3)
        for round_ in range(5):
            os.write(fd, bytes([65 + round_]) * 1000)
            log.check()
        os.write(fd, b"last")
        assert names(tmp_path) == ["d.log", "d.log.1", "d.log.2"]  # the oldest dropped
        assert path.read_bytes() == b"last"
        assert (tmp_path / "d.log.1").read_bytes() == b"E" * 1000
        assert (tmp_path / "d.log.2").read_bytes() == b"D" * 1000
    finally:
        os.close(fd)


def test_a_log_below_its_bound_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "d.log"
    fd = os.open(path, logs.FLAGS, 0o600)
    try:
        os.write(fd, b"x" * 999)
        RotatingLog(path, fds=(fd,), max_bytes=1000).check()
        assert names(tmp_path) == ["d.log"]
    finally:
        os.close(fd)


def test_a_writer_whose_file_another_rotated_follows_it_without_shifting_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.log"
    first, second = (os.open(path, logs.FLAGS, 0o600) for _ in range(2))
    try:
        os.write(first, b"x" * 1000)
        RotatingLog(path, fds=(first,), max_bytes=1000).check()
        RotatingLog(path, fds=(second,), max_bytes=1000).check()  # sees the rotated file
        os.write(second, b"second")
        os.write(first, b"first")
        assert names(tmp_path) == ["d.log", "d.log.1"]
        assert path.read_bytes() == b"secondfirst"
    finally:
        os.close(first)
        os.close(second)


CHILD = """
import logging, os, sys
from amlfs import logs, mounts
logs.MAX_BYTES = 256 * 1024
logging.basicConfig(level=logging.WARNING)
mounts.daemon_logging()
log = logging.getLogger("amlfs.test")
for i in range(20000):
    log.info("line %06d %s", i, "x" * 100)
    if i % 500 == 0:
        os.write(2, b"raw output of C code " * 100 + b"\\n")  # bypasses logging
log.info("the last line")
"""


def test_a_daemon_writing_much_more_than_the_bound_keeps_three_bounded_files(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "mount-x.log"
    with open(path, "ab") as out:
        env = {**os.environ, logs.LOG_ENV: str(path), "PYTHONPATH": os.getcwd()}
        subprocess.run([sys.executable, "-c", CHILD, "--debug"], stdout=out, stderr=out,
                       env=env, check=True, timeout=120)  # fmt: skip
    assert names(folder) == ["mount-x.log", "mount-x.log.1", "mount-x.log.2"]
    slack = 4096  # a file is checked before each line: it exceeds the bound by one at most
    assert all((folder / n).stat().st_size <= 256 * 1024 + slack for n in names(folder))
    assert "the last line" in path.read_text()
    assert "raw output of C code" in "".join((folder / n).read_text() for n in names(folder))


def test_a_mount_daemon_rotates_its_log_once_it_is_full(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    mountpoint = mounts.mountpoint()
    log = cli.home / "logs" / f"mount-{mountpoint.name}-ds:1.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"an earlier daemon's lines\n" * (logs.MAX_BYTES // 26 + 1))
    mounts.mount("ds:1", *OPTIONS, mountpoint=mountpoint)
    rotated = log.with_name(log.name + ".1")
    deadline = time.monotonic() + DEADLINE_S
    while not rotated.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rotated.exists(), "the full log was not rotated"
    assert (mountpoint / "labels.csv").read_bytes() == b"a,1\nb,2\n"
    mounts.unmount(mountpoint)
    assert rotated.read_bytes().startswith(b"an earlier daemon's lines")
    assert "an earlier daemon's lines" not in log.read_text()  # it went on in a fresh file
