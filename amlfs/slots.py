"""Requests to storage in flight, in two budgets: demand before speculation.

A fetch that a process is waiting for (demand) never queues behind read-ahead
(speculation): each has a budget of its own, so eight readers get eight requests in
flight whatever read-ahead is queued, and read-ahead keeps its own requests going
beside them. When more readers wait than their budget holds, read-ahead starts nothing
new until they have their slots: readers come first. A read-ahead fetch that a reader
starts waiting for while it queues moves to the demand budget (`changed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio


@dataclass
class SlotCounts:
    demand: int = 0  # demand fetches in flight
    speculative: int = 0  # read-ahead fetches in flight
    demand_waiting: int = 0  # demand fetches waiting for a slot


class FetchSlots:
    def __init__(self, limit: int):
        self.limit = limit
        self.counts = SlotCounts()
        self._moved = trio.Event()  # set (and replaced) when a slot may have come free

    @asynccontextmanager
    async def slot(self, wanted: Callable[[], bool]) -> AsyncIterator[None]:
        """Hold a slot of the budget WANTED() names (asked again each time slots move)."""
        demand = await self._take(wanted)
        try:
            yield
        finally:
            if demand:
                self.counts.demand -= 1
            else:
                self.counts.speculative -= 1
            self.changed()

    async def _take(self, wanted: Callable[[], bool]) -> bool:
        counts = self.counts
        while True:  # bounded: every slot taken is given back when its request ends
            if wanted():
                if counts.demand < self.limit:
                    counts.demand += 1
                    return True
                counts.demand_waiting += 1
                try:
                    await self._moved.wait()
                finally:
                    counts.demand_waiting -= 1
                    if not counts.demand_waiting:  # read-ahead held back for reads may go on
                        self.changed()
                continue
            if counts.speculative < self.limit and not counts.demand_waiting:
                counts.speculative += 1
                return False
            await self._moved.wait()

    def changed(self) -> None:
        """Wake the fetches waiting for a slot, to look again (a slot came free, or a
        queued read-ahead fetch is now waited for)."""
        self._moved.set()
        self._moved = trio.Event()
