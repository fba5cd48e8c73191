"""amlfs from Python, against the emulator and through real mounts: `amlfs.Dataset` sees
exactly what the CLI sees (same files, the same bytes), mounts for a `with` block and
never leaves a mount behind, downloads and verifies as the CLI does; `amlfs.register`
mirrors `dataset register`; `amlfs.run_context()` describes the running `amlfs run`;
errors are exceptions with the CLI's messages."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

import amlfs
from amlfs.mounts import mounted_paths
from tests.conftest import Cli, Container
from tests.support.mounts import processes_mentioning
from tests.support.sample import FILES
from tests.support.waiting import until
from tests.test_transfer import digests_of, expected, write_tree


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_dataset_has_the_files_and_facts_the_cli_shows(cli: Cli, dataset: Container) -> None:
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", "train")
    shown = json.loads(cli.ok("dataset", "show", "ds:1", "--files", "--json").out)
    first = amlfs.Dataset.get("ds", 1, home=cli.home)
    assert (first.name, first.version, first.ref) == ("ds", 1, "ds:1")
    assert first.files == [f["path"] for f in shown["files"]]
    assert (first.file_count, first.total_bytes) == (shown["file_count"], shown["total_bytes"])
    latest = amlfs.Dataset.get("ds", home=cli.home)
    assert latest.version == 2 and set(latest.files) == {p[6:] for p in FILES if p[:6] == "train/"}
    assert amlfs.Dataset.get("ds:1", home=cli.home).files == first.files


def test_open_reads_the_pinned_bytes_of_every_file(cli: Cli, dataset: Container) -> None:
    ds = amlfs.Dataset.get("ds", 1, home=cli.home)
    for path in ds.files:
        with ds.open(path) as stream:
            assert sha256(stream.read()) == sha256(FILES[path])
    with ds.open("train/a.bin") as stream:  # seekable
        stream.seek(3)
        assert stream.read(5) == FILES["train/a.bin"][3:8]


def test_a_snapshot_is_a_dataset_too(cli: Cli, dataset: Container) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s")
    snap = amlfs.Dataset.get("ds", "1@s", home=cli.home)
    assert (snap.ref, snap.snapshot) == ("ds:1@s", "s")
    assert sorted(snap.files) == sorted(FILES)


def test_mount_serves_the_version_for_the_block_and_unmounts_after(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    ds = amlfs.Dataset.get("ds", 1, home=cli.home)
    with ds.mount() as root:  # a temporary mountpoint
        assert str(root) in mounted_paths()
        assert digests_of(root) == expected(FILES)
    assert str(root) not in mounted_paths() and not root.exists()
    until(lambda: not processes_mentioning(root), "the mount's daemon ended", 10.0)

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with ds.mount(mountpoint, fetch_limit=4) as root:
        assert root == mountpoint and (root / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert str(mountpoint) not in mounted_paths() and mountpoint.is_dir()


def test_mount_is_taken_down_when_the_block_raises(cli: Cli, dataset: Container) -> None:
    ds = amlfs.Dataset.get("ds", 1, home=cli.home)
    with pytest.raises(RuntimeError, match="training failed"), ds.mount() as root:
        assert (root / "labels.csv").exists()
        raise RuntimeError("training failed")
    assert str(root) not in mounted_paths() and not root.exists()
    until(lambda: not processes_mentioning(root), "the mount's daemon ended", 10.0)


def test_download_places_verified_files_and_refuses_foreign_ones_without_overwrite(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    ds = amlfs.Dataset.get("ds", 1, home=cli.home)
    assert ds.download(tmp_path / "a") == tmp_path / "a"
    assert digests_of(tmp_path / "a") == expected(FILES)

    dest = tmp_path / "b"
    write_tree(dest, {"train/a.bin": b"my own notes"})
    with pytest.raises(amlfs.UserError) as refused:
        ds.download(dest)
    cli_error = cli("download", "ds:1", str(dest)).err.strip()
    assert cli_error == f"amlfs: error: {refused.value}"  # the CLI's message, word for word
    assert (dest / "train" / "a.bin").read_bytes() == b"my own notes"
    ds.download(dest, overwrite=True)
    assert digests_of(dest) == expected(FILES)


def test_verify_names_a_file_changed_at_the_source(cli: Cli, dataset: Container) -> None:
    ds = amlfs.Dataset.get("ds", 1, home=cli.home)
    assert ds.verify().ok
    dataset.put({"labels.csv": b"other labels"})
    dataset.fs.rm(f"{dataset.name}/train/b.bin")
    report = ds.verify()
    assert not report.ok
    assert (report.changed, report.missing) == (["labels.csv"], ["train/b.bin"])


def test_register_mirrors_the_cli(cli: Cli, dataset: Container) -> None:
    made = amlfs.register("api", "blob", ["train"], description="from Python",
                          tags={"k": "v"}, home=cli.home)  # fmt: skip
    assert made.ref == "api:1" and made.tags == {"k": "v"}
    shown = json.loads(cli.ok("dataset", "show", "api:1", "--files", "--json").out)
    assert shown["description"] == "from Python"
    assert made.files == [f["path"] for f in shown["files"]]


def test_errors_are_exceptions_with_the_clis_messages(cli: Cli, dataset: Container) -> None:
    with pytest.raises(amlfs.NotFound) as missing:
        amlfs.Dataset.get("nope", home=cli.home)
    assert cli("dataset", "show", "nope").err.strip() == f"amlfs: error: {missing.value}"
    with pytest.raises(amlfs.NotFound):
        amlfs.Dataset.get("ds", 9, home=cli.home)
    mounting = amlfs.Dataset.get("ds", home=cli.home).mount(speed=2)
    with pytest.raises(amlfs.UserError, match="no option 'speed'"), mounting:
        pass
    assert issubclass(amlfs.NotFound, amlfs.UserError)
    assert issubclass(amlfs.UserError, amlfs.AmlfsError)


CONTEXT_PROBE = """
import json, amlfs
context = amlfs.run_context()
print(json.dumps({
    "run_id": context.run_id,
    "inputs": {k: sorted(p.relative_to(v).as_posix() for p in v.rglob("*") if p.is_file())
               for k, v in context.inputs.items()},
    "outputs": {k: str(v) for k, v in context.outputs.items()},
    "version": context.input_dataset("data").ref,
}))
(context.outputs["result"] / "done.txt").write_text("ok")
"""


def test_run_context_inside_amlfs_run_names_its_inputs_outputs_and_versions(
    cli: Cli, dataset: Container
) -> None:
    result = cli.process("run", "--input", "data=ds:1", "--output",
                         "result=blob:results/{run-id},register=results",
                         "--", sys.executable, "-c", CONTEXT_PROBE)  # fmt: skip
    assert result.code == 0, result.err
    seen = json.loads(result.out.strip().splitlines()[-1])
    assert seen["inputs"] == {"data": sorted(FILES)}
    assert list(seen["outputs"]) == ["result"] and seen["version"] == "ds:1"
    run = json.loads(cli.ok("runs", "show", seen["run_id"], "--json").out)
    assert run["outputs"][0]["version"] == "results:1"


def test_run_context_outside_a_run_says_so() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AMLFS_")}
    with pytest.raises(amlfs.NotInRun, match="not inside `amlfs run`"):
        amlfs.run_context(environ)
