"""Progress of a transfer: a bar on a terminal, a quiet line now and then otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType

import click
from tqdm import tqdm

from amlfs.cli.output import human_bytes

QUIET_EVERY_S = 10.0  # without a terminal (logs, CI): one line this often


class TransferProgress:
    """Files and bytes done of a known total, with rate and time left."""

    def __init__(self, verb: str, total_files: int, total_bytes: int):
        self.verb, self.total_files, self.total_bytes = verb, total_files, total_bytes
        self.files = self.done_bytes = 0
        self.started = self._last_line = time.monotonic()
        self._bar = (
            tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=verb, file=sys.stderr, dynamic_ncols=True, leave=False)
            if sys.stderr.isatty() else None
        )  # fmt: skip

    def advance(self, nbytes: int) -> None:
        self.files += 1
        self.done_bytes += nbytes
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)
            self._bar.update(nbytes)
            return
        if time.monotonic() - self._last_line >= QUIET_EVERY_S:
            self._last_line = time.monotonic()
            click.echo(self.line(), err=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = self.done_bytes
        rate = done / elapsed
        left = (self.total_bytes - done) / rate if rate > 0 else float("nan")
        return (
            f"amlfs: {self.verb}: {self.files}/{self.total_files} files,"
            f" {human_bytes(done)} of {human_bytes(self.total_bytes)},"
            f" {human_bytes(int(rate))}/s, about {left:.0f} s left"
        )

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if self._bar is not None:
            self._bar.close()
