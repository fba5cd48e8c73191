"""`amlfs snapshot` end to end on the Azurite emulator: a snapshot is taken only of a
version whose pins still hold, keeps the version's profile, and with a copy serves the
pinned bytes (mount, download, verify) after the source changed or vanished; delete
removes exactly the blobs its copy wrote, and never while a mount reads it."""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.snapshots import copy
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.mounts import Mounts
from tests.support.sample import BLOCK, FILES, OPTIONS
from tests.support.web import WebServer


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def tree_sha256s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".amlfs")
    }


def snapshot_rows(cli: Cli) -> list[tuple]:
    with sqlite3.connect(cli.home / "registry.db") as conn:
        return conn.execute("SELECT * FROM snapshots WHERE deleted_at IS NULL").fetchall()


def blobs(container: Container, folder: str) -> dict[str, str]:
    """Every blob below FOLDER of the container, with its etag."""
    found = container.fs.find(f"{container.name}/{folder}", detail=True)
    return {name.split("/", 1)[1]: info["etag"] for name, info in found.items()}


def test_a_snapshot_without_a_copy_keeps_the_profile_and_reads_like_its_version(
    cli: Cli, dataset: Container
) -> None:
    taken = cli.ok("snapshot", "create", "ds")
    assert re.fullmatch(r"ds:1@snapshot-\d{14}", taken.last_line)
    ref = taken.last_line
    shown = json.loads(cli.ok("snapshot", "show", ref, "--json").out)
    assert shown["copy"] is None and shown["snapshot"] == ref
    assert shown["profile"]["files"] == len(FILES)
    assert shown["profile"]["bytes"] == sum(map(len, FILES.values()))
    text = cli.ok("snapshot", "show", ref).out
    assert "copy:         none" in text and "size histogram:" in text
    listed = json.loads(cli.ok("snapshot", "list", "ds:1", "--json").out)
    assert [s["snapshot"] for s in listed] == [ref]
    version = json.loads(cli.ok("dataset", "show", "ds:1", "--json").out)
    assert [s["snapshot"] for s in version["snapshots"]] == [ref]
    as_snapshot = json.loads(cli.ok("dataset", "show", ref, "--json").out)
    assert (as_snapshot["snapshot"], as_snapshot["datastore"]) == (ref.split("@")[1], "blob")
    assert cli("dataset", "verify", ref).code == 0
    assert cli("dataset", "diff", "ds:1", ref).code == 0
    assert cli("snapshot", "create", "ds:1", "--name", ref.split("@")[1]).code == 2
    as_json = json.loads(cli.ok("snapshot", "create", "ds:1", "--name", "j", "--json").out)
    assert (as_json["snapshot"], as_json["copy"]) == ("ds:1@j", None)


def test_a_drifted_version_is_refused_naming_the_files_and_nothing_is_recorded(
    cli: Cli, dataset: Container
) -> None:
    dataset.put({"labels.csv": b"rewritten\n"})
    dataset.fs.rm(f"{dataset.name}/train/b.bin")
    refused = cli("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps")
    assert refused.code == 1
    assert "changed  labels.csv" in refused.out and "missing  train/b.bin" in refused.out
    assert "no snapshot taken" in refused.err
    assert snapshot_rows(cli) == []
    assert blobs(dataset, "snaps") == {}
    assert json.loads(cli.ok("snapshot", "list", "--json").out) == []


def test_the_profile_matches_a_hand_computed_case(cli: Cli, container: Container) -> None:
    container.put({
        "a/x.csv": b"0123456789",
        "b/dup.csv": b"0123456789",
        "a/y.txt": b"y" * 30,
        "top.bin": b"t" * 20,
    })  # fmt: skip
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "hand", "--datastore", "blob", "--path", ".")
    ref = cli.ok("snapshot", "create", "hand", "--name", "s").last_line
    p = json.loads(cli.ok("snapshot", "show", ref, "--json").out)["profile"]
    assert (p["files"], p["bytes"]) == (4, 70)
    sizes = p["sizes"]  # sorted: 10 10 20 30; the p-th quantile is the nearest rank
    assert (sizes["min"], sizes["p25"], sizes["p50"], sizes["p75"], sizes["max"]) == (
        10, 10, 10, 20, 30
    )  # fmt: skip
    assert sizes["histogram"] == [
        {"from": 8, "below": 16, "files": 2}, {"from": 16, "below": 32, "files": 2}
    ]  # fmt: skip
    assert p["extensions"] == {
        ".bin": {"files": 1, "bytes": 20}, ".csv": {"files": 2, "bytes": 20},
        ".txt": {"files": 1, "bytes": 30},
    }  # fmt: skip
    assert p["folders"] == {
        ".": {"files": 1, "bytes": 20}, "a": {"files": 2, "bytes": 40},
        "b": {"files": 1, "bytes": 10},
    }  # fmt: skip
    assert p["md5"] == {"files": 4, "of": 4}
    dups = p["duplicates"]
    assert (dups["groups"], dups["files"], dups["redundant_bytes"]) == (1, 2, 10)
    assert dups["examples"][0]["paths"] == ["a/x.csv", "b/dup.csv"]


