"""Metric families from what a daemon counts: the status dictionaries `amlfs status`
reads (a mount's record stats), and what only the live daemon has (histograms, FUSE
errors, the cache's size). Every name is documented in docs/metrics.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from amlfs.metrics.timings import Timings, copied

if TYPE_CHECKING:
    from amlfs.cache import BlockCache, HotBlocks
    from amlfs.fuse.operations import CountedOperations

# name: (help, the status key) — counters of a read-only mount's status
READ_COUNTERS = {
    "amlfs_reads": ("FUSE reads answered", "reads"),
    "amlfs_read_bytes": ("Bytes answered to FUSE reads", "bytes_served"),
    "amlfs_fetches": ("Requests to storage answered", "fetches"),
    "amlfs_fetched_bytes": ("Bytes fetched from storage", "bytes_fetched"),
    "amlfs_read_ahead": ("Read-ahead fetches started", "read_aheads"),
    "amlfs_read_errors": ("Reads that failed (EIO): no data in time, or storage failed", "errors"),
    "amlfs_cache_write_errors": (
        "Blocks the disk cache refused to store (full or failing disk)",
        "writes_skipped",
    ),
    "amlfs_cache_damaged_blocks": (
        "Cached blocks that failed their checksum and were fetched again",
        "mended",
    ),
    "amlfs_hints_received": ("Paths sent as read hints", "hints_received"),
    "amlfs_hints_ignored": ("Hinted paths that name no file of the version", "hints_ignored"),
    "amlfs_hints_dropped": ("Hints passed or over the bound before being fetched", "hints_dropped"),
    "amlfs_hinted_fetches": ("Hinted files fetched ahead of the reader", "hinted_fetches"),
    "amlfs_hinted_files_started": ("Hinted files the reader went on to read", "hinted_started"),
}
READ_GAUGES = {
    "amlfs_fetches_in_flight": ("Requests to storage under way", "fetches_in_flight"),
    "amlfs_read_ahead_in_flight": ("Read-ahead fetches under way", "prefetches"),
    "amlfs_cache_writes_pending": (
        "Fetched blocks waiting to be written to the disk cache",
        "pending_writes",
    ),
    "amlfs_read_ahead_depth": (
        "Times the base read-ahead the mount reaches now",
        "read_ahead_depth",
    ),
}
TIERS = {"memory": ("memory_hits", "bytes_from_memory"),
         "disk": ("disk_hits", "bytes_from_disk"),
         "storage": ("misses", "bytes_from_storage")}  # fmt: skip
OUTPUT_GAUGES = {
    "amlfs_uploads_pending": ("Closed files not uploaded yet", "pending_uploads"),
    "amlfs_uploads_pending_bytes": ("Bytes of closed files not uploaded yet", "pending_bytes"),
    "amlfs_uploads_failing": ("Pending uploads whose last attempt failed", "failing"),
}
OUTPUT_COUNTERS = {
    "amlfs_uploads": ("Files uploaded", "uploaded"),
    "amlfs_uploaded_bytes": ("Bytes uploaded", "bytes_uploaded"),
}


class Families:
    """Metric families being gathered, one per name, each sample labelled by the
    mountpoint it counts (a service's endpoint shows all its mounts)."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, kind: type, name: str, doc: str, labels: tuple[str, ...]) -> Any:
        if name not in self._families:
            self._families[name] = kind(name, doc, labels=["mountpoint", *labels])
        return self._families[name]

    def counter(self, name: str, doc: str, point: str, value: float, **labels: str) -> None:
        family = self._family(CounterMetricFamily, name, doc, tuple(labels))
        family.add_metric([point, *labels.values()], value)

    def gauge(self, name: str, doc: str, point: str, value: float, **labels: str) -> None:
        family = self._family(GaugeMetricFamily, name, doc, tuple(labels))
        family.add_metric([point, *labels.values()], value)

    def histogram(self, name: str, doc: str, point: str, timings: Timings,
                  **labels: str) -> None:  # fmt: skip
        family = self._family(HistogramMetricFamily, name, doc, tuple(labels))
        buckets, total = timings.snapshot()
        family.add_metric([point, *labels.values()], buckets, total)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())

    def mount(self, kind: str, what: str, point: str, stats: dict) -> None:
        """The counters of one mount's status (its record's stats, as `amlfs status` reads
        them), KIND "read-only" or "output"."""
        self.gauge("amlfs_mount_info", "A mount served: what it mounts (always 1)", point, 1,
                   kind=kind, what=what)  # fmt: skip
        for operation, count in sorted(stats.get("requests", {}).items()):
            self.counter("amlfs_fuse_requests", "FUSE requests handled, by operation", point,
                         count, operation=operation)  # fmt: skip
        storage = stats.get("storage") or {}
        self.gauge("amlfs_storage_reachable", "1 while storage answers, 0 during an outage",
                   point, 0 if storage.get("state") == "unreachable" else 1)  # fmt: skip
        if kind == "output":
            for name, (doc, key) in OUTPUT_GAUGES.items():
                self.gauge(name, doc, point, stats.get(key, 0))
            for name, (doc, key) in OUTPUT_COUNTERS.items():
                self.counter(name, doc, point, stats.get(key, 0))
            return
        for tier, (blocks, served) in TIERS.items():
            self.counter("amlfs_served_bytes", "Bytes answered to reads, by where their block"
                         " was found", point, stats.get(served, 0), tier=tier)  # fmt: skip
            self.counter("amlfs_blocks", "Blocks taken from memory, the disk cache, or"
                         " storage (reads and read-ahead)", point, stats.get(blocks, 0),
                         tier=tier)  # fmt: skip
        for name, (doc, key) in READ_COUNTERS.items():
            self.counter(name, doc, point, stats.get(key, 0))
        for name, (doc, key) in READ_GAUGES.items():
            self.gauge(name, doc, point, stats.get(key, 0))
        self.gauge("amlfs_fetch_latency_estimate_seconds", "The running estimate of a"
                   " storage request's time that read-ahead follows", point,
                   stats.get("latency_ms", 0) / 1000)  # fmt: skip
        for purpose, key in (("read", "requests_for_reads"),
                             ("read_ahead", "requests_for_read_ahead")):  # fmt: skip
            self.gauge("amlfs_fetch_slots_in_use", "Requests to storage holding a slot, by"
                       " what they are for", point, stats.get(key, 0), purpose=purpose)  # fmt: skip

    def requests(self, point: str, operations: CountedOperations) -> None:
        """What only the live daemon keeps of its FUSE requests: their durations and the
        errors answered."""
        for operation, timings in sorted(copied(operations.timings).items()):
            self.histogram("amlfs_fuse_request_duration_seconds", "Time to answer a FUSE"
                           " request, by operation", point, timings,
                           operation=operation)  # fmt: skip
        for (operation, code), count in sorted(copied(operations.errors).items()):
            self.counter("amlfs_fuse_errors", "FUSE requests answered with an error, by"
                         " operation and errno", point, count, operation=operation,
                         errno=code)  # fmt: skip

    def cache(self, point: str, cache: BlockCache, hot: HotBlocks) -> None:
        """The block cache as this process sees it (a folder mounts may share)."""
        usage = cache.usage()
        if usage is not None:
            size, limit, blocks = usage
            self.gauge("amlfs_cache_size_bytes", "Bytes in the disk cache folder", point, size)
            self.gauge("amlfs_cache_limit_bytes", "Bound of the disk cache folder", point, limit)
            self.gauge("amlfs_cache_blocks", "Blocks in the disk cache folder", point, blocks)
        self.counter("amlfs_cache_evictions", "Blocks this daemon's writes evicted from the"
                     " disk cache (least recently used)", point, cache.evictions)  # fmt: skip
        self.gauge("amlfs_memory_cache_bytes", "Bytes of blocks kept in memory", point,
                   hot.bytes)  # fmt: skip
        self.gauge("amlfs_memory_cache_limit_bytes", "Bound of the blocks kept in memory",
                   point, hot.limit_bytes)  # fmt: skip


