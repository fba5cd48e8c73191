"""Read-only mounts of pinned versions, through the kernel, on the Azurite emulator.

A mount shows exactly the pinned tree, serves exactly the pinned bytes, refuses every
change, and goes away cleanly."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlfs.mounts import mounted_paths
from tests.conftest import Cli, Container, require
from tests.support.mounts import Mounts, processes_mentioning, status_of
from tests.support.sample import BLOCK, FILES, OPTIONS
from tests.support.waiting import until


def tree_of(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_mounted_tree_and_bytes_are_the_pinned_ones(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    assert tree_of(root) == {path: len(data) for path, data in FILES.items()}
    for path, data in FILES.items():
        assert hashlib.sha256((root / path).read_bytes()).digest() == hashlib.sha256(data).digest()
    listed = json.loads(cli.ok("dataset", "show", "ds:1", "--json", "--files").out)["files"]
    assert sorted(f["path"] for f in listed) == sorted(tree_of(root))
    assert sorted(os.listdir(root)) == ["labels.csv", "train", "valid"]


def test_each_file_exposes_its_source_etag_and_md5(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    shown = json.loads(cli.ok("dataset", "show", "ds:1", "--json", "--files").out)
    pinned = {f["path"]: f for f in shown["files"]}
    path = root / "train" / "a.bin"
    assert set(os.listxattr(path)) >= {"user.amlfs.source", "user.amlfs.etag", "user.amlfs.md5"}
    assert os.getxattr(path, "user.amlfs.etag").decode() == pinned["train/a.bin"]["etag"]
    assert (
        os.getxattr(path, "user.amlfs.md5").decode()
        == hashlib.md5(FILES["train/a.bin"]).hexdigest()
    )
    assert os.getxattr(path, "user.amlfs.source").decode().endswith(f"{dataset.name}/train/a.bin")
    assert os.getxattr(path, "user.amlfs.version") == b"ds:1"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_reads_at_any_offset_and_size_equal_the_source_slice(
    data: st.DataObject, dataset: Container, mounts: Mounts
) -> None:
    if not mounts.pids:
        mounts.mount("ds:1", *OPTIONS)
    root = next(iter(mounts.pids))
    name = data.draw(st.sampled_from(["train/a.bin", "train/b.bin", "labels.csv"]))
    content = FILES[name]
    offset = data.draw(st.integers(0, len(content) + 10))
    size = data.draw(st.integers(0, 3 * BLOCK))
    with open(root / name, "rb", buffering=0) as f:
        assert os.pread(f.fileno(), size, offset) == content[offset : offset + size]


def test_two_versions_mounted_at_once_each_show_their_own_files(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    dataset.put({"train/new.bin": b"only in version 2"})
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    first, second = mounts.mount("ds:1", *OPTIONS), mounts.mount("ds:2", *OPTIONS)
    assert not (first / "train" / "new.bin").exists()
    assert (second / "train" / "new.bin").read_bytes() == b"only in version 2"
    assert (first / "labels.csv").read_bytes() == (second / "labels.csv").read_bytes()


def test_inode_numbers_are_the_same_on_every_mount(dataset: Container, mounts: Mounts) -> None:
    first, second = mounts.mount("ds:1", *OPTIONS), mounts.mount("ds:1", *OPTIONS)
    for path in FILES:
        assert (first / path).stat().st_ino == (second / path).stat().st_ino


def test_many_threads_reading_one_file_all_get_its_bytes(
    dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    results: list[bytes] = []

    def read() -> None:
        with open(root / "train" / "a.bin", "rb", buffering=0) as f:
            results.append(f.read())

    threads = [threading.Thread(target=read) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [FILES["train/a.bin"]] * 16


@pytest.mark.parametrize(
    "change",
    [
        lambda root: open(root / "labels.csv", "r+b"),  # noqa: SIM115
        lambda root: open(root / "new.txt", "wb"),  # noqa: SIM115
        lambda root: os.unlink(root / "labels.csv"),
        lambda root: os.rename(root / "labels.csv", root / "x.csv"),
        lambda root: os.chmod(root / "labels.csv", 0o777),
        lambda root: os.mkdir(root / "folder"),
        lambda root: os.truncate(root / "labels.csv", 0),
        lambda root: os.setxattr(root / "labels.csv", "user.x", b"1"),
    ],
    ids=["write", "create", "unlink", "rename", "chmod", "mkdir", "truncate", "setxattr"],
)
def test_every_change_is_refused_with_erofs(dataset: Container, mounts: Mounts, change) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    with pytest.raises(OSError) as raised:
        change(root)
    assert raised.value.errno == errno.EROFS


def test_metadata_needs_no_storage(cli: Cli, dataset: Container, mounts: Mounts) -> None:
    """ls, stat and find are answered from the registry: they work with storage gone."""
    root = mounts.mount("ds:1", *OPTIONS)
    dataset.fs.rm(dataset.name, recursive=True)  # storage no longer has any of it
    assert tree_of(root) == {path: len(data) for path, data in FILES.items()}
    assert os.statvfs(root).f_files == len(FILES)


def test_unmount_removes_the_mount_and_its_daemon(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]
    mounts.unmount(root)
    assert mounts.wait_gone(root)
    assert not os.listdir(root)
    assert "no mounts" in cli.ok("status").out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_cleanly(dataset: Container, mounts: Mounts, signum: int) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    os.kill(mounts.pids[root], signum)
    assert mounts.wait_gone(root)
    assert not os.path.ismount(root)


def test_unmount_clears_a_mount_whose_daemon_died(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    os.kill(mounts.pids[root], signal.SIGKILL)
    assert mounts.wait_gone(root)
    with pytest.raises(OSError) as raised:
        os.listdir(root)
    # The kernel says "not connected" or "connection aborted", depending on timing.
    assert raised.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert "stale" in cli.ok("status").out
    mounts.unmount(root)
    assert os.listdir(root) == []


def test_bad_mount_requests_are_one_line_and_exit_2(
    cli: Cli, dataset: Container, mounts: Mounts, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    mounted = mounts.mount("ds:1", *OPTIONS)
    empty = mounts.mountpoint()
    cases = {
        ("ds:1", str(tmp_path / "missing")): "does not exist",
        ("ds:1", str(tmp_path / "file")): "not a directory",
        ("ds:1", str(busy)): "not empty",
        ("ds:1", str(mounted)): "already a mount point",
        ("nope", str(empty)): "nope",
        ("ds:9", str(empty)): "no version 9",
        ("ds:1", str(empty), "--block-size", "lots"): "not a size",
    }
    for args, message in cases.items():
        result = cli.process("mount", *args)
        assert result.code == 2, (args, result.err)
        assert message in result.err and result.err.count("\n") == 1, result.err
    assert cli.process("unmount", str(empty)).code == 2
    # The daemon each refused mount started ahead of its checks (amlfs.warm) went with it.
    until(lambda: not processes_mentioning(empty), "no process left by a refused mount", 5.0)


def test_a_mount_is_served_by_its_daemon_started_ahead_of_the_checks(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    """`amlfs mount` forks its daemon first thing (amlfs.warm) and hands it the mount."""
    root = mounts.mount("ds:1", *OPTIONS)
    assert (root / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    logs = "".join(p.read_text() for p in (cli.home / "logs").glob("mount-*.log"))
    assert "started ahead of the command's checks" in logs


def test_two_mounts_share_one_block_cache(cli: Cli, dataset: Container, mounts: Mounts) -> None:
    first = mounts.mount("ds:1", *OPTIONS)
    assert (first / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    stats = status_of(cli, first)
    assert stats["bytes_fetched"] >= len(FILES["train/a.bin"])
    assert stats["latency_ms"] > 0 and stats["read_ahead_depth"] > 0  # what read-ahead uses
    second = mounts.mount("ds:1", *OPTIONS)
    assert (second / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    stats = status_of(cli, second)
    assert stats["bytes_fetched"] == 0 and stats["disk_hits"] >= 4
    cache = json.loads(cli.ok("cache", "stats", "--json").out)
    assert cache["blocks"] >= 4 and cache["hits"] >= 4


def test_cache_clear_is_safe_while_mounted(cli: Cli, dataset: Container, mounts: Mounts) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    assert (root / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    assert "removed" in cli.ok("cache", "clear").out
    assert (root / "train" / "b.bin").read_bytes() == FILES["train/b.bin"]
    other = mounts.mount("ds:1", *OPTIONS)  # a fresh daemon: nothing in memory either
    assert (other / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]


@pytest.fixture
def public_mountpoint(mounts: Mounts) -> Iterator[Path]:
    """An empty folder that every user can reach (pytest's own folders are private)."""
    require(os.geteuid() == 0, "reading as another user needs root")
    require(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    folder = Path(tempfile.mkdtemp(prefix="amlfs-public-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        if str(folder) in mounted_paths():
            subprocess.run(["fusermount3", "-u", "-z", str(folder)], check=False)
        folder.rmdir()


def read_as_nobody(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
        capture_output=True, timeout=30,
    )  # fmt: skip


def test_other_users_read_only_with_allow_other(
    dataset: Container, mounts: Mounts, public_mountpoint: Path
) -> None:
    root = mounts.mount("ds:1", *OPTIONS, mountpoint=public_mountpoint)
    assert read_as_nobody(root / "labels.csv").returncode != 0  # FUSE keeps others out
    mounts.unmount(root)
    assert mounts.wait_gone(root)
    root = mounts.mount("ds:1", *OPTIONS, "--allow-other", mountpoint=public_mountpoint)
    assert read_as_nobody(root / "labels.csv").stdout == FILES["labels.csv"]


def test_a_second_read_is_served_by_the_kernel_without_the_daemon(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    """Versions never change, so the kernel keeps the pages across opens, and opens are
    the kernel's own: a second epoch over data that fits in memory sends the daemon no
    request at all (no open, read, release or lookup). On a shared machine, memory
    pressure from elsewhere may evict a page between two epochs: then the epoch after
    must send none (a mount whose pages the kernel did not keep sends reads every time)."""
    root = mounts.mount("ds:1", *OPTIONS)
    for path, data in FILES.items():
        assert (root / path).read_bytes() == data
    first = status_of(cli, root)
    assert first["reads"] > 0
    assert first["requests"].get("open", 0) <= 1  # the one that told the kernel: no opens
    assert "release" not in first["requests"]
    before, sent = first, []
    for _epoch in range(3):
        for path, data in FILES.items():
            assert (root / path).read_bytes() == data
        again = status_of(cli, root)
        if again["requests"] == before["requests"] and again["reads"] == before["reads"]:
            break
        sent.append({k: v - before["requests"].get(k, 0) for k, v in again["requests"].items()
                     if v != before["requests"].get(k, 0)})  # fmt: skip
        before = again
    else:
        pytest.fail(f"every epoch sent the daemon requests: {sent}")


def test_a_second_listing_is_served_by_the_kernel_without_the_daemon(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    """Listings never change either: the kernel caches them, and a second walk of the
    tree (names, types and sizes) sends the daemon no request."""
    root = mounts.mount("ds:1", *OPTIONS)
    walk = tree_of(root)
    assert walk == {path: len(data) for path, data in FILES.items()}
    first = status_of_requests(cli, root)
    assert first.get("readdir", 0) > 0
    assert first.get("opendir", 0) <= 1 and "releasedir" not in first
    assert tree_of(root) == walk
    assert sorted(os.listdir(root / "train")) == sorted(os.listdir(root / "train"))
    assert status_of_requests(cli, root) == first


def status_of_requests(cli: Cli, root: Path) -> dict:
    """The daemon's request counters, once two records a second apart agree."""
    import time

    def requests() -> dict:
        listed = json.loads(cli.ok("status", "--json").out)
        return next(m for m in listed if m["mountpoint"] == str(root))["stats"]["requests"]

    latest, settle_by = requests(), time.monotonic() + 15.0
    while time.monotonic() < settle_by:
        time.sleep(1.1)
        previous, latest = latest, requests()
        if latest == previous and latest:
            break
    return latest


def test_a_mount_that_cannot_start_fails_the_command_with_the_reason(
    cli: Cli, dataset: Container, mounts: Mounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(dataset.env_var)  # the datastore's credential is not there
    root = mounts.mountpoint()
    result = cli.process("mount", "ds:1", str(root), *OPTIONS)
    assert result.code == 2  # a configuration problem, like any bad input
    assert f"${dataset.env_var}" in result.err and result.err.count("\n") == 1, result.err
    assert str(root) not in mounted_paths()
    assert not processes_mentioning(root)


def test_the_daemon_keeps_no_file_of_the_command_that_started_it(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    """A caller that waits for the end of a pipe it gave `amlfs mount` (a shell's command
    substitution, a CI step) sees it once the command exits, not when the mount ends."""
    root = mounts.mountpoint()
    read_end, write_end = os.pipe()
    try:
        # The pipe is its output and one more file it is given.
        proc = subprocess.run(
            [sys.executable, "-m", "amlfs", "--home", str(cli.home), "mount", "ds:1", str(root),
             *OPTIONS], stdout=write_end, stderr=subprocess.PIPE, pass_fds=(write_end,),
            timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    said, ended, deadline = b"", False, time.monotonic() + 10
    try:
        while not ended and time.monotonic() < deadline:
            if select.select([read_end], [], [], 0.5)[0]:
                chunk = os.read(read_end, 4096)
                ended = not chunk  # the end: no process holds the pipe any more
                said += chunk
        assert proc.returncode == 0, proc.stderr
        mounts.pids[root] = int(re.search(rb"\(pid (\d+)\)", said).group(1))
        assert ended, "the pipe stays open after the command exited"
        pipe = os.readlink(f"/proc/self/fd/{read_end}")
        held = [os.readlink(fd) for fd in Path(f"/proc/{mounts.pids[root]}/fd").iterdir()]
    finally:
        os.close(read_end)
    assert pipe not in held
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]
