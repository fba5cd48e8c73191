"""Download and upload against the emulator: verified round trips, resumed after an
interruption, a changed source named, someone else's files never clobbered."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from amlfs.cli import progress as progress_module
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS
from tests.support.waiting import killed_when


def digests_of(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ROOT, by '/'-separated relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def expected(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


# --- download ------------------------------------------------------------------------


def test_download_places_every_file_verified_and_a_rerun_fetches_nothing(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    first = cli.ok("download", "ds:1", str(dest))
    assert digests_of(dest) == expected(FILES)
    assert f"{len(FILES)} file(s) fetched" in first.out
    again = cli.ok("download", "ds", str(dest))
    assert "0 file(s) fetched" in again.out
    assert f"{len(FILES)} already in place" in again.out


def test_an_interrupted_download_resumes_where_it_stopped(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    many = {f"part-{i:03}.bin": random.Random(i).randbytes(256 * 1024) for i in range(160)}
    container.put(many)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "many", "--datastore", "blob", "--path", ".")
    dest = tmp_path / "dest"
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "download", "many", str(dest),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    killed_when(
        proc, lambda: dest.is_dir() and len([p for p in dest.iterdir() if p.suffix == ".bin"]) >= 5,
        "with 5 files placed",
    )  # fmt: skip
    placed_before = {p.name for p in dest.iterdir() if p.suffix == ".bin"}
    assert 5 <= len(placed_before) < len(many)

    resumed = cli.ok("download", "many", str(dest))
    assert f"{len(placed_before)} already in place" in resumed.out
    assert digests_of(dest) == expected(many)  # no partial file left beside them either


def test_a_source_changed_since_registration_fails_that_file_by_name(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    dataset.put({"train/b.bin": b"rewritten after version 1"})
    dest = tmp_path / "dest"
    result = cli("download", "ds:1", str(dest))
    assert result.code == 1
    assert "train/b.bin: changed at the source since the version was registered" in result.err
    assert "(etag mismatch)" in result.err
    assert "amlfs: error: 1 of 6 file(s) of ds:1 not downloaded: train/b.bin" in result.err
    assert not (dest / "train" / "b.bin").exists()
    assert (dest / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]
    assert [p.name for p in (dest / "train").iterdir() if p.name.startswith(".")] == []


def test_files_in_dest_that_are_not_ours_are_never_clobbered_without_overwrite(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    write_tree(dest, {"train/a.bin": b"my own notes", "notes.txt": b"keep me"})
    refused = cli("download", "ds:1", str(dest))
    assert refused.code == 2
    assert "1 file(s) under" in refused.err and "train/a.bin" in refused.err
    assert "--overwrite" in refused.err
    assert (dest / "train" / "a.bin").read_bytes() == b"my own notes"
    assert not (dest / "labels.csv").exists()  # refused up front: nothing written

    cli.ok("download", "ds:1", str(dest), "--overwrite")
    assert digests_of(dest) == {**expected(FILES), **expected({"notes.txt": b"keep me"})}


def test_a_download_refuses_up_front_when_dest_lacks_the_space(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    container.put({"big.bin": os.urandom(3 * 2**20)})
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "big", "--datastore", "blob", "--path", ".")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        result = cli("download", "big", str(small / "dest"))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert result.code == 2
    assert "free but 1 missing file(s) need 3.0 MiB" in result.err


def test_download_reuses_blocks_a_mount_cached(
    cli: Cli, dataset: Container, mounts: Mounts, tmp_path: Path
) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    for path in FILES:
        (root / path).read_bytes()
    mounts.unmount(root)
    dataset.fs.rm(dataset.name, recursive=True)  # only the cache still has the bytes
    dest = tmp_path / "dest"
    result = cli("download", "ds:1", str(dest), "--block-size", "64KiB")
    non_empty = sum(1 for data in FILES.values() if data)
    assert f"{non_empty} from the block cache" in result.out, result.err
    # The empty file has no blocks to cache; its etag is checked at the source: gone.
    assert "train/empty.dat: gone from the datastore" in result.err
    assert digests_of(dest) == expected({p: d for p, d in FILES.items() if d})


# --- upload --------------------------------------------------------------------------

UPLOADED = {
    "model/weights.bin": random.Random(5).randbytes(300 * 1024),
    "model/config.json": b'{"layers": 3}\n',
    "metrics/deep/er/é.csv": b"epoch,loss\n1,0.5\n",
    "empty": b"",
}


def test_upload_round_trips_and_a_rerun_sends_nothing(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    src = tmp_path / "src"
    write_tree(src, UPLOADED)
    first = cli.ok("upload", str(src), "blob:runs/1")
    assert f"{len(UPLOADED)} file(s) sent" in first.out
    stored = {path: container.fs.cat(f"{container.name}/runs/1/{path}") for path in UPLOADED}
    assert expected(stored) == expected(UPLOADED)
    again = cli.ok("upload", str(src), "blob:runs/1")
    assert "0 file(s) sent" in again.out and f"{len(UPLOADED)} already identical" in again.out


def test_upload_register_pins_exactly_the_uploaded_files(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    container.put({"out/other-job.txt": b"not part of this upload"})
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    src = tmp_path / "src"
    write_tree(src, UPLOADED)
    result = cli.ok("upload", str(src), "blob:out", "--register", "results")
    assert result.last_line == "results:1"
    manifest = cli.ok("dataset", "show", "results:1", "--files", "--json").out
    listed = {f["path"] for f in json.loads(manifest)["files"]}
    assert listed == set(UPLOADED)
    cli.ok("dataset", "verify", "results:1")  # the pinned etags are the stored ones
    dest = tmp_path / "dest"
    cli.ok("download", "results:1", str(dest))
    assert digests_of(dest) == expected(UPLOADED)


def test_upload_of_a_missing_folder_is_one_line_and_exit_2(cli: Cli, container: Container) -> None:
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    result = cli("upload", "/nonexistent/folder", "blob:x")
    assert result.code == 2 and result.err.startswith("amlfs: error: /nonexistent/folder")
    assert cli("upload", "/tmp", "no-colon").code == 2


def test_upload_to_an_unknown_datastore_is_exit_2(cli: Cli, tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a": b"1"})
    result = cli("upload", str(tmp_path / "src"), "nosuch:path")
    assert result.code == 2 and "nosuch" in result.err


def test_without_a_terminal_progress_is_a_quiet_line_now_and_then(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress_module, "QUIET_EVERY_S", 0.0)
    with progress_module.TransferProgress("download", 4, 4 * 2**20) as progress:
        progress.advance(2**20)
    line = capsys.readouterr().err.strip()
    assert line.startswith("amlfs: download: 1/4 files, 1.0 MiB of 4.0 MiB,")
    assert "/s, about" in line and "s left" in line
