"""FetchSlots: requests to storage in two budgets, reads before read-ahead."""

from __future__ import annotations

import trio
import trio.testing

from amlfs.slots import FetchSlots


async def hold(slots: FetchSlots, wanted: list[bool], taken: list[str], name: str,
               release: trio.Event) -> None:  # fmt: skip
    async with slots.slot(lambda: wanted[0]):
        taken.append(name)
        await release.wait()


async def test_reads_and_read_ahead_each_have_their_budget() -> None:
    slots = FetchSlots(2)
    taken: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(hold, slots, [False], taken, f"ahead{i}", release)
        await trio.testing.wait_all_tasks_blocked()  # read-ahead has its slots, one queues
        for i in range(3):
            nursery.start_soon(hold, slots, [True], taken, f"read{i}", release)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(name[:4] for name in taken) == ["ahea", "ahea", "read", "read"]
        assert (slots.counts.demand, slots.counts.speculative) == (2, 2)
        release.set()
    assert len(taken) == 6
    assert (slots.counts.demand, slots.counts.speculative) == (0, 0)


async def test_read_ahead_starts_nothing_while_reads_wait_for_a_slot() -> None:
    slots = FetchSlots(1)
    taken: list[str] = []
    first, rest = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, slots, [True], taken, "read0", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, slots, [True], taken, "read1", rest)  # waits for read0
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, slots, [False], taken, "ahead", rest)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["read0"]  # a free read-ahead slot, but a read waits
        first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["read0", "read1", "ahead"]
        rest.set()


async def test_queued_read_ahead_moves_to_the_reads_budget_once_waited_for() -> None:
    slots = FetchSlots(1)
    taken: list[str] = []
    release = trio.Event()
    wanted = [False]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, slots, [False], taken, "ahead0", release)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, slots, wanted, taken, "ahead1", release)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["ahead0"]  # read-ahead's one slot is taken
        wanted[0] = True  # a reader now waits for ahead1
        slots.changed()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["ahead0", "ahead1"] and slots.counts.demand == 1
        release.set()
