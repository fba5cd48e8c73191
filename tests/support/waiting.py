"""Waiting, boundedly, for background work (prefetches, write-behind) to show its effect."""

from __future__ import annotations

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
