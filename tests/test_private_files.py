"""What amlfs keeps is its user's alone: every folder it makes under HOME is 0700 and
every file 0600, SQLite's and diskcache's included; a state folder of another user is
refused, and so is a cache folder that anyone else could write to. What it makes for
the user elsewhere (a download, an exported manifest, a job's files) keeps the user's
umask."""

from __future__ import annotations

import os
import random
import re
import stat
import subprocess
import sys
from pathlib import Path

from amlfs.mounts import mounted_paths
from tests.conftest import Cli, Container, require
from tests.support.mounts import Mounts
from tests.support.sample import FILES, OPTIONS

# Above diskcache's inline bound (256 KiB): its cached block is a file of its own.
BIG = random.Random(3).randbytes(600 * 1024)
NOBODY = 65534


def loose(folder: Path) -> list[str]:
    """FOLDER and everything under it that group or others may use, with its mode."""
    found = []
    # os.walk, not rglob: it passes over folders removed while it looks (staging).
    walked = [Path(top) / name for top, dirs, files in os.walk(folder) for name in dirs + files]
    for path in [folder, *walked]:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue  # replaced while we looked (a status record)
        if mode & 0o077:
            found.append(f"{path} {mode:04o}")
    return found


def owned_by_nobody(folder: Path) -> Path:
    require(os.geteuid() == 0, "giving a folder to another user needs root")
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    return folder


def with_umask_022(cli: Cli, *args: str) -> subprocess.CompletedProcess:
    """`amlfs ARGS` started the way a user with the usual umask starts it."""
    return subprocess.run(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), *args],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip


def test_everything_amlfs_keeps_is_private(
    cli: Cli, dataset: Container, mounts: Mounts, tmp_path: Path
) -> None:
    dataset.put({"big.bin": BIG})
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    root = mounts.mount("ds:2", "--io-timeout", "5")  # 4 MiB blocks: big.bin's is a file
    assert (root / "big.bin").read_bytes() == BIG
    out = mounts.output("blob:private/out")
    (out / "result.txt").write_text("staged, journaled and uploaded")
    cli.ok("download", "ds:2", str(tmp_path / "dest"))
    # While both serve: their records, logs, journal and staged file are there too.
    assert loose(cli.home) == []
    for path in (root, out):
        mounts.unmount(path)
    assert loose(cli.home) == []
    blocks = cli.home / "cache" / "blocks"
    assert (blocks / "cache.db").exists() and list(blocks.rglob("*.val"))
    assert (cli.home / "transfers.db").exists() and list((cli.home / "logs").iterdir())


def test_a_cache_or_staging_folder_others_could_write_to_is_refused(
    cli: Cli, dataset: Container, mounts: Mounts, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    cases = {
        shared: "is writable by others (mode 0777)",
        owned_by_nobody(tmp_path / "foreign"): f"belongs to uid {NOBODY}",
    }
    for folder, reason in cases.items():
        point = mounts.mountpoint()
        result = cli.process("mount", "ds:1", str(point), "--cache-dir", str(folder), *OPTIONS)
        if result.code == 0:  # the fixture ends the daemon of a mount made anyway
            mounts.pids[point] = int(re.search(r"\(pid (\d+)\)", result.out).group(1))
        assert result.code == 2, result.err
        assert f"cache folder {folder} {reason}" in result.err, result.err
        assert result.err.count("\n") == 1, result.err
        assert str(point) not in mounted_paths()
        result = cli.process("cache", "stats", "--cache-dir", str(folder))
        assert result.code == 2 and reason in result.err, result.err
        assert list(folder.iterdir()) == []

        point = mounts.mountpoint()
        result = cli.process("output", "mount", "blob:out", str(point), "--staging-dir",
                             str(folder))  # fmt: skip
        if result.code == 0:
            mounts.pids[point] = int(re.search(r"\(pid (\d+)\)", result.out).group(1))
        assert result.code == 2 and f"staging folder {folder} {reason}" in result.err, result.err

    fresh = tmp_path / "new" / "cache"
    root = mounts.mount("ds:1", "--cache-dir", str(fresh), *OPTIONS)
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]
    assert loose(tmp_path / "new") == []


def test_a_loose_state_folder_is_made_private_and_another_users_is_refused(
    tmp_path: Path,
) -> None:
    home = tmp_path / "loose"
    home.mkdir()
    os.chmod(home, 0o755)
    result = Cli(home).process("dataset", "list")
    assert result.code == 0, result.err
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert f"state folder {home} was mode 0755; made it 0700" in result.err

    foreign = owned_by_nobody(tmp_path / "foreign")
    result = Cli(foreign).process("dataset", "list")
    assert result.code == 2, result.err
    assert f"state folder {foreign} belongs to uid {NOBODY}" in result.err
    assert result.err.count("\n") == 1, result.err
    assert list(foreign.iterdir()) == []


def test_what_amlfs_makes_for_the_user_keeps_the_users_umask(
    cli: Cli, dataset: Container, tmp_path: Path
) -> None:
    dest, manifest = tmp_path / "dest", tmp_path / "ds.yaml"
    assert with_umask_022(cli, "download", "ds:1", str(dest)).returncode == 0
    assert with_umask_022(cli, "dataset", "export", "ds:1", "-o", str(manifest)).returncode == 0
    for path in [dest / "train", dest / "labels.csv", manifest]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
    job = with_umask_022(cli, "run", "--", "sh", "-c", "umask")
    assert job.returncode == 0 and job.stdout == "0022\n", job.stderr


def test_files_stored_in_a_local_datastore_have_the_users_modes(cli: Cli, tmp_path: Path) -> None:
    """A local folder as a datastore holds the user's data, not amlfs's state."""
    store, src = tmp_path / "store", tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "result.txt").write_bytes(b"shared with the team")
    cli.ok("datastore", "add", "loc", f"file://{store}")
    assert with_umask_022(cli, "upload", str(src), "loc:runs/1").returncode == 0
    for path in [store / "runs", store / "runs" / "1" / "deep", store / "runs/1/deep/result.txt"]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
