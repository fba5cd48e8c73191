"""Read hints through a real mount on the emulator: a reader that names the files it
reads next gets them fetched ahead, in its order, never more than a bounded number at
once, and never anything it has left behind or anything outside the version."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.hints import FILES_AHEAD
from amlfs.sampler import hint, hint_socket
from tests.conftest import Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS

MANY = {f"many/f{i:02d}.bin": bytes([i]) * 1000 for i in range(3 * FILES_AHEAD)}
SETTLE_S = 30.0  # generous: the status record is written every second


def daemon_log(cli: Cli) -> str:
    return "".join(p.read_text() for p in (cli.home / "logs").glob("mount-*.log"))


def stats_of(cli: Cli, root: Path) -> dict:
    listed = json.loads(cli.ok("status", "--json").out)
    return next(m for m in listed if m["mountpoint"] == str(root))["stats"]


def settled(cli: Cli, root: Path, **expected: int) -> dict:
    """The mount's counters once they show EXPECTED and nothing is being fetched, taken
    from two status records a second apart that agree."""
    deadline = time.monotonic() + SETTLE_S
    latest = stats_of(cli, root)
    while time.monotonic() < deadline:
        time.sleep(1.1)
        previous, latest = latest, stats_of(cli, root)
        quiet = latest.get("prefetches") == 0 and latest.get("fetches_in_flight") == 0
        if quiet and latest == previous and all(latest.get(k) == v for k, v in expected.items()):
            return latest
    return latest


def hinted_order(cli: Cli) -> list[str]:
    return re.findall(r"fetching ahead \(hinted\): ds:1 (.+)", daemon_log(cli))


@contextlib.contextmanager
def home_at(home: Path, dataset: Container, tmp_path: Path) -> Iterator[tuple[Cli, Mounts]]:
    """A CLI with its state folder at HOME, the sample dataset registered as ds:1, and
    mounts of its own, unmounted at the end."""
    own = Cli(home)
    own.ok("datastore", "add", "blob", dataset.url, "--connection-string-env", dataset.env_var)
    own.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    helper = Mounts(own, tmp_path)
    try:
        yield own, helper
    finally:
        helper.cleanup()


@pytest.fixture
def short_home(dataset: Container, tmp_path: Path) -> Iterator[tuple[Cli, Mounts]]:
    """A state folder whose path is short enough for the socket to lie in it (a test's
    own folder may not be)."""
    home = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    try:
        with home_at(home, dataset, tmp_path) as made:
            yield made
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def deep_home(dataset: Container, tmp_path: Path) -> Iterator[tuple[Cli, Mounts]]:
    """A state folder too deep for a socket's path (108 bytes at most)."""
    with home_at(tmp_path / ("deep-" * 20) / "home", dataset, tmp_path) as made:
        yield made


def unix_address(address: str) -> str:
    return "\0" + address[1:] if address.startswith("@") else address


def test_the_root_names_a_private_socket_beside_the_mounts_record(
    short_home: tuple[Cli, Mounts],
) -> None:
    cli, mounts = short_home
    root = mounts.mount("ds:1", *OPTIONS)
    assert "user.amlfs.hints" in os.listxattr(root)
    path = Path(hint_socket(root))
    assert path.parent == cli.home / "run" / "mounts" and path.suffix == ".hints"
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    if os.geteuid() == 0:  # another user cannot even reach it
        assert connect_as(65534, str(path)) == 13
    mounts.unmount(root)
    assert not path.exists()


def test_a_state_folder_too_deep_for_a_socket_path_gets_an_abstract_socket(
    deep_home: tuple[Cli, Mounts],
) -> None:
    cli, mounts = deep_home
    root = mounts.mount("ds:1", *OPTIONS)
    assert hint_socket(root).startswith("@amlfs-hints-")
    hint(root, ["labels.csv"])
    assert settled(cli, root, hinted_fetches=1)["hinted_fetches"] == 1


