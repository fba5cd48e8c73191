"""Histograms of durations, kept as plain counts by the thread that times the requests
(the daemon's event loop) and read at scrape time: timing a request costs a bisect and
two additions, with no lock and nothing of the metrics library on the serving path."""

from __future__ import annotations

from bisect import bisect_left

# Requests to storage: a few ms from a cache next door to the I/O timeout's tens of seconds.
FETCH_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0)  # fmt: skip
# FUSE requests: tens of µs from memory, up to a fetch from storage.
REQUEST_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 10.0)  # fmt: skip


class Timings:
    """How many durations fell at or under each of BOUNDS (seconds, ascending), and their
    sum. One thread observes; another may read a snapshot at any time."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) buckets ending with +Inf, and the sum. The buckets are
        of one copy of the counts, so they agree with each other; the sum may be a
        request ahead or behind."""
        counts, total = list(self.counts), self.total
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, total


def copied(mapping: dict) -> dict:
    """A copy of MAPPING, which another thread may be adding keys to (a copy then fails
    and is taken again; keys are added only on a kind of request's first occurrence)."""
    for _ in range(100):  # bounded: each attempt fails only if a key came meanwhile
        try:
            return dict(mapping)
        except RuntimeError:
            continue
    return {}
