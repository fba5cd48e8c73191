"""Output mounts through the kernel, against the emulator: what a job writes ends up in
storage byte for byte, renames and removals included, and nothing closed is ever lost:
not to a killed daemon, not to storage going away, not to a full staging disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import adlfs
import pytest

from amlfs.mounts import mounted_paths
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.azurite import Azurite
from tests.support.mounts import Mounts, processes_mentioning

BIG = random.Random(9).randbytes(3 * 2**20 + 17)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(fs: adlfs.AzureBlobFileSystem, prefix: str) -> dict[str, str]:
    """SHA-256 of every blob under PREFIX, by path relative to it."""
    fs.invalidate_cache()
    found = fs.find(prefix) if fs.exists(prefix) else []
    return {name[len(prefix) + 1 :]: sha(fs.cat_file(name)) for name in found}


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def blob(cli: Cli, container: Container) -> Container:
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    return container


def test_what_a_job_writes_is_stored_exactly_renames_and_removals_included(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    root = mounts.output("blob:runs/1", "--register", "results")
    (root / "model" / "ckpt").mkdir(parents=True)
    (root / "model" / "ckpt" / "weights.bin").write_bytes(BIG)
    (root / "metrics.csv").write_bytes(b"epoch,loss\n1,0.9\n")
    with open(root / "tmp-name", "wb") as f:  # renamed while still open
        f.write(b"renamed before close")
        os.rename(root / "tmp-name", root / "model" / "final.txt")
    (root / "draft.txt").write_bytes(b"renamed after close")
    (root / "scratch.bin").write_bytes(b"removed again")
    # Once stored (and their staged copies freed), these take the paths through storage:
    # a server-side copy for the rename, a delete for the unlink, a fetch for the append.
    prefix = f"{blob.name}/runs/1"
    wait_for(lambda: {"draft.txt", "scratch.bin", "metrics.csv"} <= set(stored(blob.fs, prefix)),
             "the first uploads")  # fmt: skip
    os.rename(root / "draft.txt", root / "notes.txt")
    (root / "scratch.bin").unlink()
    (root / "overwritten.txt").write_bytes(b"first version, longer")
    (root / "overwritten.txt").write_bytes(b"second")
    with open(root / "metrics.csv", "ab") as f:  # reopened and appended to
        f.write(b"2,0.5\n")

    # What was written can be listed, stat'ed and read back.
    assert sorted(os.listdir(root)) == ["metrics.csv", "model", "notes.txt", "overwritten.txt"]
    assert (root / "model" / "ckpt" / "weights.bin").stat().st_size == len(BIG)
    assert (root / "metrics.csv").read_bytes() == b"epoch,loss\n1,0.9\n2,0.5\n"
    assert (root / "model" / "ckpt" / "weights.bin").read_bytes() == BIG

    mounts.unmount(root)
    expected = {
        "model/ckpt/weights.bin": sha(BIG),
        "model/final.txt": sha(b"renamed before close"),
        "notes.txt": sha(b"renamed after close"),
        "overwritten.txt": sha(b"second"),
        "metrics.csv": sha(b"epoch,loss\n1,0.9\n2,0.5\n"),
    }
    assert stored(blob.fs, prefix) == expected

    # --register: a version of exactly those files, with their stored etags.
    listing = json.loads(cli.ok("dataset", "show", "results:1", "--files", "--json").out)
    assert {f["path"] for f in listing["files"]} == set(expected)
    cli.ok("dataset", "verify", "results:1")
    assert not list((cli.home / "staging").iterdir())  # staged copies cleaned up


def test_two_writers_of_one_file_write_into_one_copy_uploaded_after_both_close(
    blob: Container, mounts: Mounts
) -> None:
    root = mounts.output("blob:two")
    first = os.open(root / "shared.bin", os.O_CREAT | os.O_WRONLY)
    second = os.open(root / "shared.bin", os.O_WRONLY)
    os.pwrite(first, b"A" * 10, 0)
    os.pwrite(second, b"B" * 5, 10)
    os.close(first)
    os.pwrite(second, b"C" * 5, 15)  # after the other writer closed
    os.close(second)
    mounts.unmount(root)
    assert stored(blob.fs, f"{blob.name}/two") == {
        "shared.bin": sha(b"A" * 10 + b"B" * 5 + b"C" * 5)
    }


def test_a_file_closed_before_the_daemon_is_killed_is_uploaded_by_resume(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    root = mounts.output("blob:killed")
    big = random.Random(3).randbytes(48 * 2**20)  # takes the emulator a while to receive
    (root / "small.txt").write_bytes(b"closed first")
    with open(root / "big.bin", "wb") as f:
        f.write(big)
    os.kill(mounts.pids[root], signal.SIGKILL)  # right after close() returned
    assert "big.bin" not in stored(blob.fs, f"{blob.name}/killed"), "uploaded before the kill"
    stale = cli("unmount", str(root))  # the stale mount of the dead daemon: unmounted...
    assert stale.code == 1  # ...and what it had not uploaded yet is said
    assert "not uploaded (big.bin): the mount ended before they were uploaded" in stale.err

    resumed = cli.ok("output", "resume", "blob:killed")
    assert "blob:killed:" in resumed.out
    assert stored(blob.fs, f"{blob.name}/killed") == {"small.txt": sha(b"closed first"),
                                                      "big.bin": sha(big)}  # fmt: skip
    assert cli.ok("output", "resume").out.strip() == "nothing to resume"


def test_the_next_mount_of_the_same_destination_finishes_a_dead_daemons_uploads(
    blob: Container, mounts: Mounts
) -> None:
    root = mounts.output("blob:again")
    data = random.Random(4).randbytes(32 * 2**20)
    (root / "left.bin").write_bytes(data)
    os.kill(mounts.pids[root], signal.SIGKILL)
    subprocess.run(["fusermount3", "-u", "-z", str(root)], check=True)
    again = mounts.output("blob:again")
    (again / "new.txt").write_bytes(b"second mount")
    mounts.unmount(again)
    assert stored(blob.fs, f"{blob.name}/again") == {"left.bin": sha(data),
                                                     "new.txt": sha(b"second mount")}  # fmt: skip


def test_a_full_staging_disk_is_enospc_to_the_writer_and_nothing_truncated_is_stored(
    cli: Cli, blob: Container, mounts: Mounts, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(staging)],
                   check=True)  # fmt: skip
    try:
        root = mounts.output("blob:full", "--staging-dir", str(staging))
        with pytest.raises(OSError) as raised, open(root / "too-big.bin", "wb") as f:
            f.write(os.urandom(2 * 2**20))
            f.flush()
        assert raised.value.errno == errno.ENOSPC
        (root / "too-big.bin").unlink()  # frees the staging disk
        (root / "fits.txt").write_bytes(b"small files still work")
        mounts.unmount(root)
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=False)
    assert stored(blob.fs, f"{blob.name}/full") == {"fits.txt": sha(b"small files still work")}


@pytest.fixture
def own_fs(cli: Cli, own_emulator: Azurite) -> adlfs.AzureBlobFileSystem:
    fs = adlfs.AzureBlobFileSystem(
        connection_string=own_emulator.connection_string, skip_instance_cache=True
    )
    fs.mkdir("outputs")
    cli.ok("datastore", "add", "own", "az://outputs", "--connection-string-env", CONNECTION_ENV)
    return fs


def test_storage_down_during_uploads_keeps_files_pending_until_it_returns(
    cli: Cli, own_emulator: Azurite, own_fs: adlfs.AzureBlobFileSystem, mounts: Mounts
) -> None:
    root = mounts.output("own:job")
    own_emulator.stop()
    (root / "result.txt").write_bytes(b"written while storage is down")  # close succeeds

    def status() -> dict:
        listed = json.loads(cli.ok("status", "--json").out)
        return next(m for m in listed if m["mountpoint"] == str(root))["stats"]

    wait_for(lambda: status().get("failing") == 1, "amlfs status reports the failing upload")
    assert status()["pending_uploads"] == 1
    assert status()["storage"]["state"] == "unreachable"
    assert "storage unreachable since" in cli.ok("status").out
    own_emulator.start()
    wait_for(lambda: status()["storage"] == {"state": "reachable"}, "the upload succeeds")
    mounts.unmount(root)  # waits for the upload, which now succeeds
    assert stored(own_fs, "outputs/job") == {"result.txt": sha(b"written while storage is down")}


def test_unmount_with_storage_down_fails_and_resume_uploads_and_registers_later(
    cli: Cli, own_emulator: Azurite, own_fs: adlfs.AzureBlobFileSystem, mounts: Mounts
) -> None:
    root = mounts.output("own:late", "--register", "late", "--patience", "2")
    (root / "a.txt").write_bytes(b"a")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_bytes(b"b")
    wait_for(lambda: len(stored(own_fs, "outputs/late")) == 2, "the first uploads")
    own_emulator.stop()
    (root / "c.txt").write_bytes(b"c")
    result = cli.process("unmount", str(root))
    assert result.code == 1
    assert "amlfs: waiting for 1 upload(s)" in result.err  # progress while it retried
    assert "1 file(s) of own:late not uploaded (c.txt)" in result.err
    assert "amlfs output resume" in result.err
    assert cli("dataset", "show", "late").code == 2  # not registered: not all uploaded

    own_emulator.start()
    resumed = cli.ok("output", "resume")
    assert "registered late:1" in resumed.out
    listing = json.loads(cli.ok("dataset", "show", "late:1", "--files", "--json").out)
    assert {f["path"] for f in listing["files"]} == {"a.txt", "sub/b.txt", "c.txt"}
    assert stored(own_fs, "outputs/late")["c.txt"] == sha(b"c")


# -- Liveness and exclusivity: a daemon or session is alive while it holds its lock ------


def pretend_pid_reused(home: Path, dead: int, pid: int) -> None:
    """Make the journal and the status records of the dead daemon DEAD name PID instead."""
    with contextlib.closing(sqlite3.connect(home / "transfers.db")) as db, db:
        db.execute("UPDATE sessions SET pid = ? WHERE pid = ?", (pid, dead))
    for path in (home / "run" / "mounts").glob("*.json"):
        record = json.loads(path.read_text())
        if record["pid"] == dead:
            path.write_text(json.dumps({**record, "pid": pid}))


def killed_with_a_pending_upload(mounts: Mounts, emulator: Azurite, location: str,
                                 name: str, data: bytes) -> Path:  # fmt: skip
    """An output mount whose daemon was SIGKILLed while storage was down: NAME is
    journaled and not uploaded. Storage is back on return."""
    root = mounts.output(location)
    emulator.stop()
    (root / name).write_bytes(data)
    os.kill(mounts.pids[root], signal.SIGKILL)
    assert mounts.wait_gone(root)
    emulator.start()
    return root


@pytest.mark.parametrize("finisher", ["output resume", "the next mount"])
def test_a_dead_daemons_pid_reused_by_a_live_amlfs_process_leaves_its_session_dead(
    cli: Cli, own_emulator: Azurite, own_fs: adlfs.AzureBlobFileSystem, mounts: Mounts,
    impostor: int, finisher: str,
) -> None:  # fmt: skip
    root = killed_with_a_pending_upload(mounts, own_emulator, "own:reused", "left.txt", b"left")
    pretend_pid_reused(cli.home, mounts.pids[root], impostor)

    [shown] = [m for m in json.loads(cli.ok("status", "--json").out)
               if m["mountpoint"] == str(root)]  # fmt: skip
    assert shown["pid"] == impostor and shown["alive"] is False
    assert shown["state"] == "stale: daemon gone, run amlfs unmount"
    if finisher == "output resume":
        assert "own:reused: 1 file(s) settled" in cli.ok("output", "resume").out
    else:
        mounts.output("own:reused")  # finishes the dead session's uploads in the background
        wait_for(lambda: "left.txt" in stored(own_fs, "outputs/reused"), "the dead upload")
    assert stored(own_fs, "outputs/reused") == {"left.txt": sha(b"left")}


def test_unmount_reports_the_live_daemon_not_a_stale_record_of_the_same_mountpoint(
    cli: Cli, own_emulator: Azurite, own_fs: adlfs.AzureBlobFileSystem, mounts: Mounts
) -> None:
    root = mounts.output("own:first")
    [record] = (cli.home / "run" / "mounts").glob("*.json")
    left_behind = record.read_text()
    os.kill(mounts.pids[root], signal.SIGTERM)  # unmounts, uploads, ends
    assert mounts.wait_gone(root)
    # The record an ended daemon could leave, named to be read before any other.
    (cli.home / "run" / "mounts" / "0.json").write_text(left_behind)

    mounts.output("own:second", "--patience", "2", mountpoint=root)
    own_emulator.stop()
    (root / "late.txt").write_bytes(b"cannot be uploaded")
    result = cli.process("unmount", str(root))
    assert result.code == 1, result.out
    assert "1 file(s) of own:second not uploaded (late.txt)" in result.err
    assert not list((cli.home / "run" / "mounts").glob("*.json"))  # the stale one too


def test_a_second_output_mount_of_a_destination_is_refused_naming_the_first(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    first = mounts.output("blob:dup")
    second = mounts.mountpoint()
    refused = cli.process("output", "mount", "blob:/dup/", str(second))
    if started := re.search(r"\(pid (\d+)\)", refused.out):  # the fixture ends it, if so
        mounts.pids[second] = int(started.group(1))
    assert refused.code == 2, refused.out
    assert refused.err.count("\n") == 1, refused.err
    assert f"blob:dup is already mounted for output at {first} (pid {mounts.pids[first]})" in (
        refused.err
    )
    assert str(second) not in mounted_paths() and not processes_mentioning(second)

    mounts.unmount(first)  # the destination is free again
    (mounts.output("blob:dup", mountpoint=second) / "after.txt").write_bytes(b"second mount")
    mounts.unmount(second)
    assert stored(blob.fs, f"{blob.name}/dup") == {"after.txt": sha(b"second mount")}


def test_a_session_claimed_by_one_settler_is_left_alone_by_resume_and_by_a_new_mount(
    cli: Cli, own_emulator: Azurite, own_fs: adlfs.AzureBlobFileSystem, mounts: Mounts
) -> None:
    from amlfs.transfer.journal import Journal
    from amlfs.transfer.sessions import claim_session

    killed_with_a_pending_upload(mounts, own_emulator, "own:one", "once.txt", b"once")
    journal = Journal(cli.home)
    try:
        [session] = journal.unfinished()
        with claim_session(journal, session) as claimed:  # this test is the first settler
            assert claimed is not None
            result = cli.process("output", "resume")
            assert result.code == 1
            assert result.out.splitlines()[0] == (
                f"skipped: session {session.id} of own:one is being settled by another amlfs"
                f" process (pid {os.getpid()})"
            )
            again = mounts.output("own:one")
            log = cli.home / "logs" / f"output-{again.name}.log"
            wait_for(lambda: f"skipped: session {session.id}" in log.read_text(),
                     "the new mount's clean-up skips the claimed session")  # fmt: skip
            assert stored(own_fs, "outputs/one") == {}
        assert "own:one: 1 file(s) settled" in cli.ok("output", "resume").out
    finally:
        journal.close()
    mounts.unmount(again)
    assert stored(own_fs, "outputs/one") == {"once.txt": sha(b"once")}
