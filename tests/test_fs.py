"""The amlfs:// fsspec filesystem against the emulator: found through fsspec's entry point,
it serves the pinned bytes of versions, latest versions and snapshots; lists them from the
registry alone, also with storage stopped; reads through the block cache that mounts
share; never returns other bytes for a file that changed at its source; refuses writes
and pruned versions; and works in forked children, for pandas and pyarrow, without FUSE."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import adlfs
import fsspec
import pandas
import pyarrow
import pyarrow.csv
import pyarrow.parquet
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlfs import pinned_reads
from amlfs.errors import Pruned
from amlfs.fs import open_pinned
from amlfs.registry.prunes import Prunes
from amlfs.registry.store import Registry, now
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.azurite import Azurite
from tests.support.sample import FILES

FOLDERS = {"train", "train/nested", "train/nested/deeper", "valid"}
SUBPROCESS_TIMEOUT_S = 120


def url(ref: str, path: str) -> str:
    return f"amlfs://{ref}/{path}"


def read(cli: Cli, ref: str, path: str, **options: object) -> bytes:
    with fsspec.open(url(ref, path), "rb", home=str(cli.home), **options) as f:
        return f.read()


def filesystem(cli: Cli, **options: object) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("amlfs", home=str(cli.home), **options)


def in_subprocess(code: str) -> subprocess.CompletedProcess:
    """CODE run by a fresh interpreter (its own loop, cache handle, exit)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip


def test_every_file_reads_through_fsspec_open_as_registered(cli: Cli, dataset: Container) -> None:
    opened = fsspec.open(url("ds:1", "labels.csv"), home=str(cli.home))
    assert type(opened.fs).__module__ == "amlfs.fs"  # found through the entry point
    for path, data in FILES.items():
        assert read(cli, "ds:1", path) == data, path
        assert filesystem(cli).cat_file(f"ds:1/{path}") == data, path


def test_an_open_file_seeks_and_reads_across_blocks(cli: Cli, dataset: Container) -> None:
    data = FILES["train/a.bin"]  # four blocks of 64 KiB
    fs = filesystem(cli, block_size="64KiB")
    with fs.open("ds:1/train/a.bin") as f:
        assert f.seekable() and f.size == len(data)
        assert f.read() == data
        f.seek(65536 - 10)
        assert f.read(20) == data[65536 - 10 : 65536 + 10]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(0)
        assert b"".join(iter(lambda: f.read(7000), b"")) == data
    with Registry(cli.home / "registry.db") as registry:
        datastore = registry.get_datastore("blob")
    stats = pinned_reads.reads(datastore, fs.settings).reader.stats
    # The blocks of one large read are fetched together (the first, then the rest in one
    # request), and read again from memory.
    assert (stats.fetches, stats.bytes_fetched) == (2, len(data))


def test_open_pinned_reads_a_resolved_version(cli: Cli, dataset: Container) -> None:
    cli.ok("snapshot", "create", "ds:1", "--name", "s")
    with Registry(cli.home / "registry.db") as registry:
        snapshot = registry.resolve("ds:1@s")
    with open_pinned(snapshot, "valid/with space é.txt", home=cli.home) as f:
        assert f.read() == FILES["valid/with space é.txt"]
    with pytest.raises(FileNotFoundError, match=r"train/missing\.bin"):
        open_pinned(snapshot, "train/missing.bin", home=cli.home)
    with pytest.raises(IsADirectoryError):
        open_pinned(snapshot, "train", home=cli.home)
    with pytest.raises(Pruned):
        open_pinned(replace(snapshot, pruned_at=now()), "labels.csv", home=cli.home)


def test_a_name_alone_is_the_latest_version(cli: Cli, dataset: Container) -> None:
    dataset.put({"extra.txt": b"only in version 2\n"})
    assert cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".").last_line == (
        "ds:2"
    )
    assert read(cli, "ds", "extra.txt") == b"only in version 2\n"
    assert read(cli, "ds:latest", "labels.csv") == FILES["labels.csv"]
    with pytest.raises(FileNotFoundError, match=r"extra\.txt"):
        read(cli, "ds:1", "extra.txt")
    assert filesystem(cli).info("ds/extra.txt")["version"] == "ds:2"


