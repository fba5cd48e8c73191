"""The output mount's semantics without a kernel: staged copies, the journal, settling.
(Local-folder datastore; the same code runs against the emulator in test_output_mount.)"""

from __future__ import annotations

from pathlib import Path

import trio

from amlfs.registry.models import Datastore
from amlfs.storage import Store
from amlfs.transfer.journal import Journal, Upload
from amlfs.transfer.outputs import settle
from amlfs.transfer.staged import ROOT_INODE, OutputFiles


def local_store(tmp_path: Path) -> Store:
    (tmp_path / "store").mkdir()
    return Store(Datastore("loc", f"file://{tmp_path}/store", "none"))


async def test_a_closed_copy_is_never_written_again(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    store = local_store(tmp_path)
    session = journal.open_session("loc", "out", "/mnt", 1, str(staging), None)
    async with trio.open_nursery() as nursery:
        files = OutputFiles(journal, session, staging, store, "out", nursery)
        files.limiter.total_tokens = 1
        node = files.create(ROOT_INODE, "log.txt", 0o644)
        await files.open(node, write=True, truncate=False)
        files.write(node, 0, b"first close")
        await files.commit(node)
        [journaled] = journal.uploads(session)
        files.write(node, 0, b"FIRST")  # the same handle, after its flush
        assert node.staged != journaled.staged  # a new copy took the write
        assert (staging / journaled.staged).read_bytes() == b"first close"
        await files.commit(node)
        files.release(node, write=True)
        await files.settle_all(patience_s=5)
        files.close()
        nursery.cancel_scope.cancel()
    assert (tmp_path / "store" / "out" / "log.txt").read_bytes() == b"FIRST close"
    assert list(staging.iterdir()) == []  # every copy deleted once stored


def test_a_staged_copy_lost_after_its_upload_settles_from_storage(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / "done.bin").write_bytes(b"12345")
    row = Upload(1, 7, "done.bin", "7.1", 5, None, None, None, False, None)
    settled = settle(store, "out", tmp_path, row)
    assert settled.settled and settled.etag


def test_a_renamed_stored_file_is_copied_and_the_old_name_deleted(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    (tmp_path / "store" / "out").mkdir()
    (tmp_path / "store" / "out" / "old.txt").write_bytes(b"moved")
    row = Upload(1, 7, "new.txt", None, 5, None, "old.txt", "e", False, None)
    settled = settle(store, "out", tmp_path, row)
    assert settled.settled
    assert sorted(p.name for p in (tmp_path / "store" / "out").iterdir()) == ["new.txt"]
