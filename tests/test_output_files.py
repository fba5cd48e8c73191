"""The output mount's semantics without a kernel: staged copies, the journal, settling.
(Local-folder datastore; the same code runs against the emulator in test_output_mount.)"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from amlfs.errors import NotAsStored, StorageError
from amlfs.registry.models import Datastore
from amlfs.storage import Store
from amlfs.transfer import staged
from amlfs.transfer.journal import Journal, Upload
from amlfs.transfer.outputs import settle
from amlfs.transfer.staged import ROOT_INODE, OutputFiles


def local_store(tmp_path: Path) -> Store:
    (tmp_path / "store").mkdir()
    return Store(Datastore("loc", f"file://{tmp_path}/store", "none"))


def new_session(tmp_path: Path) -> tuple[Journal, Path, int]:
    """A journal in TMP_PATH with one output mount's session, and its staging folder."""
    journal = Journal(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    return journal, staging, journal.open_session("loc", "out", "/mnt", 1, str(staging), None)


async def test_a_closed_copy_is_never_written_again(tmp_path: Path) -> None:
    journal, staging, session = new_session(tmp_path)
    store = local_store(tmp_path)
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session, staging, store, "out", nursery)
        files.limiter.total_tokens = 1
        node = files.create(ROOT_INODE, "log.txt", 0o644)
        await files.open(node, write=True, truncate=False)
        await files.write(node, 0, b"first close")
        await files.commit(node)
        [journaled] = journal.uploads(session)
        await files.write(node, 0, b"FIRST")  # the same handle, after its flush
        assert node.staged != journaled.staged  # a new copy took the write
        assert (staging / journaled.staged).read_bytes() == b"first close"
        await files.commit(node)
        files.release(node, write=True)
        await files.settle_all(patience_s=5)
        files.close()
        nursery.cancel_scope.cancel()
    assert (tmp_path / "store" / "out" / "log.txt").read_bytes() == b"FIRST close"
    assert list(staging.iterdir()) == []  # every copy deleted once stored


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


async def test_appending_after_an_fsync_writes_on_in_place_and_stores_each_close(
    tmp_path: Path,
) -> None:
    """A writer that fsyncs as it goes (checkpoints, logs) never pays for a copy: appends
    go on in the same staged file, and each journaled close names its own prefix of it."""
    journal, staging, session = new_session(tmp_path)
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session, staging, local_store(tmp_path), "out", nursery)
        node = files.create(ROOT_INODE, "train.log", 0o644)
        await files.open(node, write=True, truncate=False)
        await files.write(node, 0, b"epoch 1\n")
        await files.commit(node)
        first = node.staged
        await files.write(node, 8, b"epoch 2\n")
        assert node.staged == first and sorted(os.listdir(staging)) == [first]
        [row] = journal.uploads(session)
        assert (row.staged, row.size, row.md5) == (first, 8, md5(b"epoch 1\n"))
        await files.commit(node)
        [row] = journal.uploads(session)
        assert (row.staged, row.size, row.md5) == (first, 16, md5(b"epoch 1\nepoch 2\n"))
        await files.write(node, 0, b"EPOCH")  # below what a close saw: a copy takes it
        assert node.staged != first
        assert (staging / first).read_bytes() == b"epoch 1\nepoch 2\n"
        await files.truncate(node, 3)
        await files.commit(node)
        files.release(node, write=True)
        await files.settle_all(patience_s=5)
        files.close()
        nursery.cancel_scope.cancel()
    assert (tmp_path / "store" / "out" / "train.log").read_bytes() == b"EPO"
    assert list(staging.iterdir()) == []


def test_a_staged_copy_lost_after_its_upload_settles_only_from_the_same_bytes(
    tmp_path: Path,
) -> None:
    """After a crash lost the row saying a file was stored (its staged copy is gone), the
    stored file counts as the upload only if it holds exactly the journaled bytes: same
    size is not enough."""
    store = local_store(tmp_path)
    (tmp_path / "store" / "out").mkdir()
    stored = tmp_path / "store" / "out" / "done.bin"
    stored.write_bytes(b"12345")
    row = Upload(1, 7, "done.bin", "7.1", 5, md5(b"12345"), None, None, False, None)
    settled = settle(store, "out", tmp_path, row, {})
    assert settled.settled and settled.etag
    stored.write_bytes(b"54321")  # another file of the same size: not ours
    with pytest.raises(StorageError, match="not the closed file"):
        settle(store, "out", tmp_path, row, {})
    without_md5 = Upload(1, 7, "done.bin", "7.1", 5, None, None, None, False, None)
    with pytest.raises(StorageError, match="not the closed file"):
        settle(store, "out", tmp_path, without_md5, {})


def test_a_renamed_stored_file_is_copied_and_the_old_name_deleted(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / "old.txt").write_bytes(b"moved")
    etag = store.stat("out/old.txt").etag
    row = Upload(1, 7, "new.txt", None, 5, None, "old.txt", etag, False, None)
    stored_at = {"old.txt": etag}
    settled = settle(store, "out", tmp_path, row, stored_at)
    assert settled.settled
    assert sorted(p.name for p in (tmp_path / "store" / "out").iterdir()) == ["new.txt"]
    assert stored_at == {"new.txt": settled.etag}