def test_a_snapshot_reads_as_its_version(cli: Cli, dataset: Container) -> None:
    assert cli.ok("snapshot", "create", "ds:1", "--name", "s").last_line == "ds:1@s"
    for path, data in FILES.items():
        assert read(cli, "ds:1@s", path) == data, path
    assert filesystem(cli).info("ds:1@s/train/a.bin")["version"] == "ds:1@s"
    with pytest.raises(FileNotFoundError, match="no snapshot 'other'"):
        read(cli, "ds:1@other", "labels.csv")


def test_unknown_datasets_versions_and_paths_are_not_found(cli: Cli, dataset: Container) -> None:
    fs = filesystem(cli)
    for missing in ("nope/labels.csv", "ds:7/labels.csv", "ds:1/train/missing.bin",
                    "ds:1/labels.csv/below"):  # fmt: skip
        with pytest.raises(FileNotFoundError):
            fs.info(missing)
        with pytest.raises(FileNotFoundError):
            fs.cat_file(missing)
        assert not fs.exists(missing)
    with pytest.raises(ValueError, match="invalid version"):
        fs.info("ds:x/labels.csv")
    with pytest.raises(IsADirectoryError):
        fs.cat_file("ds:1/train")


def test_listings_come_from_the_registry_and_cached_bytes_read_with_storage_stopped(
    cli: Cli, own_emulator: Azurite
) -> None:
    fs = adlfs.AzureBlobFileSystem(
        connection_string=own_emulator.connection_string, skip_instance_cache=True
    )
    fs.mkdir("fsspec")
    fs.pipe({f"fsspec/{path}": data for path, data in FILES.items()})
    cli.ok("datastore", "add", "own", "az://fsspec", "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "ds", "--datastore", "own", "--path", ".")
    cached = ["train/a.bin", "labels.csv", "valid/with space é.txt"]
    # A process of its own reads, then exits: what it read is in the shared block cache.
    reading = f"""
        import fsspec, sys
        for path in {cached!r}:
            with fsspec.open("amlfs://ds:1/" + path, home={str(cli.home)!r}) as f:
                sys.stdout.buffer.write(f.read())
        assert "pyfuse3" not in sys.modules
    """
    first = in_subprocess(reading)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout == b"".join(FILES[path] for path in cached)
    with Registry(cli.home / "registry.db") as registry:
        version = registry.resolve("ds:1")
        pinned = {f.path: f for f in registry.iter_files(version)}

    own_emulator.stop()
    amlfs = filesystem(cli, io_timeout=3)
    assert amlfs.find("ds:1") == sorted(f"ds:1/{path}" for path in FILES)
    assert set(amlfs.find("ds:1", withdirs=True)) == {f"ds:1/{p}" for p in [*FILES, *FOLDERS]} | {
        "ds:1"
    }
    assert amlfs.find("ds:1/train", maxdepth=1) == ["ds:1/train/a.bin", "ds:1/train/b.bin",
                                                    "ds:1/train/empty.dat"]  # fmt: skip
    assert amlfs.ls("ds:1", detail=False) == ["ds:1/labels.csv", "ds:1/train", "ds:1/valid"]
    assert amlfs.ls("", detail=False) == ["ds"]
    for path, file in pinned.items():
        info = amlfs.info(f"amlfs://ds:1/{path}")
        assert (info["type"], info["size"], info["etag"]) == ("file", file.size, file.etag)
    assert amlfs.info("ds:1/train/nested")["type"] == "directory"
    assert amlfs.isdir("ds:1/valid") and amlfs.isfile("ds:1/labels.csv")
    assert amlfs.glob("ds:1/train/*.bin") == ["ds:1/train/a.bin", "ds:1/train/b.bin"]
    assert amlfs.glob("ds:1/**/*.txt") == ["ds:1/train/nested/deeper/c.txt",
                                           "ds:1/valid/with space é.txt"]  # fmt: skip
    assert amlfs.glob("amlfs://ds:1/valid/with space*") == ["ds:1/valid/with space é.txt"]

    second = in_subprocess(reading)  # storage down: served from the block cache alone
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout == b"".join(FILES[path] for path in cached)
    with pytest.raises(OSError) as raised:  # never fetched: storage is needed, and down
        amlfs.cat_file("ds:1/train/b.bin")
    assert raised.value.errno == errno.EIO


def test_ranges_at_any_offsets_equal_the_source(cli: Cli, dataset: Container) -> None:
    fs = filesystem(cli, block_size="64KiB")
    files = sorted(FILES)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(st.tuples(st.sampled_from(files), st.integers(0, 4 * 65536),
                              st.integers(0, 4 * 65536)), min_size=1, max_size=12))  # fmt: skip
    def ranges_equal(wanted: list[tuple[str, int, int]]) -> None:
        found = fs.cat_ranges([f"ds:1/{p}" for p, _, _ in wanted], [s for _, s, _ in wanted],
                              [e for _, _, e in wanted])  # fmt: skip
        assert found == [FILES[p][s:e] for p, s, e in wanted]

    ranges_equal()
    data = FILES["train/a.bin"]
    assert fs.cat_file("ds:1/train/a.bin", start=-100) == data[-100:]
    assert fs.cat_file("ds:1/train/a.bin", 10, -10) == data[10:-10]


