"""Block files are written past the page cache where the disk allows it (O_DIRECT), with
every byte intact whatever the length, and through the page cache where it does not.

On the real disk under the test's temporary folder; `fincore` (util-linux) tells which
pages of a file the page cache holds. A disk that refuses O_DIRECT is played by refusing
the flag in fcntl or os.write, the only way to have one on demand.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from pathlib import Path

import pytest

import amlfs.cache.direct
from amlfs.cache import BlockCache, BlockKey
from amlfs.cache.direct import ALIGN, O_DIRECT, DirectFiles

MIB = 2**20


def resident_bytes(path: Path) -> int:
    """How much of PATH the page cache holds now."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                          str(path)], capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.strip())


@pytest.mark.parametrize("length", [1, ALIGN - 1, ALIGN, ALIGN + 1, 64 * 1024 + 13, 4 * MIB])
def test_every_byte_is_written_whatever_the_length(tmp_path: Path, length: int) -> None:
    files = DirectFiles()
    data = os.urandom(length)
    files.create(str(tmp_path / "block"), data)
    assert (tmp_path / "block").read_bytes() == data
    assert files.direct  # this disk takes O_DIRECT: nothing fell back


def test_a_block_file_leaves_only_its_unaligned_tail_in_the_page_cache(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path / "blocks", 64 * MIB)
    try:
        data = os.urandom(4 * MIB + 100)  # a file's last block ends where the file does
        key = BlockKey("az://account/c/big.bin", '"0x1"', 8 * MIB, 0)
        assert cache.put(key, data)
        [block_file] = [p for p in (tmp_path / "blocks").rglob("*.val") if p.stat().st_size
                        == len(data)]  # fmt: skip
        assert resident_bytes(block_file) <= ALIGN  # the 100-byte tail's page at most
        assert cache.get(key, len(data)) == data
    finally:
        cache.close()


def test_every_spare_buffer_fits_the_largest_write(tmp_path: Path) -> None:
    files = DirectFiles()
    for number, length in enumerate([3 * ALIGN, 4 * MIB, 2 * ALIGN + 1, 4 * MIB]):
        files.create(str(tmp_path / f"block{number}"), os.urandom(length))
    assert files._spare and all(len(buffer) >= 4 * MIB for buffer in files._spare)


def test_a_name_taken_is_never_written_over(tmp_path: Path) -> None:
    (tmp_path / "block").write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        DirectFiles().create(str(tmp_path / "block"), os.urandom(2 * ALIGN))
    assert (tmp_path / "block").read_bytes() == b"kept"


def refused(error_at: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this disk refuse O_DIRECT as some do: when the flag is set, or at the first
    write with it."""
    real_fcntl, real_write = fcntl.fcntl, os.write

    def fcntl_refusing(fd: int, command: int, arg: int = 0) -> int:
        if error_at == "set" and command == fcntl.F_SETFL and arg & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    def write_refusing(fd: int, data: object) -> int:
        if error_at == "write" and real_fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(amlfs.cache.direct.fcntl, "fcntl", fcntl_refusing)
    monkeypatch.setattr(amlfs.cache.direct.os, "write", write_refusing)


@pytest.mark.parametrize("error_at", ["set", "write"])
def test_a_disk_that_refuses_o_direct_gets_every_write_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error_at: str
) -> None:
    refused(error_at, monkeypatch)
    files = DirectFiles()
    first, second = os.urandom(3 * ALIGN + 7), os.urandom(2 * ALIGN)
    files.create(str(tmp_path / "first"), first)
    assert not files.direct  # noticed once, and remembered
    files.create(str(tmp_path / "second"), second)
    assert (tmp_path / "first").read_bytes() == first
    assert (tmp_path / "second").read_bytes() == second
