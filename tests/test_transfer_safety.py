"""Download and upload stay inside their folders and keep what they promise after a crash:
no link followed out of an upload's source or into a download's destination, files synced
before they are recorded, and no name of a user's file taken, skipped or removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amlfs.storage import Store
from amlfs.transfer.journal import Journal
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.sample import FILES
from tests.test_transfer import digests_of, expected, write_tree

SECRET = b"root:$6$not-for-upload\n"


def add_blob(cli: Cli, container: Container) -> None:
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)


def stored(container: Container, folder: str) -> dict[str, bytes]:
    """Every blob below FOLDER of the container, by path relative to FOLDER."""
    base = f"{container.name}/{folder}/"
    if not container.fs.exists(base):
        return {}
    return {p[len(base) :]: container.fs.cat(p) for p in container.fs.find(base)}


# --- download: nothing written through a link -------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_download_never_writes_through_a_linked_folder_in_dest(
    cli: Cli, dataset: Container, tmp_path: Path, overwrite: bool
) -> None:
    other = tmp_path / "other"
    theirs = {"a.bin": b"someone else's"} if overwrite else {}
    write_tree(other, {**theirs, "notes.txt": b"keep"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "train").symlink_to(other, target_is_directory=True)

    result = cli("download", "ds:1", str(dest), *(["--overwrite"] if overwrite else []))
    assert result.code == 2, result.out
    assert "symbolic link" in result.err and "train" in result.err
    assert digests_of(other) == expected({**theirs, "notes.txt": b"keep"})
    assert (dest / "train").is_symlink()


def test_a_link_standing_as_a_file_of_the_version_is_refused_even_with_overwrite(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"not amlfs's")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "labels.csv").symlink_to(outside)

    result = cli("download", "ds:1", str(dest), "--overwrite")
    assert result.code == 2
    assert "labels.csv" in result.err and "symbolic link" in result.err
    assert (dest / "labels.csv").is_symlink() and outside.read_bytes() == b"not amlfs's"
    assert not (dest / "train").exists()  # refused up front: nothing written


def test_a_link_planted_during_a_download_is_not_followed(
    cli: Cli, dataset: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, other = tmp_path / "dest", tmp_path / "other"
    other.mkdir()
    real_download = Store.download_pinned

    def plant_then_download(self: Store, relative: str, etag: str, local: Path) -> None:
        if not os.path.lexists(dest / "valid"):  # at the first file
            (dest / "valid").symlink_to(other, target_is_directory=True)
        real_download(self, relative, etag, local)

    monkeypatch.setattr(Store, "download_pinned", plant_then_download)
    result = cli("download", "ds:1", str(dest), "--workers", "1")
    assert result.code == 1
    assert "valid: is a symbolic link" in result.err or "valid is a symbolic link" in result.err
    assert list(other.iterdir()) == []
    assert (dest / "train" / "a.bin").read_bytes() == FILES["train/a.bin"]


# --- download: durable before recorded ---------------------------------------------------


def test_a_file_and_its_folder_are_synced_before_the_journal_records_it(
    cli: Cli, dataset: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple] = []
    real_fsync, real_replace, real_record = os.fsync, os.replace, Journal.record_placed

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.fstat(fd).st_ino))

    def replace(src: str, dst: str, *, src_dir_fd: int | None = None,
                dst_dir_fd: int | None = None) -> None:  # fmt: skip
        real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        events.append(("rename", os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False).st_ino))

    def record_placed(self: Journal, dest: Path, path: str, placed: object) -> None:
        events.append(("record", path))
        real_record(self, dest, path, placed)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Journal, "record_placed", record_placed)
    dest = tmp_path / "dest"
    cli.ok("download", "ds:1", str(dest))

    for path in FILES:
        inode, folder = (dest / path).stat().st_ino, (dest / path).parent.stat().st_ino
        recorded = events.index(("record", path))
        renamed = events.index(("rename", inode))
        assert ("fsync", inode) in events[:renamed], f"{path}: not synced before its rename"
        assert ("fsync", folder) in events[renamed:recorded], f"{path}: folder not synced"


# --- download: names of the user's and the version's own -------------------------------


def test_a_version_holding_x_and_its_old_partial_name_keeps_both_across_runs(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    files = {"x": b"the file", ".x.amlfs-part": b"a file of the version too"}
    container.put(files)
    add_blob(cli, container)
    cli.ok("dataset", "register", "pair", "--datastore", "blob", "--path", ".")
    dest = tmp_path / "dest"
    cli.ok("download", "pair", str(dest))
    assert digests_of(dest) == expected(files)
    again = cli.ok("download", "pair", str(dest))
    assert "2 already in place" in again.out
    assert digests_of(dest) == expected(files)


def test_a_user_file_named_like_a_partial_in_dest_is_left_alone(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    mine = {"train/.a.bin.amlfs-part": b"my own file", ".amlfs-0-1": b"mine too"}
    write_tree(dest, mine)
    cli.ok("download", "ds:1", str(dest))
    assert digests_of(dest) == {**expected(FILES), **expected(mine)}


def test_a_250_byte_name_downloads_and_uploads(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    long = "n" * 246 + ".bin"  # 250 bytes: valid, and NAME_MAX is 255
    files = {f"deep/{long}": b"a long name"}
    container.put(files)
    add_blob(cli, container)
    cli.ok("dataset", "register", "long", "--datastore", "blob", "--path", "deep")
    dest = tmp_path / "dest"
    cli.ok("download", "long", str(dest))
    assert digests_of(dest) == expected({long: b"a long name"})
    cli.ok("upload", str(dest), "blob:back")
    assert stored(container, "back") == {long: b"a long name"}


# --- upload: no link followed out of the source ------------------------------------------


def secret_outside(tmp_path: Path) -> Path:
    """A file outside any folder uploaded, standing for /etc/shadow."""
    shadow = tmp_path / "shadow"
    shadow.write_bytes(SECRET)
    return shadow


def test_upload_refuses_links_naming_them_and_stores_nothing(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    add_blob(cli, container)
    shadow = secret_outside(tmp_path)
    src = tmp_path / "src"
    write_tree(src, {"model.bin": b"weights", "logs/run.txt": b"ok"})
    (src / "shadow").symlink_to(shadow)
    (src / "logs" / "latest").symlink_to(src / "logs" / "run.txt")

    result = cli("upload", str(src), "blob:up", "--register", "leak")
    assert result.code == 2
    assert "2 symbolic link(s)" in result.err
    assert "logs/latest" in result.err and "shadow" in result.err
    assert "--follow-links" in result.err
    assert stored(container, "up") == {}
    assert cli("dataset", "show", "leak").code == 2


def test_follow_links_uploads_links_inside_the_source_and_never_one_outside(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    add_blob(cli, container)
    shadow = secret_outside(tmp_path)
    src = tmp_path / "src"
    write_tree(src, {"data/a.txt": b"a", "data/b.txt": b"b"})
    (src / "alias.txt").symlink_to("data/a.txt")
    (src / "more").symlink_to("data", target_is_directory=True)
    (src / "data" / "up").symlink_to("..", target_is_directory=True)  # a loop
    (src / "shadow").symlink_to(shadow)

    refused = cli("upload", str(src), "blob:up", "--follow-links")
    assert refused.code == 2
    assert "data/up" in refused.err and "shadow" in refused.err and "more/up" in refused.err
    assert stored(container, "up") == {}

    (src / "shadow").unlink()
    (src / "data" / "up").unlink()
    cli.ok("upload", str(src), "blob:up", "--follow-links", "--register", "linked")
    assert stored(container, "up") == {
        "data/a.txt": b"a", "data/b.txt": b"b", "alias.txt": b"a",
        "more/a.txt": b"a", "more/b.txt": b"b",
    }  # fmt: skip


def test_a_link_planted_between_listing_and_reading_is_not_followed(
    cli: Cli, container: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_blob(cli, container)
    shadow = secret_outside(tmp_path)
    src = tmp_path / "src"
    write_tree(src, {"a.txt": b"mine", "sub/b.txt": b"mine too"})
    real_list = Store.list_source

    def swap_then_list(self: Store, source: str, progress: object = None) -> object:
        (src / "a.txt").unlink()
        (src / "a.txt").symlink_to(shadow)
        (src / "sub").rename(tmp_path / "sub-moved")
        (src / "sub").symlink_to(tmp_path / "sub-moved", target_is_directory=True)
        return real_list(self, source, progress)

    monkeypatch.setattr(Store, "list_source", swap_then_list)
    result = cli("upload", str(src), "blob:up")
    assert result.code == 1
    assert "a.txt" in result.err and "sub/b.txt" in result.err
    assert stored(container, "up") == {}


# --- upload: a user's file is a user's file ----------------------------------------------


def test_a_user_file_named_like_a_partial_is_uploaded_and_registered(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    add_blob(cli, container)
    src = tmp_path / "src"
    files = {"a": b"data", "a.amlfs-part": b"also data", "sub/.b.amlfs-part": b"and this"}
    write_tree(src, files)
    cli.ok("upload", str(src), "blob:up", "--register", "mine")
    assert stored(container, "up") == files
    assert src.is_dir() and digests_of(src) == expected(files)


def test_a_run_output_holding_a_link_out_is_not_uploaded(
    cli: Cli, container: Container, tmp_path: Path
) -> None:
    add_blob(cli, container)
    shadow = secret_outside(tmp_path)
    script = f"echo w > {{outputs.o}}/model.bin && ln -s {shadow} {{outputs.o}}/shadow"
    result = cli("run", "--output", "o=blob:out/{run-id},register=o", "--", "sh", "-c", script)
    assert result.code == 1
    assert "symbolic link" in result.err and "shadow" in result.err
    assert stored(container, "out") == {}
    assert cli("dataset", "versions", "o").code == 2
