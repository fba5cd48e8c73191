"""Whether a mount's storage can be reached: what its reads found, and a probe.

A read that cannot reach the store at all (StorageUnreachable: connection refused,
connect timed out, name not resolved) starts an outage. From then on, reads that need
storage fail at once instead of each waiting out its time bound, while a probe asks the
store one cheap question (the head of the file whose read failed) about every second,
backing off to a few seconds, until it answers; then reads go to storage again. A read
that gives up because storage did not answer in time is a suspicion only: the probe
asks at once, and only an unreachable store starts an outage. Reads served from memory
or the disk cache, and all metadata, never need storage and go on throughout.

`Health` is the state and its rules, with no clock or I/O of its own; `StorageWatch`
runs it on the mount's event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from amlfs.errors import StorageUnreachable

log = logging.getLogger(__name__)

PROBE_FIRST_S = 1.0  # the first probe after an outage begins, then 1.5 times longer each
PROBE_MAX_S = 2.0  # apart at most: storage back is seen within this and one probe
PROBE_TIMEOUT_S = 5.0  # a probe with no answer by then failed (its client gives up sooner)


@dataclass
class Health:
    """Reachable, or unreachable since a time, with the last error and the probes since."""

    reachable: bool = True
    since: float | None = None  # when the outage began (seconds since the epoch)
    error: str | None = None  # the latest failure to reach the store, during an outage
    probes: int = 0  # probes that failed during this outage
    target: str | None = None  # what the probe asks about: the file a read failed on

    def lost(self, error: str, target: str, now: float) -> bool:
        """A request could not reach the store. True if this begins an outage."""
        self.error, self.target = error, target
        if not self.reachable:
            return False
        self.reachable, self.since, self.probes = False, now, 0
        return True

    def probe_failed(self, error: str) -> None:
        """The probe could not reach the store either: the outage goes on."""
        self.probes += 1
        self.error = error

    def answered(self) -> bool:
        """The store answered (a probe or a read). True if this ends an outage."""
        if self.reachable:
            return False
        self.reachable, self.since, self.error, self.probes = True, None, None, 0
        return True

    def probe_delay(self) -> float:
        """How long to wait before the next probe: longer after each failed one, capped."""
        return min(PROBE_MAX_S, PROBE_FIRST_S * 1.5**self.probes)

    def describe(self) -> str:
        if self.reachable:
            return "storage reachable"
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since or 0))
        return f"storage unreachable since {since}: {self.error}"

    def public(self) -> dict:
        """For `amlfs status`: the state, and during an outage since when and why."""
        if self.reachable:
            return {"state": "reachable"}
        return {"state": "unreachable", "since": self.since, "error": self.error,
                "probes": self.probes}  # fmt: skip


class StorageWatch:
    """A mount's Health, told by its reads (`lost`, `answered`, `suspect`) and, while
    the store is unreachable, by a probe run in `run` (a task of the mount's nursery).

    PROBE(target) makes one cheap request in a worker thread: it returns if the store
    answered and raises StorageUnreachable if not (Store.probe).
    """

    def __init__(self, probe: Callable[[str], None]):
        self.health = Health()
        self._probe = probe
        self._limiter = trio.CapacityLimiter(1)  # one probe at a time, also one abandoned
        self._wake = trio.Event()  # set when the probe has something to do
        self._back = trio.Event()  # set when an outage ends; replaced when one begins
        self._suspect: str | None = None  # a file whose read got no answer in time

    @property
    def reachable(self) -> bool:
        return self.health.reachable

    def lost(self, error: StorageUnreachable, target: str) -> None:
        """A read could not reach the store at all."""
        if self.health.lost(str(error), target, time.time()):
            log.error("storage unreachable (%s); reads that need it fail at once until it "
                      "answers again", error)  # fmt: skip
            self._back = trio.Event()
            self._wake.set()

    def answered(self) -> None:
        """A read got its answer from the store."""
        since = self.health.since
        if self.health.answered():
            log.warning("storage reachable again after %.0f s; reads go to it again",
                        time.time() - (since or 0))  # fmt: skip
            self._back.set()

    def suspect(self, target: str) -> None:
        """A read of TARGET got no answer in time: ask the store now whether it is there."""
        if self.health.reachable:
            self._suspect = target
            self._wake.set()

    async def back(self) -> None:
        """Return once the store is reachable (at once if it is)."""
        if not self.health.reachable:
            await self._back.wait()

    async def run(self) -> None:
        """Probe while the store is unreachable (and once when a read suspects it)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self.health.reachable and self._suspect is not None:
                target, self._suspect = self._suspect, None
                await self._probe_once(target)
            while not self.health.reachable:
                await trio.sleep(self.health.probe_delay())
                if not self.health.reachable:  # a read may have found it back meanwhile
                    await self._probe_once(self.health.target or "")

    async def _probe_once(self, target: str) -> None:
        with trio.move_on_after(PROBE_TIMEOUT_S):
            try:
                # Abandoned at the bound; the limiter is held until its thread ends, so
                # probes of a store that hangs never pile up.
                await trio.to_thread.run_sync(self._probe, target, limiter=self._limiter,
                                              abandon_on_cancel=True)  # fmt: skip
            except StorageUnreachable as error:
                if self.health.reachable:
                    self.lost(error, target)
                else:
                    self.health.probe_failed(str(error))
                return
            except Exception:
                # Not a verdict on the store: let reads try it (they find an outage again).
                log.exception("the storage probe failed unexpectedly")
            self.answered()
            return
        if not self.health.reachable:
            self.health.probe_failed(f"no answer to a probe within {PROBE_TIMEOUT_S:g} s")
