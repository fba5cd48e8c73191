"""What the side-by-side benchmark measures: data set sizes, systems (columns) and workloads (rows).

Nothing here runs anything; `bench/__main__.py` walks this plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

MiB = 2**20
KiB = 2**10


@dataclass(frozen=True)
class Scale:
    """Sizes and time bounds of one run; the presets below, overridable by flags."""

    large_files: int  # large-file set: sequential and random reads, transfers
    large_mib: int
    images: int  # image-like set: many ~100 KiB files in a few dozen folders
    image_kib: int
    image_folders: int
    meta_files: int  # metadata set: tiny files for find and walk+stat
    register_files: int  # registration on a file:// datastore (empty local files)
    million: int  # files in the registry-only version for mount time and RSS
    rand_seconds: float  # fio random-read runtime
    cap_seconds: float  # time bound of any one file-by-file workload

    def public(self) -> dict:
        return asdict(self)


PRESETS = {
    # For the test suite: proves the harness end to end in seconds.
    "smoke": Scale(2, 4, 40, 100, 4, 200, 500, 2_000, 1.0, 5.0),
    # Under 3 minutes on a 2-core machine.
    "quick": Scale(2, 64, 400, 100, 8, 2_000, 10_000, 50_000, 1.5, 8.0),
    # Under 30 minutes: the figures in docs/performance.md.
    "full": Scale(4, 256, 5_000, 100, 50, 50_000, 100_000, 1_000_000, 8.0, 30.0),
}


def scale_with(preset: str, overrides: dict) -> Scale:
    chosen = {f.name: overrides[f.name] for f in fields(Scale) if overrides.get(f.name) is not None}
    return replace(PRESETS[preset], **chosen)


@dataclass(frozen=True)
class System:
    key: str
    label: str
    backends: tuple[str, ...]  # "azurite", "file"


# Columns, in the order of the tables. Local disk is the physical ceiling of both backends
# (the same bytes, measured once); "direct" is the no-FUSE ceiling of the emulator: adlfs
# with the best parallelism it offers. In the operations table, "direct" is the same calls
# through fsspec on either backend.
SYSTEMS = (
    System("local-cold", "local disk, cold", ("azurite", "file", "cloud")),
    System("local-warm", "local disk, page cache", ("azurite", "file", "cloud")),
    System("direct", "adlfs direct", ("azurite",)),
    System("rclone-full", "rclone full", ("azurite", "cloud")),
    System("rclone-off", "rclone off", ("azurite",)),
    System("amlfs-cold", "amlfs cold", ("azurite", "file", "cloud")),
    System("amlfs-block", "amlfs block cache", ("azurite", "file")),
    System("amlfs-page", "amlfs page cache", ("azurite", "file")),
    # Cold, with the readers' order sent ahead through amlfs.sampler (docs/hints.md).
    System("amlfs-hints", "amlfs hints", ("cloud",)),
)
SYSTEM_BY_KEY = {s.key: s for s in SYSTEMS}
MOUNTS = ("rclone-full", "rclone-off", "amlfs-cold", "amlfs-block", "amlfs-page")
# The page-cache figures are taken on the block-cache run's mount: no start of their own.
STARTS = ("rclone-full", "rclone-off", "amlfs-cold", "amlfs-block")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    systems: tuple[str, ...]  # which columns it applies to


PATH_SYSTEMS = ("local-cold", "local-warm", "direct", *MOUNTS)
HINTED_SYSTEMS = (*PATH_SYSTEMS, "amlfs-hints")  # rows whose readers' order is known

# Rows of the read table: every system reads the same bytes.
READS = (
    Workload("seq-cat", "sequential, cat, all large files", "MiB/s", True, PATH_SYSTEMS),
    Workload("seq-fio-1", "sequential, fio, 1 job", "MiB/s", True, PATH_SYSTEMS),
    Workload("seq-fio-4", "sequential, fio, 4 jobs", "MiB/s", True, PATH_SYSTEMS),
    Workload("rand-qd1", "random 4 KiB, fio QD1", "IOPS", True, PATH_SYSTEMS),
    Workload("rand-8", "random 4 KiB, fio 8 jobs", "IOPS", True, PATH_SYSTEMS),
    Workload("small-serial", "small files, serial", "files/s", True, HINTED_SYSTEMS),
    Workload("small-8", "small files, 8 threads", "files/s", True, PATH_SYSTEMS),
    Workload("shuffle", "shuffled pass, 4 workers", "files/s", True, HINTED_SYSTEMS),
    Workload("find", "find, metadata set", "s", False, PATH_SYSTEMS),
    Workload("walk-stat", "walk + stat, metadata set", "s", False, PATH_SYSTEMS),
    Workload("first-byte", "mount command to first byte", "s", False, ("direct", *STARTS)),
    Workload("daemon-rss", "daemon peak RSS (VmHWM)", "MiB", False, STARTS),
)

# Rows of the operations table: amlfs against the direct ceiling.
OPERATIONS = (
    Workload("register", "register a version", "s", False, ("direct", "amlfs")),
    Workload("download-large", "download, large files", "MiB/s", True, ("direct", "amlfs")),
    Workload("download-small", "download, image set", "MiB/s", True, ("direct", "amlfs")),
    Workload("upload-large", "upload, large files", "MiB/s", True, ("direct", "amlfs")),
    Workload("upload-small", "upload, image set", "MiB/s", True, ("direct", "amlfs")),
    # Its ceiling ("direct") is `amlfs upload` of the same files in the same run.
    Workload(
        "output-large",
        "output mount: write + unmount, large files",
        "MiB/s",
        True,
        ("direct", "amlfs"),
    ),
    Workload(
        "output-small",
        "output mount: write + unmount, image set",
        "MiB/s",
        True,
        ("direct", "amlfs"),
    ),
    # Ceiling ("direct"): the same writes and fsyncs to a file on the local disk.
    Workload(
        "output-fsync",
        "output mount: one file, fsync every 16 MiB, write to close",
        "MiB/s",
        True,
        ("direct", "amlfs"),
    ),
    # Ceilings: the same steps by hand (mount or download, the pass, unmount or remove).
    Workload(
        "run-mounted", "amlfs run: one pass, image set mounted", "s", False, ("direct", "amlfs")
    ),
    Workload(
        "run-downloaded",
        "amlfs run: one pass, image set downloaded",
        "s",
        False,
        ("direct", "amlfs"),
    ),
    # Ceiling: four `amlfs mount` commands in a row.
    Workload(
        "daemon-ready", "amlfs daemon: start to READY=1, 4 mounts", "s", False, ("direct", "amlfs")
    ),
    Workload("mount-million", "mount of the million-file version", "s", False, ("amlfs",)),
    Workload("rss-million", "daemon RSS on the million-file version", "MiB", False, ("amlfs",)),
)
WORKLOAD_BY_KEY = {w.key: w for w in (*READS, *OPERATIONS)}

# The cloud-like backend: the emulator behind a delay line (bench/latency.py) adding this
# much each way, so that a request costs what a GET from Blob Storage costs before its
# first byte. Only cold passes of these rows are measured on it (first byte and peak RSS
# come with them).
CLOUD_ONE_WAY_S = 0.010
CLOUD_READS = ("seq-cat", "seq-fio-1", "small-serial", "small-8", "shuffle")
# Of those, the rows a reader's order is known in (a sampler's): also read with hints.
HINTED_READS = ("small-serial", "shuffle")

# Which columns each amlfs column is judged against, in the ratio table.
COMPARISONS = (
    ("amlfs-cold", "direct", "rclone-full"),
    ("amlfs-block", "local-cold", None),
    ("amlfs-page", "local-warm", None),
    ("amlfs-hints", "amlfs-cold", "rclone-full"),
)