def test_a_copy_serves_the_pinned_bytes_after_the_source_is_overwritten_and_deleted(
    cli: Cli, dataset: Container, mounts: Mounts, tmp_path: Path
) -> None:
    ref = cli.ok("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps").last_line
    assert ref == "ds:1@s1"
    copied = blobs(dataset, "snaps")
    assert len(copied) == len(FILES)
    assert all(re.fullmatch(r"snaps/ds/1/s1-[0-9a-f]{8}/.+", name) for name in copied)
    dataset.put({"train/a.bin": b"overwritten"})
    dataset.fs.rm(f"{dataset.name}/labels.csv")
    assert cli("dataset", "verify", "ds:1").code == 1
    assert cli("dataset", "verify", ref).code == 0

    path = mounts.mount(ref, *OPTIONS)
    assert tree_sha256s(path) == sha256s(FILES)
    mounts.unmount(path)
    cli.ok("download", ref, str(tmp_path / "down"))
    assert tree_sha256s(tmp_path / "down") == sha256s(FILES)
    shown = json.loads(cli.ok("snapshot", "show", ref, "--json").out)
    assert shown["copy"]["location"].startswith("blob:snaps/ds/1/s1-")
    assert cli("dataset", "diff", "ds:1", ref).code == 0  # same paths, sizes and MD5s
    cli.ok("dataset", "filter", ref, "--include", "train/**", "--register", "sub")
    derived = json.loads(cli.ok("dataset", "show", "sub:1", "--json").out)["derived_from"]
    assert derived["parent"] == ref
    cli.ok("download", "sub:1", str(tmp_path / "sub"))
    assert tree_sha256s(tmp_path / "sub") == {
        p: h for p, h in sha256s(FILES).items() if p.startswith("train/")
    }


