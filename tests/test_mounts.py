"""Mounts on this machine: the kernel's mount table read back as paths, and the locks
that say whether a daemon or a session is alive (held until its holder dies, checked
without being taken)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs import locks
from amlfs.mounts import parse_mountinfo

LINES = (
    "36 35 98:0 / /mnt/data\\040set rw,noatime - fuse.amlfs amlfs:ds:1 ro\n"
    "37 35 98:0 / /mnt/données rw - fuse.amlfs amlfs:ds:2 ro\n"
    "38 35 98:0 / /srv/a\\134b rw - ext4 /dev/sda1 rw\n"
)

HOLD = """
import subprocess, sys, time
from pathlib import Path
from amlfs import locks
assert locks.hold(Path(sys.argv[1])) is not None
# A child started while it holds the lock must not keep it after the holder dies.
child = subprocess.Popen(["sleep", "300"], close_fds=False)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_escaped_and_unicode_mountpoints_are_read_back_as_paths() -> None:
    assert parse_mountinfo(LINES) == {
        "/mnt/data set": "fuse.amlfs",
        "/mnt/données": "fuse.amlfs",
        "/srv/a\\b": "ext4",
    }


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A process holding the lock of a file (and a child of its own); both ended by pid."""
    path = tmp_path / "daemon.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    child = proc.stdout.readline().strip()
    try:
        assert child.isdigit(), "the holder did not start"
        yield proc, path
    finally:
        proc.kill()
        proc.wait()
        if child.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)


def test_a_lock_is_held_until_its_holder_dies_not_by_its_children_nor_by_a_check(
    holder: tuple[subprocess.Popen, Path],
) -> None:
    proc, path = holder
    assert locks.held(path) and locks.held(path)  # checking twice: still held by it
    assert locks.hold(path) is None
    proc.kill()
    proc.wait()
    assert not locks.held(path)  # its child, still running, does not keep it
    mine = locks.hold(path)
    assert mine is not None and locks.held(path)  # held by this process: seen as held
    mine.release()
    assert not path.exists() and not locks.held(path)


@pytest.mark.parametrize(
    "text", ["4MiB", "512KiB", "10GB", "1.5GiB", "4 mib", " 3 TB ", "4m", "1k", ".5k", "1024"]
)
def test_sizes_read_as_pydantics_byte_size_reads_them(text: str) -> None:
    from pydantic import ByteSize, TypeAdapter

    from amlfs.cli.mount import parse_size

    assert parse_size(text, "--cache-size") == int(TypeAdapter(ByteSize).validate_python(text))


@pytest.mark.parametrize("text", ["lots", "", "MiB", "4 MiB more", "4 furlongs"])
def test_what_is_not_a_size_is_a_user_error(text: str) -> None:
    from amlfs.cli.mount import parse_size
    from amlfs.errors import UserError

    with pytest.raises(UserError, match="--cache-size: not a size"):
        parse_size(text, "--cache-size")