def test_hinted_files_are_fetched_in_that_order_before_they_are_opened(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS, "--debug")
    order = ["labels.csv", "train/a.bin", "valid/with space é.txt", "train/b.bin"]
    hint(root, order)
    before = settled(cli, root, hinted_fetches=len(order))
    assert before["hints_received"] == len(order) and before["hinted_fetches"] == len(order)
    assert hinted_order(cli) == order
    assert before["reads"] == 0 and before["fetches"] == len(order)  # a request per file
    for path in order:
        assert (root / path).read_bytes() == FILES[path]
    after = settled(cli, root, hinted_started=len(order))
    assert after["fetches"] == before["fetches"]  # every byte read came from memory
    assert after["misses"] == before["misses"] and after["memory_hits"] > 0
    assert after["hints_dropped"] == 0


def test_no_more_than_the_bound_is_fetched_ahead_and_stale_hints_are_dropped(
    cli: Cli, container: Container, mounts: Mounts
) -> None:
    container.put(MANY)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env",
           container.env_var)  # fmt: skip
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    root = mounts.mount("ds:1", *OPTIONS, "--debug")
    names = sorted(MANY)
    hint(root, names)
    # Nobody reads: FILES_AHEAD files are fetched, and no more.
    waiting = settled(cli, root, hinted_fetches=FILES_AHEAD)
    assert waiting["hinted_fetches"] == FILES_AHEAD and waiting["hints_received"] == len(names)
    assert hinted_order(cli) == names[:FILES_AHEAD]

    # The reader starts the sixth: it and the five before it are passed; the window moves.
    assert (root / names[5]).read_bytes() == MANY[names[5]]
    moved = settled(cli, root, hinted_fetches=6 + FILES_AHEAD)
    assert moved["hinted_started"] == 1 and moved["hints_dropped"] == 5
    assert moved["hinted_fetches"] == 6 + FILES_AHEAD
    assert hinted_order(cli) == names[: 6 + FILES_AHEAD]

    # A file the reader left behind is no longer hinted: starting it moves nothing.
    assert (root / names[2]).read_bytes() == MANY[names[2]]
    again = settled(cli, root, reads=moved["reads"] + 1)
    assert again["hinted_started"] == 1 and again["hinted_fetches"] == moved["hinted_fetches"]

    # A new list replaces what is left of the old one.
    hint(root, [names[-1]])
    replaced = settled(cli, root, hints_received=len(names) + 1)
    # Those neither passed nor started before are dropped now.
    assert replaced["hints_dropped"] == moved["hints_dropped"] + len(names) - 6
    assert hinted_order(cli)[-1] == names[-1]


def test_a_hint_outside_the_version_is_ignored_and_logged(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    lines = [b"missing.bin", b"../labels.csv", b"train", b"\xff\xfe", b"x" * 5000, b"labels.csv\r"]
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(unix_address(hint_socket(root)))
        client.sendall(b"\n".join(lines) + b"\n")
    counted = settled(cli, root, hints_ignored=5, hinted_fetches=1)
    assert counted["hints_ignored"] == 5 and counted["hinted_fetches"] == 1
    assert counted["hints_received"] == 6
    assert "read hint ignored: 'missing.bin' is not a file of ds:1" in daemon_log(cli)
    assert "read hint ignored: 'train' is not a file of ds:1" in daemon_log(cli)
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]


def test_a_changed_blob_that_is_hinted_still_fails_with_eio(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    dataset.put({"train/b.bin": b"rewritten after version 1 was registered"})
    hint(root, ["train/b.bin"])
    settled(cli, root, hinted_fetches=1)
    with pytest.raises(OSError) as raised:
        (root / "train" / "b.bin").read_bytes()
    assert raised.value.errno == errno.EIO
    assert "ds:1 train/b.bin changed since its version was registered" in daemon_log(cli)


def connect_as(uid: int, address: str) -> int:
    """In a child process of user UID: connect to ADDRESS and send a hint. Its exit code:
    0 sent, 13 refused (EACCES), 1 anything else."""
    pid = os.fork()
    if pid == 0:  # the child does nothing but this, and leaves with os._exit
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(address)
                client.sendall(b"labels.csv\n")
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_send_hints(deep_home: tuple[Cli, Mounts]) -> None:
    cli, mounts = deep_home
    root = mounts.mount("ds:1", *OPTIONS)
    address = hint_socket(root)
    assert address.startswith("@")  # an abstract name: anyone may connect, the uid tells
    connect_as(65534, unix_address(address))
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert settled(cli, root, reads=1)["hints_received"] == 0
    assert "read hints refused: uid 65534 is not this mount's user" in daemon_log(cli)