def test_a_file_changed_at_its_source_fails_and_never_returns_other_bytes(
    cli: Cli, dataset: Container
) -> None:
    dataset.put({"train/b.bin": b"rewritten after version 1 was registered"})
    fs = filesystem(cli)
    with pytest.raises(OSError, match="changed since it was pinned") as raised:
        read(cli, "ds:1", "train/b.bin")
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError, match="changed since it was pinned"):
        fs.cat_file("ds:1/train/b.bin")
    (failed, good) = fs.cat_ranges(["ds:1/train/b.bin", "ds:1/labels.csv"], 0, None)
    assert isinstance(failed, OSError) and good == FILES["labels.csv"]
    with pytest.raises(OSError, match="changed since it was pinned"):
        fs.cat_ranges(["ds:1/train/b.bin"], 0, 10, on_error="raise")
    assert read(cli, "ds:1", "train/a.bin") == FILES["train/a.bin"]  # other files read on


def test_writes_are_refused(cli: Cli, dataset: Container, tmp_path: Path) -> None:
    fs = filesystem(cli)
    local = tmp_path / "local.txt"
    local.write_bytes(b"x")
    attempts = [
        lambda: fsspec.open(url("ds:1", "new.txt"), "wb", home=str(cli.home)).open(),
        lambda: fs.open("ds:1/labels.csv", "ab"),
        lambda: fs.pipe_file("ds:1/new.txt", b"x"),
        lambda: fs.put(str(local), "ds:1/new.txt"),
        lambda: fs.rm("ds:1/labels.csv"),
        lambda: fs.rm_file("ds:1/labels.csv"),
        lambda: fs.mkdir("ds:1/new"),
        lambda: fs.makedirs("ds:1/new/deeper"),
        lambda: fs.touch("ds:1/new.txt"),
        lambda: fs.mv("ds:1/labels.csv", "ds:1/moved.csv"),
        lambda: fs.copy("ds:1/labels.csv", "ds:1/copied.csv"),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError, match="read-only"):
            attempt()
    assert read(cli, "ds:1", "labels.csv") == FILES["labels.csv"]


def test_a_pruned_version_says_so_and_keeps_its_listing(cli: Cli, dataset: Container) -> None:
    with Registry(cli.home / "registry.db") as registry:
        Prunes(registry).mark([registry.resolve("ds:1").id], now())
    fs = filesystem(cli)
    assert fs.info("ds:1/labels.csv")["size"] == len(FILES["labels.csv"])  # the record stays
    with pytest.raises(Pruned, match="ds:1 was pruned on"):
        read(cli, "ds:1", "labels.csv")
    with pytest.raises(Pruned):
        fs.cat_file("ds:1/labels.csv")


def read_in_child(home: str, path: str, expected: bytes | None) -> None:
    """In a forked child: read through amlfs:// and exit 0 only if the bytes are EXPECTED
    (None: only if the read fails because the file changed)."""
    try:
        with fsspec.open(url("ds:1", path), home=home) as f:
            found = f.read()
    except OSError as error:
        os._exit(0 if expected is None and "changed since it was pinned" in str(error) else 4)
    os._exit(0 if found == expected else 3)


def test_a_forked_child_reads_through_its_own_loop(cli: Cli, dataset: Container) -> None:
    assert read(cli, "ds:1", "train/a.bin") == FILES["train/a.bin"]  # the parent's loop runs
    opened = fsspec.open(url("ds:1", "labels.csv"), home=str(cli.home)).open()
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=read_in_child, args=(str(cli.home), path, FILES[path]))
        for path in ("train/b.bin", "train/a.bin")
    ]
    for child in children:
        child.start()
    for child in children:
        assert joined(child) == 0
    assert opened.read() == FILES["labels.csv"]  # the parent reads on
    opened.seek(2)
    assert pickle.loads(pickle.dumps(opened)).read() == FILES["labels.csv"][2:]  # spawned workers
    changed = "valid/with space é.txt"
    dataset.put({changed: b"changed after version 1 was registered"})
    child = context.Process(target=read_in_child, args=(str(cli.home), changed, None))
    child.start()
    assert joined(child) == 0  # in a child too, a changed file fails, never other bytes
    pid = os.fork()
    if pid == 0:  # a file opened before the fork reads in the child too
        opened.seek(0)
        os._exit(0 if opened.read() == FILES["labels.csv"] else 3)
    assert wait_bounded(pid) == 0


