"""The Prometheus endpoint of mount daemons and of `amlfs daemon`: off unless asked for,
bound to the address given, in the exposition format, and counting what the mount does
(reads and bytes by tier, fetches, uploads), the same counters `amlfs status` shows."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from amlfs.cache import BlockCache, BlockKey
from amlfs.errors import UserError
from amlfs.metrics.collect import Families
from amlfs.metrics.exporter import parse_address
from amlfs.metrics.timings import Timings
from amlfs.mounts import mounted_paths
from tests.conftest import Cli, Container
from tests.support.azurite import free_port
from tests.support.mounts import Mounts, status_of
from tests.support.sample import FILES, OPTIONS
from tests.support.waiting import until
from tests.test_daemon import Service

BIG = "train/a.bin"  # several 64 KiB blocks
WAIT_S = 30.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def address() -> str:
    return f"127.0.0.1:{free_port()}"


def scrape(where: str) -> Samples:
    """Every sample at http://WHERE/metrics, parsed as the Prometheus text format."""
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith(("amlfs_", "process_")), family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of NAME's samples whose labels include LABELS (0 if none)."""
    return sum(v for (n, found), v in samples.items()
               if n == name and set(labels.items()) <= set(found))  # fmt: skip


def drop_from_page_cache(path: Path) -> None:
    """The kernel forgets the file's pages: the next read is asked of the daemon."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# --- pure logic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:9101", ("127.0.0.1", 9101)), ("[::1]:80", ("::1", 80)),
     ("0.0.0.0:65535", ("0.0.0.0", 65535))],
)  # fmt: skip
def test_an_address_is_an_ip_and_a_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "9101", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
             "localhost:9101", "127.0.0.1:port", "::1:80", "http://127.0.0.1:9101"],
)  # fmt: skip
def test_anything_else_is_bad_input(text: str) -> None:
    with pytest.raises(UserError, match="expected IP:PORT"):
        parse_address(text)


def test_timings_are_cumulative_buckets_ending_with_everything() -> None:
    timings = Timings((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 2.0):
        timings.observe(seconds)
    buckets, total = timings.snapshot()
    assert buckets == [("0.01", 2), ("0.1", 3), ("1.0", 3), ("+Inf", 4)]
    assert total == pytest.approx(2.065)


def test_a_status_becomes_families_labelled_by_mountpoint() -> None:
    families = Families()
    for point, reads in (("/a", 3), ("/b", 4)):
        families.mount("read-only", "ds:1", point, {
            "reads": reads, "bytes_from_disk": 10, "requests": {"read": reads},
            "storage": {"state": "unreachable"},
        })  # fmt: skip
    found = {family.name: family for family in families}
    assert [s.value for s in found["amlfs_reads"].samples] == [3, 4]
    assert found["amlfs_reads"].type == "counter"
    disk = [s for s in found["amlfs_served_bytes"].samples if s.labels["tier"] == "disk"]
    assert [(s.labels["mountpoint"], s.value) for s in disk] == [("/a", 10), ("/b", 10)]
    assert {s.value for s in found["amlfs_storage_reachable"].samples} == {0}


def test_evictions_are_counted_and_the_cache_says_its_size(tmp_path: Path) -> None:
    block = 256 * 1024
    cache = BlockCache(tmp_path / "blocks", 4 * block)
    try:
        for index in range(12):
            assert cache.put(BlockKey("az://c/f", "etag", block, index), os.urandom(block))
        size, limit, blocks = cache.usage()
        assert limit == 4 * block
        assert blocks < 12 and size >= blocks * block
        # diskcache evicts entries in batches: the blocks gone, and maybe an entry kept
        # beside them (the format, the lookup totals)
        assert 12 - blocks <= cache.evictions <= 12 - blocks + 3
    finally:
        cache.close()


# --- through real mounts ---------------------------------------------------------------


def test_the_counters_move_as_reads_through_a_mount_do(
    cli: Cli, dataset: Container, mounts: Mounts
) -> None:
    where = address()
    root = mounts.mount("ds:1", *OPTIONS, "--metrics-address", where)
    before = scrape(where)
    assert value(before, "amlfs_reads_total") == 0
    assert value(before, "amlfs_mount_info", kind="read-only", what="ds:1",
                 mountpoint=str(root)) == 1  # fmt: skip
    assert value(before, "amlfs_storage_reachable") == 1
    assert value(before, "amlfs_cache_limit_bytes") == 10 * 2**30  # the default bound
    assert value(before, "process_resident_memory_bytes") > 0

    data = (root / BIG).read_bytes()  # cold: from storage
    assert data == FILES[BIG]
    cold = scrape(where)
    assert value(cold, "amlfs_reads_total") > 0
    assert value(cold, "amlfs_read_bytes_total") >= len(data)
    assert value(cold, "amlfs_fetches_total") > 0
    assert value(cold, "amlfs_fetched_bytes_total") >= len(data)
    assert value(cold, "amlfs_served_bytes_total", tier="storage") > 0
    assert value(cold, "amlfs_fetch_duration_seconds_count") >= value(cold, "amlfs_fetches_total")
    assert value(cold, "amlfs_fuse_request_duration_seconds_count", operation="read") == value(
        cold, "amlfs_fuse_requests_total", operation="read") > 0  # fmt: skip
    reads = value(cold, "amlfs_fuse_requests_total", operation="read")
    assert value(cold, "amlfs_fuse_request_duration_seconds_bucket", operation="read",
                 le="+Inf") == reads  # fmt: skip
    assert value(cold, "amlfs_fuse_errors_total") == 0  # ENOSYS to open is not an error
    served = sum(value(cold, "amlfs_served_bytes_total", tier=t)
                 for t in ("memory", "disk", "storage"))  # fmt: skip
    assert served == value(cold, "amlfs_read_bytes_total")

    # `amlfs status` reads the same counters (its record is written every second).
    status = status_of(cli, root)
    now = scrape(where)
    assert status["reads"] == value(now, "amlfs_reads_total")
    assert status["bytes_served"] == value(now, "amlfs_read_bytes_total")
    assert status["fetches"] == value(now, "amlfs_fetches_total")
    assert status["misses"] == value(now, "amlfs_blocks_total", tier="storage")

    drop_from_page_cache(root / BIG)  # read again: asked of the daemon, which has it
    assert (root / BIG).read_bytes() == data
    warm = scrape(where)
    assert value(warm, "amlfs_read_bytes_total") >= value(now, "amlfs_read_bytes_total") + len(data)
    assert value(warm, "amlfs_fetches_total") == value(now, "amlfs_fetches_total")
    assert value(warm, "amlfs_served_bytes_total", tier="storage") == value(
        now, "amlfs_served_bytes_total", tier="storage")  # fmt: skip
    from_cache = sum(value(warm, "amlfs_served_bytes_total", tier=t) - value(
        now, "amlfs_served_bytes_total", tier=t) for t in ("memory", "disk"))  # fmt: skip
    assert from_cache >= len(data)
    until(lambda: value(scrape(where), "amlfs_cache_size_bytes") >= len(data),
          "the blocks written to the disk cache")  # fmt: skip

    mounts.unmount(root)
    with pytest.raises(OSError):  # the endpoint ends with the mount
        scrape(where)


def test_a_fresh_mount_serves_a_cached_file_from_disk_not_storage(
    dataset: Container, mounts: Mounts
) -> None:
    first = mounts.mount("ds:1", *OPTIONS)
    assert (first / BIG).read_bytes() == FILES[BIG]
    mounts.unmount(first)  # its blocks stay in the shared disk cache

    where = address()
    root = mounts.mount("ds:1", *OPTIONS, "--metrics-address", where)
    assert (root / BIG).read_bytes() == FILES[BIG]
    samples = scrape(where)
    assert value(samples, "amlfs_fetches_total") == 0
    assert value(samples, "amlfs_served_bytes_total", tier="storage") == 0
    assert value(samples, "amlfs_served_bytes_total", tier="disk") + value(
        samples, "amlfs_served_bytes_total", tier="memory") >= len(FILES[BIG])  # fmt: skip
    assert value(samples, "amlfs_blocks_total", tier="disk") > 0


def test_an_output_mount_counts_its_uploads(dataset: Container, mounts: Mounts) -> None:
    where = address()
    out = mounts.output("blob:metrics/out", "--metrics-address", where)
    assert value(scrape(where), "amlfs_mount_info", kind="output", what="blob:metrics/out") == 1
    payload = b"counted once uploaded\n" * 1000
    (out / "result.bin").write_bytes(payload)  # closed: journaled, then uploaded

    until(lambda: value(scrape(where), "amlfs_uploads_total") == 1, "the upload counted",
          timeout=WAIT_S)  # fmt: skip
    samples = scrape(where)
    assert value(samples, "amlfs_uploaded_bytes_total") == len(payload)
    assert value(samples, "amlfs_uploads_pending") == 0
    assert value(samples, "amlfs_uploads_failing") == 0
    assert value(samples, "amlfs_fuse_requests_total", operation="write") > 0
    assert value(samples, "amlfs_fuse_request_duration_seconds_count", operation="flush") > 0
    mounts.unmount(out)
    assert dataset.fs.cat_file(f"{dataset.name}/metrics/out/result.bin") == payload


def test_no_endpoint_unless_asked_for(dataset: Container, mounts: Mounts) -> None:
    root = mounts.mount("ds:1", *OPTIONS)
    assert (root / "labels.csv").read_bytes() == FILES["labels.csv"]
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    pid = mounts.pids[root]
    sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    inodes = {link[8:-1] for link in sockets if link.startswith("socket:[")}
    listeners = [line.split()[9] for line in listening.splitlines()[1:]
                 if line.split()[3] == "0A"]  # fmt: skip
    assert not inodes & set(listeners)


@pytest.mark.parametrize("bad", ["127.0.0.1", "localhost:9101", "in use"])
def test_a_bad_address_is_refused_in_one_line_before_mounting(
    cli: Cli, dataset: Container, mounts: Mounts, bad: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if bad == "in use":
            bad = f"127.0.0.1:{taken.getsockname()[1]}"
        for command in (["mount", "ds:1"], ["output", "mount", "blob:bad"]):
            point = mounts.mountpoint()
            result = cli.process(*command, str(point), "--metrics-address", bad)
            assert result.code == 2, result.err
            assert len(result.err.strip().splitlines()) == 1, result.err
            assert result.err.startswith("amlfs: error: ")
            assert str(point) not in mounted_paths()


# --- amlfs daemon ----------------------------------------------------------------------


@pytest.fixture
def service(cli: Cli, dataset: Container, tmp_path: Path, mounts: Mounts):
    helper = Service(cli, tmp_path)
    try:
        yield helper
    finally:
        helper.cleanup()


def test_the_daemon_shows_its_mounts_and_each_mount_its_own(
    service: Service, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    own, child = address(), address()
    service.config.write_text(yaml.safe_dump({
        "metrics_address": own,
        "mounts": [{"mountpoint": str(data), "dataset": "ds:1", "block_size": "64KiB",
                    "metrics_address": child},
                   {"mountpoint": str(tmp_path / "bad"), "dataset": "ds:1",
                    "metrics_address": "nowhere"}],
    }))  # fmt: skip
    service.start()
    service.wait_for("READY=1")
    samples = scrape(own)
    assert value(samples, "amlfs_service_mounts", state="serving") == 1
    assert value(samples, "amlfs_service_mounts", state="rejected") == 1  # "nowhere"
    assert value(samples, "amlfs_service_reloads_total") == 0

    assert (data / BIG).read_bytes() == FILES[BIG]
    reads = value(scrape(child), "amlfs_read_bytes_total")  # the child's own endpoint
    assert reads >= len(FILES[BIG])
    until(lambda: value(scrape(own), "amlfs_read_bytes_total", mountpoint=str(data)) == reads,
          "the service showing its mount's record")  # fmt: skip

    service.signal(signal.SIGHUP)
    service.wait_for("READY=1")
    assert value(scrape(own), "amlfs_service_reloads_total") == 1
    code, err = service.stop()
    assert code == 0, err


def test_the_daemon_refuses_a_bad_address_before_serving(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "mounts.yaml"
    config.write_text(yaml.safe_dump({"metrics_address": "nowhere", "mounts": []}))
    result = cli.process("daemon", "--config", str(config))
    assert result.code == 2
    assert result.err.strip() == (f"amlfs: error: {config}: metrics_address: expected IP:PORT,"
                                  " e.g. 127.0.0.1:9101; got 'nowhere'")  # fmt: skip
    result = cli.process("daemon", "--config", str(config), "--metrics-address", "1.2.3.4")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