def test_a_streamed_copy_is_checked_and_resumes_keeping_the_blobs_already_copied(
    cli: Cli, dataset: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another datastore: no server-side copy between them, every file is streamed.
    url = f"{dataset.url}/elsewhere"
    cli.ok("datastore", "add", "other", url, "--connection-string-env", CONNECTION_ENV)
    real_copy = copy._Copier.copy

    def fail_one(self: copy._Copier, f: object) -> object:
        if f.path == "labels.csv":
            raise OSError("interrupted")
        return real_copy(self, f)

    monkeypatch.setattr(copy._Copier, "copy", fail_one)
    args = ("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "other:keep")
    assert cli(*args).code == 1
    assert snapshot_rows(cli) == []
    first = blobs(dataset, "elsewhere/keep")
    assert len(first) == len(FILES) - 1
    monkeypatch.setattr(copy._Copier, "copy", real_copy)
    assert cli.ok(*args).last_line == "ds:1@s1"
    second = blobs(dataset, "elsewhere/keep")
    assert len(second) == len(FILES)
    assert {name: second[name] for name in first} == first  # kept, not written again
    found = dataset.fs.find(f"{dataset.name}/elsewhere/keep", detail=True).values()
    assert all(info["content_settings"]["content_md5"] for info in found)
    assert cli("dataset", "verify", "ds:1@s1").code == 0


def test_delete_removes_its_own_blobs_and_nothing_else(cli: Cli, dataset: Container) -> None:
    dataset.put({"snaps/not-ours.txt": b"keep me"})
    for name in ("s1", "s2"):
        cli.ok("snapshot", "create", "ds:1", "--name", name, "--copy-to", "blob:snaps")
    before = blobs(dataset, "snaps")
    s2 = {n: e for n, e in before.items() if n.startswith("snaps/ds/1/s2-")}
    assert len(s2) == len(FILES)
    assert "deleted ds:1@s1" in cli.ok("snapshot", "delete", "ds:1@s1").out
    assert blobs(dataset, "snaps") == {**s2, "snaps/not-ours.txt": before["snaps/not-ours.txt"]}
    assert [s["snapshot"] for s in json.loads(cli.ok("snapshot", "list", "--json").out)] == [
        "ds:1@s2"
    ]
    assert cli("dataset", "show", "ds:1@s1").code == 2
    assert cli("dataset", "verify", "ds:1@s2").code == 0


def test_delete_is_refused_while_a_mount_reads_the_snapshot(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps")
    path = mounts.mount("ds:1@s1", *OPTIONS)
    refused = cli("snapshot", "delete", "ds:1@s1")
    assert refused.code == 2 and "mounted at" in refused.err
    assert len(blobs(dataset, "snaps")) == len(FILES)
    mounts.unmount(path)
    cli.ok("snapshot", "delete", "ds:1@s1")
    assert blobs(dataset, "snaps") == {}


def test_the_copies_dataset_cannot_be_named_or_listed(cli: Cli, dataset: Container) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps")
    listed = json.loads(cli.ok("dataset", "list", "--json").out)
    assert [v["dataset"] for v in listed] == ["ds"]
    assert cli("dataset", "versions", "@snapshot-copies").code == 2
    assert cli("dataset", "show", "@snapshot-copies:1").code == 2
    assert cli("snapshot", "show", "ds:1@nope").code == 2


def test_a_run_reads_a_snapshot_and_its_lineage_names_it_also_once_deleted(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps")
    dataset.put({"labels.csv": b"changed at the source\n"})
    copytree = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"
    copier = [sys.executable, "-c", copytree]
    ran = cli.process("run", "--input", "raw=ds:1@s1,mode=download",
                      "--output", "out=blob:features/{run-id},register=features",
                      "--", *copier, "{inputs.raw}", "{outputs.out}")  # fmt: skip
    assert ran.code == 0, ran.err
    cli.ok("download", "features:1", str(tmp_path / "features"))
    assert tree_sha256s(tmp_path / "features") == sha256s(FILES)  # the snapshot's bytes
    lineage = json.loads(cli.ok("lineage", "features:1", "--json").out)
    assert [i["version"] for i in lineage["produced_by"]["inputs"]] == ["ds:1@s1"]
    cli.ok("snapshot", "delete", "ds:1@s1")
    lineage = json.loads(cli.ok("lineage", "features:1", "--json").out)
    assert [i["version"] for i in lineage["produced_by"]["inputs"]] == ["ds:1@s1"]


WAITER = """
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("started")
deadline = time.monotonic() + 60
while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_delete_is_refused_while_a_running_run_reads_the_snapshot(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s1", "--copy-to", "blob:snaps")
    started, release = tmp_path / "started", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "run",
         "--input", "data=ds:1@s1,mode=download", "--", sys.executable, "-c", WAITER,
         str(started), str(release)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate(timeout=30)
        refused = cli("snapshot", "delete", "ds:1@s1")
        assert refused.code == 2 and "read by run" in refused.err
    finally:
        release.write_text("go")
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    cli.ok("snapshot", "delete", "ds:1@s1")


WEB_FILES = {
    "data/labels.csv": b"a,1\nb,2\n",
    "data/train/big.bin": random.Random(7).randbytes(5 * BLOCK + 321),
}


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    """WEB_FILES on a server that sends no ETag; stopped at teardown."""
    server = WebServer(tmp_path / "site")
    server.put(WEB_FILES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_files_pinned_by_content_are_copied_checked_by_their_md5(
    cli: Cli, container: Container, web: WebServer, tmp_path: Path
) -> None:
    cli.ok("datastore", "add", "web", web.url)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "pub", "--datastore", "web", "--path", "data/**")
    cli.ok("snapshot", "create", "pub:1", "--name", "s", "--copy-to", "blob:snaps")
    web.put({"data/train/big.bin": b"rewritten at the server"})
    assert cli("dataset", "verify", "pub:1").code == 1
    cli.ok("download", "pub:1@s", str(tmp_path / "down"))
    expected = {path.removeprefix("data/"): data for path, data in WEB_FILES.items()}
    assert tree_sha256s(tmp_path / "down") == sha256s(expected)
