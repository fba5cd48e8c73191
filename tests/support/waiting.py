"""Waiting, boundedly, for background work (prefetches, write-behind) to show its effect."""

from __future__ import annotations

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
