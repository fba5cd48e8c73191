"""A large file whose download was killed half way resumes from the bytes already written
and checked, against the emulator: only the missing part is fetched again, a partial file
changed on disk is trusted only up to the change, and the result is byte-identical."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from amlfs.home import registry_path
from amlfs.registry.store import Registry
from amlfs.transfer.download import DownloadReport, download_version
from amlfs.transfer.journal import Journal
from amlfs.transfer.resume import CHUNK
from tests.conftest import CONNECTION_ENV, Cli, Container
from tests.support.waiting import killed_when

SIZE = 96 * 2**20
KILL_AT = 32 * 2**20  # bytes in the partial file before the download is killed
DEADLINE_S = 120.0


@pytest.fixture
def large(cli: Cli, container: Container) -> bytes:
    """One SIZE-byte file registered as `big:1`; its bytes."""
    data = random.Random(7).randbytes(SIZE)
    container.put({"big.bin": data})
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "big", "--datastore", "blob", "--path", ".")
    return data


def partial_files(dest: Path) -> list[Path]:
    return [p for p in dest.iterdir() if p.name.startswith(".amlfs-")] if dest.is_dir() else []


def killed_download(cli: Cli, dest: Path) -> int:
    """Start `amlfs download big DEST`, SIGKILL it once its partial file holds KILL_AT
    bytes; the bytes the partial file holds then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--home", str(cli.home), "download", "big", str(dest)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def far_enough() -> bool:
        found = partial_files(dest)
        return bool(found) and found[0].stat().st_size >= KILL_AT

    killed_when(proc, far_enough, f"with {KILL_AT} bytes written", DEADLINE_S)
    (partial,) = partial_files(dest)
    written = partial.stat().st_size
    assert KILL_AT <= written < SIZE
    return written


def resume(cli: Cli, dest: Path) -> DownloadReport:
    registry = Registry(registry_path(cli.home))
    try:
        report = download_version(cli.home, registry, registry.resolve("big"), dest)
    finally:
        registry.close()
    assert not report.failed
    return report


def test_a_killed_download_of_a_large_file_fetches_only_what_was_missing(
    cli: Cli, large: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    written = killed_download(cli, dest)

    report = resume(cli, dest)
    missing = SIZE - written
    # Chunks written but not yet noted when the kill came are fetched again: at most the
    # piece in flight, a chunk or two.
    assert missing <= report.bytes_fetched <= missing + 2 * CHUNK
    assert report.bytes_fetched + report.bytes_resumed == SIZE
    assert report.bytes_resumed % CHUNK == 0
    assert (dest / "big.bin").read_bytes() == large
    assert partial_files(dest) == []
    journal = Journal(cli.home, durable=False)
    try:
        assert journal.partials(dest.absolute()) == []  # no notes left behind
    finally:
        journal.close()


def test_a_partial_file_changed_on_disk_is_trusted_only_up_to_the_change(
    cli: Cli, large: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    killed_download(cli, dest)
    (partial,) = partial_files(dest)
    fd = os.open(partial, os.O_RDWR)
    try:  # bytes flipped in the second chunk, which was written and noted
        flipped = bytes(b ^ 0xFF for b in os.pread(fd, 16, CHUNK + 1000))
        os.pwrite(fd, flipped, CHUNK + 1000)
    finally:
        os.close(fd)

    report = resume(cli, dest)
    assert report.bytes_resumed == CHUNK  # the first chunk only
    assert report.bytes_fetched == SIZE - CHUNK
    assert (dest / "big.bin").read_bytes() == large


def test_a_partial_file_of_another_etag_is_not_resumed(
    cli: Cli, large: bytes, container: Container, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    killed_download(cli, dest)
    changed = random.Random(8).randbytes(SIZE)
    container.put({"big.bin": changed})
    cli.ok("dataset", "register", "big", "--datastore", "blob", "--path", ".")  # big:2

    report = resume(cli, dest)
    assert (report.bytes_resumed, report.bytes_fetched) == (0, SIZE)
    assert (dest / "big.bin").read_bytes() == changed
    assert partial_files(dest) == []