def joined(child: multiprocessing.process.BaseProcess) -> int:
    """The exit code of CHILD, killed if it has not ended in time."""
    child.join(SUBPROCESS_TIMEOUT_S)
    if child.exitcode is None:
        child.kill()
        child.join(10)
        pytest.fail("a forked child did not finish reading")
    return child.exitcode


def wait_bounded(pid: int) -> int:
    """The exit status of child PID, killed if it has not ended in time."""
    for _ in range(SUBPROCESS_TIMEOUT_S * 20):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        multiprocessing.connection.wait([], 0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("a forked child did not finish reading")


def test_pandas_and_pyarrow_read_over_amlfs(cli: Cli, dataset: Container, tmp_path: Path) -> None:
    frame = pandas.DataFrame({"day": [1, 2, 3], "temp": [21.5, 23.0, 19.25]})
    table = pyarrow.Table.from_pandas(frame, preserve_index=False)
    parquet = tmp_path / "temps.parquet"
    pyarrow.parquet.write_table(table, parquet)
    dataset.put({"week 27/temps.csv": frame.to_csv(index=False).encode(),
                 "week 27/temps.parquet": parquet.read_bytes()})  # fmt: skip
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")

    options = {"home": str(cli.home)}
    read_back = pandas.read_csv("amlfs://ds:2/week 27/temps.csv", storage_options=options)
    pandas.testing.assert_frame_equal(read_back, frame)
    pandas.testing.assert_frame_equal(
        pandas.read_parquet("amlfs://ds/week 27/temps.parquet", storage_options=options), frame
    )
    fs = filesystem(cli)
    assert pyarrow.parquet.read_table("ds:2/week 27/temps.parquet", filesystem=fs).equals(table)
    with fs.open("ds:2/week 27/temps.csv") as f:
        assert pyarrow.csv.read_csv(f).equals(table)


def test_a_walk_through_a_folder_fetches_its_next_files_ahead(
    cli: Cli, own_emulator: Azurite
) -> None:
    """Files read in listing order, as a loop over a folder reads them: once the second
    starts, the next ones are fetched ahead; read later with storage down, they are there."""
    store = adlfs.AzureBlobFileSystem(
        connection_string=own_emulator.connection_string, skip_instance_cache=True
    )
    files = {f"walk/f{i:02}.bin": bytes([i]) * 5000 for i in range(6)}
    store.mkdir("walk")
    store.pipe({f"walk/{path}": data for path, data in files.items()})
    cli.ok("datastore", "add", "own", "az://walk", "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "w", "--datastore", "own", "--path", "walk")
    walking = f"""
        import fsspec, time
        from amlfs.cache import BlockCache
        from amlfs.home import cache_dir
        from pathlib import Path
        fs = fsspec.filesystem("amlfs", home={str(cli.home)!r})
        fs.cat_file("w:1/f00.bin"), fs.cat_file("w:1/f01.bin")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the files ahead land in the cache
            cache = BlockCache(cache_dir(Path({str(cli.home)!r})))
            blocks = cache.stats().blocks
            cache.close()
            if blocks >= 6:  # the two read and the four after them: a folder's worth
                break
            time.sleep(0.05)
        print(blocks)
    """
    walked = in_subprocess(walking)
    assert walked.returncode == 0, walked.stderr.decode()
    assert int(walked.stdout) == 6
    own_emulator.stop()
    reading = f"""
        import fsspec, sys
        fs = fsspec.filesystem("amlfs", home={str(cli.home)!r}, io_timeout=3)
        sys.stdout.buffer.write(fs.cat_file("w:1/f02.bin") + fs.cat_file("w:1/f03.bin"))
    """
    read_later = in_subprocess(reading)
    assert read_later.returncode == 0, read_later.stderr.decode()
    assert read_later.stdout == files["walk/f02.bin"] + files["walk/f03.bin"]
