"""Waiting, boundedly, for background work (prefetches, write-behind) to show its effect."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest
import trio

WAIT_S = 10.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(WAIT_S):
        while not condition():
            await trio.sleep(0.005)
        return
    pytest.fail(f"not within {WAIT_S} s: {what}")


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """CONDITION, polled outside trio (processes exiting, files appearing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def killed_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str,
                timeout: float = 60.0) -> None:  # fmt: skip
    """SIGKILL PROC as soon as CONDITION holds (polled every 5 ms), which must happen
    while it still runs: WHAT names the moment. PROC is killed and reaped whatever happens."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if condition():
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"it ended before it could be killed {what}"
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
