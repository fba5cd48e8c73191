"""Storage outages: the state a mount keeps of its storage, the probe that watches it, and
what reads do meanwhile. Pure logic, with an in-memory store whose reachability the test
switches; through a real mount and the emulator in test_mount_faults.py."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from amlfs import health
from amlfs.errors import StorageUnreachable
from amlfs.health import Health, StorageWatch
from amlfs.reader import ReadFailed
from tests.support.waiting import WAIT_S, eventually
from tests.test_reader import BLOCK, FakeStore, content, open_reader, pinned

DOWN = StorageUnreachable("datastore 'blob': cannot read f.bin: connection refused")


# --- the state ---------------------------------------------------------------------------


def test_an_outage_begins_with_the_first_failure_and_ends_with_the_first_answer() -> None:
    state = Health()
    assert state.public() == {"state": "reachable"}
    assert state.lost("refused", "a.bin", now=100.0)
    assert not state.lost("refused again", "b.bin", now=105.0)  # the same outage goes on
    state.probe_failed("still refused")
    assert state.public() == {"state": "unreachable", "since": 100.0, "error": "still refused",
                              "probes": 1}  # fmt: skip
    assert state.target == "b.bin"  # the probe asks about a file a read just failed on
    assert "unreachable since 1970-01-01 00:01:40 UTC: still refused" in state.describe()
    assert state.answered()
    assert not state.answered()
    assert state.public() == {"state": "reachable"}
    assert state.lost("refused", "a.bin", now=200.0)  # a new outage, counted afresh
    assert state.public()["since"] == 200.0 and state.probes == 0


def test_probes_come_every_second_at_first_then_back_off_to_a_small_cap() -> None:
    state = Health()
    state.lost("refused", "a.bin", now=0.0)
    delays = []
    for _ in range(6):
        delays.append(state.probe_delay())
        state.probe_failed("refused")
    assert delays[0] == health.PROBE_FIRST_S
    assert delays == sorted(delays) and delays[-1] == health.PROBE_MAX_S


# --- the probe ---------------------------------------------------------------------------


class Switch:
    """A store's reachability, as a probe sees it; counts the probes."""

    def __init__(self) -> None:
        self.down = False
        self.probes: list[str] = []

    def probe(self, target: str) -> None:
        self.probes.append(target)
        self.check()

    def check(self) -> None:
        if self.down:
            raise DOWN


@pytest.fixture
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "PROBE_FIRST_S", 0.01)
    monkeypatch.setattr(health, "PROBE_MAX_S", 0.02)


@asynccontextmanager
async def watching(switch: Switch) -> AsyncIterator[StorageWatch]:
    async with trio.open_nursery() as nursery:
        watch = StorageWatch(switch.probe)
        nursery.start_soon(watch.run)
        yield watch
        nursery.cancel_scope.cancel()


async def test_the_probe_runs_only_during_an_outage_and_ends_it_when_the_store_answers(
    quick_probes: None,
) -> None:
    switch = Switch()
    async with watching(switch) as watch:
        await trio.testing.wait_all_tasks_blocked()
        assert switch.probes == []  # nothing asked while storage is reachable
        switch.down = True
        watch.lost(DOWN, "a.bin")
        await eventually(lambda: watch.health.probes >= 3, "probes while unreachable")
        assert not watch.reachable and set(switch.probes) == {"a.bin"}
        switch.down = False
        with trio.fail_after(WAIT_S):
            await watch.back()
        assert watch.reachable
        probed = len(switch.probes)
        await trio.sleep(10 * health.PROBE_MAX_S)
        assert len(switch.probes) == probed  # and none once it answered


async def test_a_read_that_got_no_answer_in_time_has_the_store_probed_at_once(
    quick_probes: None,
) -> None:
    switch = Switch()
    async with watching(switch) as watch:
        watch.suspect("slow.bin")  # the store answers: only slow, no outage
        await eventually(lambda: switch.probes == ["slow.bin"], "one probe")
        await trio.testing.wait_all_tasks_blocked()
        assert watch.reachable and switch.probes == ["slow.bin"]
        switch.down = True
        watch.suspect("slow.bin")  # the store is not there at all: an outage
        await eventually(lambda: not watch.reachable, "the outage found by the probe")
        assert watch.health.target == "slow.bin"


