"""Output mounts never lose a closed file while saying all is stored: a file renamed over
or re-created while its predecessor still uploads is the one storage keeps (and the one a
registered version pins), a settle that fails in any way leaves the mount serving with
the file pending, and a writer that fsyncs as it goes never makes the mount copy its file.
Through the kernel, against the emulator."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
from pathlib import Path

import pytest

from amlfs.errors import StorageError
from amlfs.registry.models import Datastore
from amlfs.storage import Store
from amlfs.transfer.journal import Upload
from amlfs.transfer.outputs import settle
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts
from tests.test_output_mount import blob, sha, stored, wait_for

__all__ = ["blob"]  # the fixture, shared with test_output_mount

LARGE = 96 * 2**20  # long enough for the emulator that the next steps run while it uploads


def status_of(cli: Cli, root: Path) -> dict:
    listed = json.loads(cli.ok("status", "--json").out)
    return next(m for m in listed if m["mountpoint"] == str(root))["stats"]


def test_a_checkpoint_renamed_over_one_still_uploading_is_what_storage_keeps(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    """The usual way to save a checkpoint (write a temporary file, rename it over the old
    one) while the old one is still on its way to storage."""
    root = mounts.output("blob:ckpt", "--register", "model")
    (root / "ckpt").write_bytes(random.Random(1).randbytes(LARGE))
    assert status_of(cli, root)["uploaded"] == 0, "the first upload must still be running"
    (root / "tmp").write_bytes(b"newer checkpoint")
    os.rename(root / "tmp", root / "ckpt")
    assert (root / "ckpt").read_bytes() == b"newer checkpoint"
    mounts.unmount(root)

    assert stored(blob.fs, f"{blob.name}/ckpt") == {"ckpt": sha(b"newer checkpoint")}
    listing = json.loads(cli.ok("dataset", "show", "model:1", "--files", "--json").out)
    assert [(f["path"], f["size"]) for f in listing["files"]] == [("ckpt", 16)]
    cli.ok("dataset", "verify", "model:1")  # the version pins the blob that is there


def test_a_file_removed_and_written_again_while_its_upload_runs_is_stored_new(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    root = mounts.output("blob:again", "--register", "again")
    (root / "out.bin").write_bytes(random.Random(2).randbytes(LARGE))
    assert status_of(cli, root)["uploaded"] == 0, "the first upload must still be running"
    (root / "out.bin").unlink()
    (root / "out.bin").write_bytes(b"written again")
    mounts.unmount(root)

    assert stored(blob.fs, f"{blob.name}/again") == {"out.bin": sha(b"written again")}
    cli.ok("dataset", "verify", "again:1")


def test_a_settle_that_fails_in_any_way_leaves_the_mount_serving_and_says_why(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    """A stored file deleted outside amlfs and then renamed in the mount cannot be moved
    in storage: that file stays pending with its cause logged, and the mount goes on."""
    root = mounts.output("blob:gone", "--patience", "2")
    (root / "a.txt").write_bytes(b"stored, then deleted behind amlfs's back")
    wait_for(lambda: "a.txt" in stored(blob.fs, f"{blob.name}/gone"), "the first upload")
    blob.fs.rm_file(f"{blob.name}/gone/a.txt")
    os.rename(root / "a.txt", root / "b.txt")
    wait_for(lambda: status_of(cli, root)["failing"] == 1, "the failing move is reported")

    (root / "later.txt").write_bytes(b"the mount still serves")  # not the bare folder
    assert str(root) in Path("/proc/self/mountinfo").read_text()
    wait_for(lambda: "later.txt" in stored(blob.fs, f"{blob.name}/gone"), "a later upload")
    result = cli.process("unmount", str(root))
    assert result.code == 1
    assert "1 file(s) of blob:gone not uploaded (b.txt)" in result.err
    log = (cli.home / "logs" / f"output-{root.name}.log").read_text()
    assert "b.txt: not stored" in log and "Traceback" in log and "SourceChanged" in log


def test_appending_after_an_fsync_never_copies_the_staged_file(
    blob: Container, mounts: Mounts, tmp_path: Path
) -> None:
    """A checkpoint or log written with an fsync every few MiB: each fsync is journaled,
    and the writes after it go on in the same staged file."""
    staging = tmp_path / "staging"
    root = mounts.output("blob:log", "--staging-dir", str(staging))
    chunks = [random.Random(n).randbytes(4 * 2**20) for n in range(6)]
    with open(root / "train.log", "wb") as f:
        for written, chunk in enumerate(chunks, start=1):
            f.write(chunk)
            f.flush()  # reaches the mount: after the first fsync, a write to a closed copy
            staged = [p for p in staging.rglob("[!.]*") if p.is_file()]  # copies, not locks
            assert [p.stat().st_size for p in staged] == [written * len(chunk)]
            os.fsync(f.fileno())
    mounts.unmount(root)
    assert stored(blob.fs, f"{blob.name}/log") == {"train.log": sha(b"".join(chunks))}


def test_after_a_crash_a_stored_blob_counts_as_the_upload_only_with_the_same_md5(
    container: Container, tmp_path: Path
) -> None:
    """The staged copy is gone and the row saying it was stored was lost: a blob of the
    same size is not enough, its Content-MD5 must be the closed file's."""
    store = Store(Datastore("blob", container.url, "connection-string-env", CONNECTION_ENV))
    container.put({"out/model.bin": b"the closed bytes"})
    md5 = hashlib.md5(b"the closed bytes").digest()
    row = Upload(1, 7, "model.bin", "7.1", 16, md5, None, None, False, None)
    assert settle(store, "out", tmp_path, row, {}).settled
    container.put({"out/model.bin": b"other bytes, same size"[:16]})
    with pytest.raises(StorageError, match="not the closed file"):
        settle(store, "out", tmp_path, row, {})


def test_a_file_whose_close_failed_for_want_of_descriptors_is_still_stored(
    cli: Cli, blob: Container, mounts: Mounts
) -> None:
    """A mount daemon out of file descriptors fails the close (its journal cannot open),
    but the bytes are staged: they are stored once descriptors are back, or journaled and
    named by the unmount for `output resume`; never dropped while all is said stored."""
    root = mounts.output("blob:fds")
    pid = mounts.pids[root]
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    written: dict[str, bytes] = {}
    handles = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, hard))
        for i in range(120):  # more than the daemon may hold: opens start failing
            try:
                handles.append((f"f{i:03}", os.open(root / f"f{i:03}", os.O_WRONLY | os.O_CREAT)))
            except OSError:
                break
        assert 20 < len(handles) < 120, "the daemon's limit was not reached"
        for name, fd in handles:
            data = f"{name} {random.random()}".encode()
            with contextlib.suppress(OSError):
                if os.write(fd, data) == len(data):
                    written[name] = data
        for _name, fd in handles:
            with contextlib.suppress(OSError):  # EMFILE from the daemon's commit
                os.close(fd)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert written
    unmounted = cli("unmount", str(root))
    if unmounted.code != 0:  # a file the daemon could not finish is named, and resumable
        assert "not uploaded" in unmounted.err, unmounted.err
        cli.ok("output", "resume", "blob:fds")
    kept = stored(blob.fs, f"{blob.name}/fds")
    assert {name: kept.get(name) for name in written} == {
        name: sha(data) for name, data in written.items()
    }