class MountCollector:
    """What one mount daemon exposes: its status (STATUS(), the dictionary its record
    carries) and what only the live process has. Called in the exporter's thread."""

    def __init__(self, kind: str, what: str, mountpoint: str, status: Callable[[], dict],
                 operations: CountedOperations, *, fetches: Timings | None = None,
                 cache: BlockCache | None = None, hot: HotBlocks | None = None):  # fmt: skip
        self.kind, self.what, self.point = kind, what, mountpoint
        self.status, self.operations = status, operations
        self.fetches, self.block_cache, self.hot = fetches, cache, hot

    def collect(self) -> Iterator[Metric]:
        families = Families()
        families.mount(self.kind, self.what, self.point, self.status())
        families.requests(self.point, self.operations)
        if self.fetches is not None:
            families.histogram("amlfs_fetch_duration_seconds", "Time storage took to answer"
                               " a request (answered ones)", self.point, self.fetches)  # fmt: skip
        if self.block_cache is not None and self.hot is not None:
            families.cache(self.point, self.block_cache, self.hot)
        return iter(families)


class ServiceCollector:
    """What `amlfs daemon` exposes: its own counts (SUMMARY(): mounts by state, restarts,
    reloads) and the status of each mount it serves, read from their records
    (RECORDS()), so that one endpoint shows every mount of the service. Histograms and
    FUSE errors are on the mounts' own endpoints only."""

    def __init__(self, summary: Callable[[], dict], records: Callable[[], list]):
        self.summary, self.records = summary, records

    def collect(self) -> Iterator[Metric]:
        summary = self.summary()
        mounts = GaugeMetricFamily("amlfs_service_mounts", "Declared mounts, by state",
                                   labels=["state"])  # fmt: skip
        for state in ("serving", "failing", "rejected"):
            mounts.add_metric([state], summary[state])
        yield mounts
        yield CounterMetricFamily("amlfs_service_restarts", "Mount daemons started again"
                                  " after they ended", value=summary["restarts"])  # fmt: skip
        yield CounterMetricFamily("amlfs_service_reloads", "Reloads of the configuration"
                                  " (SIGHUP)", value=summary["reloads"])  # fmt: skip
        families = Families()
        for record in self.records():
            families.mount(record.kind, record.what, record.mountpoint, record.stats)
        yield from families