def test_a_removed_file_deletes_only_what_it_stored_itself(tmp_path: Path) -> None:
    """The late delete of a replaced file finds a newer file at its name and leaves it."""
    store = local_store(tmp_path)
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / "ckpt").write_bytes(b"old")
    old_etag = store.stat("out/ckpt").etag
    (tmp_path / "store" / "out" / "ckpt").write_bytes(b"newer")
    removed = Upload(1, 7, "ckpt", None, 3, None, "ckpt", old_etag, True, None)
    assert settle(store, "out", tmp_path, removed, {}).settled
    assert (tmp_path / "store" / "out" / "ckpt").read_bytes() == b"newer"


def test_an_overwrite_replaces_only_what_this_mount_stored_there(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    staged = tmp_path / "7.2"
    staged.write_bytes(b"second close")
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / "f").write_bytes(b"first close")
    ours = store.stat("out/f").etag
    (tmp_path / "store" / "out" / "f").write_bytes(b"someone else's")
    row = Upload(1, 7, "f", "7.2", 12, md5(b"second close"), "f", ours, False, None)
    with pytest.raises(NotAsStored):
        settle(store, "out", tmp_path, row, {"f": ours})
    assert (tmp_path / "store" / "out" / "f").read_bytes() == b"someone else's"


def test_a_journaled_close_is_synced_whatever_other_threads_record_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() returns once its row is committed with a sync. Rows of progress that may be
    lost (after an upload) are committed without one, from other threads at the same
    time: never may a close's commit run under their setting."""
    statements: list[tuple[int, str]] = []  # (connection, SQL) in the order SQLite ran them
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db_id = id(db)
        db.set_trace_callback(lambda sql: statements.append((db_id, sql)))
        return db

    monkeypatch.setattr(sqlite3, "connect", traced)
    journal = Journal(tmp_path)
    session = journal.open_session("loc", "out", "/mnt", 1, str(tmp_path), None)

    def record(kind: str, durable: bool) -> None:
        for n in range(300):
            row = Upload(session, n + (0 if durable else 1000), f"{kind}-{n}", "1.1", 1, None,
                         None, None, False, None)  # fmt: skip
            journal.record(row, durable=durable)

    workers = [threading.Thread(target=record, args=(kind, kind == "closed"))
               for kind in ("closed", "progress")]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    journal.close()

    setting: dict[int, str] = {}
    closing: set[int] = set()
    checked = 0
    for db_id, sql in statements:
        if match := re.match(r"PRAGMA synchronous=(\w+)", sql):
            setting[db_id] = match.group(1)
        elif sql.startswith("INSERT OR REPLACE INTO uploads") and "'closed-" in sql:
            closing.add(db_id)
        elif sql.startswith("COMMIT") and db_id in closing:
            closing.discard(db_id)
            assert setting[db_id] == "FULL", "a close was committed without a sync"
            checked += 1
    assert checked == 300


def test_a_name_of_255_bytes_is_stored_in_a_local_folder(tmp_path: Path) -> None:
    """The temporary name a local folder receives the bytes under is short and of its
    own, whatever the length of the file's name, and never another file's."""
    store = local_store(tmp_path)
    name = "n" * 255
    (tmp_path / "7.1").write_bytes(b"long name")
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / f".{name[:200]}.amlfs-part").write_bytes(b"a user's file")
    row = Upload(1, 7, name, "7.1", 9, md5(b"long name"), None, None, False, None)
    assert settle(store, "out", tmp_path, row, {}).settled
    assert (tmp_path / "store" / "out" / name).read_bytes() == b"long name"
    assert sorted(p.name for p in (tmp_path / "store" / "out").iterdir()) == sorted(
        [name, f".{name[:200]}.amlfs-part"]
    )


async def test_a_new_copys_folder_entry_is_synced_before_its_close_is_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journaled staged copy that a power cut could unname is a lost file: the staging
    folder is synced after the copy is made and before the close's row is written."""
    events: list[str] = []
    sync_folder, record = staged.fsync_folder, Journal.record

    def folder_synced(folder: Path) -> None:
        sync_folder(folder)
        events.append(f"synced {folder.name}")

    def recorded(journal: Journal, row: Upload, **options: bool) -> None:
        events.append(f"journaled {row.staged}")
        record(journal, row, **options)

    monkeypatch.setattr(staged, "fsync_folder", folder_synced)
    monkeypatch.setattr(Journal, "record", recorded)
    journal, staging, session = new_session(tmp_path)
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session, staging, local_store(tmp_path), "out", nursery)
        for name in ("a", "b"):
            node = files.create(ROOT_INODE, name, 0o644)
            events.append(f"created {node.staged}")
            await files.write(node, 0, b"bytes")
            await files.commit(node)
        nursery.cancel_scope.cancel()
    for copy in ("2.1", "3.1"):
        created, journaled = events.index(f"created {copy}"), events.index(f"journaled {copy}")
        assert "synced staging" in events[created:journaled], events


def test_a_file_stored_in_a_local_folder_is_on_disk_name_included_when_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local folder as a datastore keeps what an upload returned, also after a power
    cut: the bytes are synced before the rename, and the folder after it."""
    events: list[str] = []
    fsync, replace_name = os.fsync, os.replace

    def synced(fd: int) -> None:
        fsync(fd)
        events.append(f"synced {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")

    def renamed(source: str, target: str) -> None:
        replace_name(source, target)
        events.append(f"renamed to {Path(target).name}")

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    (tmp_path / "staged").write_bytes(b"model")
    local_store(tmp_path).upload(tmp_path / "staged", "out/model.bin")
    assert [e.split(".amlfs-")[0] for e in events] == [
        "synced ",
        "renamed to model.bin",
        "synced out",
    ]