async def test_a_probe_that_hangs_is_abandoned_at_its_bound_and_never_doubled(
    quick_probes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "PROBE_TIMEOUT_S", 0.05)
    release = threading.Event()
    started: list[str] = []

    def hang(target: str) -> None:
        started.append(target)
        release.wait(WAIT_S)
        raise DOWN

    async with trio.open_nursery() as nursery:
        watch = StorageWatch(hang)
        nursery.start_soon(watch.run)
        watch.lost(DOWN, "a.bin")
        await eventually(lambda: watch.health.probes >= 3, "probes counted as failed")
        assert "no answer to a probe" in (watch.health.error or "")
        assert len(started) == 1  # the hung one holds the only probe slot
        release.set()
        await eventually(lambda: len(started) >= 2, "the next probe once the hung one ended")
        nursery.cancel_scope.cancel()


# --- reads during an outage --------------------------------------------------------------


@asynccontextmanager
async def outage_reader(store: FakeStore, switch: Switch, folder: Path, io_timeout: float):
    """A reader whose storage is STORE, reachable as SWITCH says, with its watch running."""
    store.fail = lambda _attempt: switch.check()
    async with watching(switch) as watch, open_reader(store, folder, io_timeout=io_timeout) as r:
        r.storage = watch
        yield r


async def test_while_storage_is_unreachable_reads_fail_at_once_and_recover_when_it_answers(
    tmp_path: Path, quick_probes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content(8 * BLOCK)
    store, switch = FakeStore({"f.bin": data}), Switch()
    blob = pinned("f.bin", len(data))
    monkeypatch.setattr(health, "PROBE_MAX_S", 0.05)
    async with outage_reader(store, switch, tmp_path, io_timeout=0.2) as reader:
        assert await reader.read(blob, 0, 100) == data[:100]  # block 0 is cached
        switch.down = True
        with pytest.raises(ReadFailed):  # found the outage: waited its bound for the store
            await reader.read(blob, BLOCK, 100)
        assert not reader.storage.reachable
        requests = len(store.calls)
        for index in range(2, 6):  # the next fail without a request, whatever their bound
            reader.io_timeout = WAIT_S
            with trio.fail_after(WAIT_S / 2), pytest.raises(ReadFailed, match="unreachable"):
                await reader.read(blob, index * BLOCK, 100)
        assert len(store.calls) == requests
        assert await reader.read(blob, 10, 100) == data[10:110]  # what is cached is served
        switch.down = False
        with trio.fail_after(WAIT_S):
            await reader.storage.back()
        assert await reader.read(blob, 5 * BLOCK, 100) == data[5 * BLOCK : 5 * BLOCK + 100]


async def test_the_read_that_finds_the_outage_succeeds_if_storage_returns_within_its_bound(
    tmp_path: Path, quick_probes: None
) -> None:
    data = content(2 * BLOCK)
    store, switch = FakeStore({"f.bin": data}), Switch()
    blob = pinned("f.bin", len(data))
    switch.down = True
    async with outage_reader(store, switch, tmp_path, io_timeout=WAIT_S) as reader:
        got: list[bytes] = []

        async def read() -> None:
            got.append(bytes(await reader.read(blob, BLOCK, 100)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await eventually(lambda: reader.storage.health.probes >= 1, "an outage, probed")
            switch.down = False
        assert got == [data[BLOCK : BLOCK + 100]]


async def test_a_changed_source_is_not_an_outage(tmp_path: Path, quick_probes: None) -> None:
    data = content(BLOCK)
    store, switch = FakeStore({"f.bin": data}), Switch()
    changed = replace(pinned("f.bin", len(data)), etag='"other"')
    async with outage_reader(store, switch, tmp_path, io_timeout=WAIT_S) as reader:
        with pytest.raises(ReadFailed, match="changed since it was pinned"):
            await reader.read(changed, 0, 100)
        assert reader.storage.reachable and switch.probes == []
