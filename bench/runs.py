"""Walks the plan: every workload for every system, each figure recorded as a cell.

A failing measurement becomes a "failed" cell with its reason and the run goes on;
a missing amlfs feature becomes "not yet". Ctrl-C is not caught here: it unwinds the
caller's ExitStack, which stops every mount and the emulator.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fsspec

from amlfs.home import registry_path
from amlfs.registry import NewVersion, PinnedFile, Registry
from bench import pagecache, pathreads
from bench.amlfs_mounts import AmlfsMounts
from bench.cells import FAILED, NOT_YET, Cell, NotYet
from bench.common import amlfs_cmd, bounded, machine, run_command
from bench.data import CONTAINER, DataSets
from bench.direct import Direct
from bench.jobs import Jobs
from bench.latency import delayed
from bench.mounts import (
    MountedTree,
    container_sas_url,
    peak_rss_mib,
    rclone_mount,
    unmount_if_mounted,
)
from bench.pathreads import Figure
from bench.plan import CLOUD_ONE_WAY_S, CLOUD_READS, HINTED_READS, READS, MiB, Scale
from tests.support.azurite import Azurite

log = logging.getLogger("bench")
TOOLS = ("fio", "rclone", "fusermount3", "find", "cat")
SET_OF = {"seq": "large", "ran": "large", "sma": "images", "shu": "images",
          "fin": "meta", "wal": "meta"}  # fmt: skip
CONNECTION_ENV = "BENCH_CONNECTION_STRING"
CLOUD_CONNECTION_ENV = "BENCH_CLOUD_CONNECTION_STRING"


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing + ([] if Azurite.available() else ["the Azurite emulator (npm ci)"])


def amlfs_supports(command: str) -> bool:
    from amlfs.cli.main import COMMANDS

    return command in COMMANDS


def versions() -> dict:
    def first_line(args: list[str]) -> str:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].strip() if out else "?"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    packages = ("amlfs", "adlfs", "fsspec", "azure-storage-blob", "pyfuse3", "diskcache")
    return {
        "amlfs_commit": commit or "?",
        **{name: importlib.metadata.version(name) for name in packages},
        "rclone": first_line(["rclone", "version"]),
        "fio": first_line(["fio", "--version"]),
        "azurite": azurite_version(),
    }


def azurite_version() -> str:
    package = Path(__file__).parents[1] / "node_modules" / "azurite" / "package.json"
    return json.loads(package.read_text())["version"] if package.exists() else "?"


class Run:
    def __init__(self, work: Path, data: DataSets, scale: Scale, emulator: Azurite,
                 mount_options: tuple[str, ...] = ()):  # fmt: skip
        self.work = work
        self.mount_options = mount_options
        self.data = data
        self.scale = scale
        self.emulator = emulator
        self.direct = Direct(emulator.connection_string)
        self.cells: list[Cell] = []
        self.home = work / "home"
        self.env = {**os.environ, CONNECTION_ENV: emulator.connection_string}

    def machine(self) -> dict:
        return {**machine(), "disk_free_gib": round(shutil.disk_usage(self.work).free / 2**30)}

    def measure_everything(self, only: str | None = None) -> None:
        """Every cell of the plan; ONLY "reads" or "operations" measures that half, "cloud"
        the reads on the cloud-like backend (and local disk, their ceiling)."""
        self.setup_registry()
        if only == "cloud":
            self.local_reads()
            self.fresh_emulator()
            self.cloud_reads()
            return
        if only != "operations":
            self.local_reads()
            self.fresh_emulator()
            self.direct_reads()
            for mode in ("full", "off"):
                self.fresh_emulator()
                self.rclone_reads(mode)
            self.fresh_emulator()
            self.amlfs_reads()
            self.fresh_emulator()
            self.cloud_reads()
        if only != "reads":
            self.fresh_emulator()
            self.operations()

    def fresh_emulator(self) -> None:
        """Restart the emulator (same port, same data) so that no system inherits work
        another left behind: requests a killed mount abandoned can keep the
        single-threaded emulator busy long after the mount is gone."""
        self.emulator.stop()
        self.emulator.start()

    def timeout(self, workload: str) -> float:
        return pathreads.timeout_for(workload, self.data, self.scale)

    def read(self, workload: str, fn: Callable, root: Path) -> Figure:
        """One path workload, bounded in time (see `bounded`)."""
        return bounded(lambda: fn(root, self.data, self.scale), self.timeout(workload))

    def measure(self, backend: str, workload: str, system: str, fn: Callable[..., Figure],
                *args: object) -> Cell:  # fmt: skip
        """FN(*ARGS) as the cell (backend, workload, system); its failure is recorded."""
        try:
            value, note, extra = fn(*args)
            log.info("%-8s %-14s %-12s %.4g %s", backend, workload, system, value, note)
            cell = Cell(backend, workload, system, value, note=note, extra=extra)
        except NotYet as missing:
            cell = Cell(backend, workload, system, status=NOT_YET, note=str(missing))
        except Exception as error:  # a figure that cannot be taken is reported, not fatal
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
            log.warning("  failed: %s: %s", type(error).__name__, reason)
            cell = Cell(backend, workload, system, status=FAILED,
                        note=f"{type(error).__name__}: {reason}")  # fmt: skip
        self.cells.append(cell)
        return cell

    # --- reads through a path -------------------------------------------------------

    def local_reads(self) -> None:
        """Local disk, the physical ceiling of both backends; measured once ("both")."""
        for workload, fn in pathreads.WORKLOADS.items():
            files = self.data.local(SET_OF[workload[:3]])
            self.measure("both", workload, "local-cold", self.local, workload, fn, files, False)
            self.measure("both", workload, "local-warm", self.local, workload, fn, files, True)

    def local(self, workload: str, fn: Callable, files: list[Path], warm: bool) -> Figure:
        if warm:
            pagecache.warm(files)
        else:
            pagecache.drop(files)
        return self.read(workload, fn, self.data.root)

    def direct_reads(self) -> None:
        for workload, fn in self.direct.workloads().items():
            self.measure("azurite", workload, "direct", self.direct_cold, workload, fn)

    def direct_cold(self, workload: str, fn: Callable) -> Figure:
        pagecache.drop()
        return bounded(lambda: fn(self.data, self.scale), self.timeout(workload))

    def rclone_reads(self, mode: str) -> None:
        """Each workload on a fresh mount with an empty cache and a dropped page cache."""
        system = f"rclone-{mode}"
        sas_url = container_sas_url(self.emulator.port)
        sessions: list[MountedTree] = []
        for workload, fn in pathreads.WORKLOADS.items():
            self.measure("azurite", workload, system, self.rclone_cold, mode, sas_url, sessions,
                         workload, fn)  # fmt: skip
        self.mount_figures("azurite", system, sessions)

    def rclone_cold(self, mode: str, sas_url: str, sessions: list, workload: str,
                    fn: Callable) -> Figure:  # fmt: skip
        pagecache.drop()
        with rclone_mount(mode, sas_url, self.work, self.probe) as tree:
            sessions.append(tree)
            return self.read(workload, fn, tree.root)

    @property
    def probe(self) -> str:
        """The file whose first byte counts as 'the mount serves'."""
        return f"images/{self.data.images[0][0]}"

    def mount_figures(self, backend: str, system: str, sessions: list[MountedTree]) -> None:
        """Time to first byte (median over the fresh mounts) and the daemon's peak RSS."""

        def first_byte() -> Figure:
            if not sessions:
                raise RuntimeError("no mount served")
            times = [s.first_byte_s for s in sessions]
            return statistics.median(times), f"median of {len(times)} mounts", {"all": times}

        def rss() -> Figure:
            peaks = [s.peak_rss_mib for s in sessions if s.peak_rss_mib]
            if not peaks:
                raise RuntimeError("no mount served")
            return max(peaks), "max over workloads", {"all": peaks}

        self.measure(backend, "first-byte", system, first_byte)
        self.measure(backend, "daemon-rss", system, rss)

    def amlfs_reads(self) -> None:
        """Per workload: a fresh mount on an empty block cache (cold), which then reads the
        whole set; a remount with the page cache dropped (block cache), read twice (the
        second time from the page cache)."""
        for backend, ref in (("azurite", "bench-az:1"), ("file", "bench-file:1")):
            if not amlfs_supports("mount"):
                for workload in READS:
                    for system in ("amlfs-cold", "amlfs-block", "amlfs-page"):
                        self.measure(backend, workload.key, system, not_yet("amlfs mount"))
                continue
            self.amlfs_backend_reads(backend, ref)

    def amlfs_backend_reads(self, backend: str, ref: str) -> None:
        mounts = AmlfsMounts(self.home, self.work, self.env, self.mount_options)
        cold: list[MountedTree] = []
        warm: list[MountedTree] = []
        for workload, fn in pathreads.WORKLOADS.items():
            page_figure: dict[str, Figure] = {}
            self.measure(backend, workload, "amlfs-cold", self.amlfs_cold, mounts, ref, cold,
                         workload, fn)  # fmt: skip
            self.measure(backend, workload, "amlfs-block", self.amlfs_warm, mounts, ref, warm,
                         workload, fn, page_figure)  # fmt: skip
            self.measure(backend, workload, "amlfs-page", page_figure.__getitem__, "page")
        self.mount_figures(backend, "amlfs-cold", cold)
        self.mount_figures(backend, "amlfs-block", warm)

    def amlfs_cold(self, mounts: AmlfsMounts, ref: str, sessions: list, workload: str,
                   fn: Callable, then_warm: bool = True) -> Figure:  # fmt: skip
        """An empty block cache and page cache; afterwards (THEN_WARM) the whole set is read
        once more through the mount, so that the block cache holds it for the warm runs."""
        mounts.clear_cache()
        pagecache.drop()
        with mounts.mounted(ref, self.probe) as tree:
            sessions.append(tree)
            figure = self.read(workload, fn, tree.root)
            if not then_warm:
                return figure
            which = SET_OF[workload[:3]]
            files = [tree.root / which / name for name, _ in getattr(self.data, which)]
            bounded(lambda: pagecache.warm(files), self.timeout(workload))
        return figure

    def amlfs_warm(self, mounts: AmlfsMounts, ref: str, sessions: list, workload: str,
                   fn: Callable, page_figure: dict) -> Figure:  # fmt: skip
        """A fresh mount on the warm block cache with the page cache dropped; then the same
        again on that mount, now from the page cache. A random pass re-reads the offsets the
        block-cache pass read, no more (those are what the page cache holds)."""
        pagecache.drop()
        with mounts.mounted(ref, self.probe) as tree:
            sessions.append(tree)
            figure = self.read(workload, fn, tree.root)
            if workload.startswith("rand"):
                fn = pathreads.rand_fio(pathreads.RAND_JOBS[workload], ios=figure[2]["ios"])
            page_figure["page"] = self.read(workload, fn, tree.root)
        return figure

    def cloud_reads(self) -> None:
        """Cold passes on the emulator behind a delay line (CLOUD_ONE_WAY_S each way): what
        a first epoch from real Blob Storage looks like, where requests in flight and
        read-ahead decide the figures. rclone full, then amlfs, a fresh mount each."""
        with delayed(self.emulator.port, CLOUD_ONE_WAY_S) as proxy:
            port = f"127.0.0.1:{self.emulator.port}/"
            self.env[CLOUD_CONNECTION_ENV] = self.emulator.connection_string.replace(
                port, f"127.0.0.1:{proxy.port}/"
            )
            sas_url = container_sas_url(proxy.port)
            rclone: list[MountedTree] = []
            for workload in CLOUD_READS:
                fn = pathreads.WORKLOADS[workload]
                self.measure("cloud", workload, "rclone-full", self.rclone_cold, "full", sas_url,
                             rclone, workload, fn)  # fmt: skip
            self.mount_figures("cloud", "rclone-full", rclone)
            if not amlfs_supports("mount"):
                return
            amlfs(self.home, self.env, "datastore", "add", "cloud", f"az://{CONTAINER}",
                  "--connection-string-env", CLOUD_CONNECTION_ENV)  # fmt: skip
            amlfs(self.home, self.env, "dataset", "register", "bench-cloud", "--datastore",
                  "cloud", "--path", "large", "--path", "images")  # fmt: skip
            mounts = AmlfsMounts(self.home, self.work, self.env, self.mount_options)
            cold: list[MountedTree] = []
            for workload in CLOUD_READS:
                fn = pathreads.WORKLOADS[workload]
                self.measure("cloud", workload, "amlfs-cold", self.amlfs_cold, mounts,
                             "bench-cloud:1", cold, workload, fn, False)  # fmt: skip
                if workload in HINTED_READS:
                    fn = pathreads.HINTED[workload]
                    self.measure("cloud", workload, "amlfs-hints", self.amlfs_cold, mounts,
                                 "bench-cloud:1", [], workload, fn, False)  # fmt: skip
            self.mount_figures("cloud", "amlfs-cold", cold)

    # --- operations -----------------------------------------------------------------

    def setup_registry(self) -> None:
        """The bench's own registry: both datastores, and a version of the three read
        sets on each (when amlfs can mount them)."""
        shutil.rmtree(self.home, ignore_errors=True)  # a kept work folder starts afresh
        amlfs(self.home, self.env, "datastore", "add", "az", f"az://{CONTAINER}",
              "--connection-string-env", CONNECTION_ENV)  # fmt: skip
        amlfs(self.home, self.env, "datastore", "add", "local", f"file://{self.data.root}")
        if amlfs_supports("mount"):
            log.info("registering the read sets as bench-az:1 and bench-file:1")
            for name, store in (("bench-az", "az"), ("bench-file", "local")):
                amlfs(self.home, self.env, "dataset", "register", name, "--datastore", store,
                      "--path", "large", "--path", "images", "--path", "meta")  # fmt: skip

    def operations(self) -> None:
        home, env = self.home, self.env
        stores = {
            "azurite": (self.direct.fs(8), CONTAINER, "az", "meta", len(self.data.meta)),
            "file": (fsspec.filesystem("file"), str(self.data.root), "local", "register",
                     len(self.data.register)),
        }  # fmt: skip
        for backend, (fs, base, store, folder, count) in stores.items():

            def listing(fs=fs, base=base, folder=folder) -> Figure:
                pagecache.drop()
                fs.invalidate_cache()
                started = time.perf_counter()
                found = len(fs.find(f"{base}/{folder}", detail=True))
                return time.perf_counter() - started, f"{found:,} files listed", {}

            def register(store=store, folder=folder, count=count) -> Figure:
                pagecache.drop()
                took = timed(lambda: amlfs(home, env, "dataset", "register", f"{store}-{folder}",
                                           "--datastore", store, "--path", folder))  # fmt: skip
                return took, f"{count:,} files", {}

            self.measure(backend, "register", "direct", listing)
            self.measure(backend, "register", "amlfs", register)
            self.transfers(backend, fs, base, store)
            self.jobs(backend, store)
        self.million()

    def jobs(self, backend: str, store: str) -> None:
        """`amlfs run` and `amlfs daemon` against the same steps by hand."""
        jobs = Jobs(self.home, self.work, self.env, len(self.data.images))
        ref = f"{store}-images:1"  # registered by transfers()
        have = amlfs_supports
        ran = have("run")
        self.measure(backend, "run-mounted", "direct", jobs.by_hand_mounted, ref)
        self.measure(backend, "run-mounted", "amlfs",
                     jobs.run_mounted if ran else not_yet("amlfs run"), ref)  # fmt: skip
        self.measure(backend, "run-downloaded", "direct", jobs.by_hand_downloaded, ref)
        self.measure(backend, "run-downloaded", "amlfs",
                     jobs.run_downloaded if ran else not_yet("amlfs run"), ref)  # fmt: skip
        self.measure(backend, "daemon-ready", "direct", jobs.mounts_one_by_one, ref)
        served = jobs.daemon_ready if have("daemon") else not_yet("amlfs daemon")
        self.measure(backend, "daemon-ready", "amlfs", served, ref)

    def transfers(self, backend: str, fs, base: str, store: str) -> None:
        """Direct parallel fsspec get/put of the same files, beside amlfs download/upload."""
        sizes = {"large": self.data.large_bytes, "images": self.data.images_bytes}
        home, env = self.home, self.env
        for which, kind in (("large", "large"), ("images", "small")):
            if amlfs_supports("download"):
                amlfs(home, env, "dataset", "register", f"{store}-{which}", "--datastore", store,
                      "--path", which)  # fmt: skip

            def download(which=which) -> Figure:
                pagecache.drop()
                with tempfile.TemporaryDirectory(dir=self.work) as dest:
                    took = timed(lambda: fs.get(f"{base}/{which}/", dest, recursive=True))
                return sizes[which] / MiB / took, "fsspec get", {"seconds": took}

            def amlfs_download(which=which) -> Figure:
                shutil.rmtree(home / "cache", ignore_errors=True)  # mounts' blocks: not reused
                pagecache.drop()
                with tempfile.TemporaryDirectory(dir=self.work) as dest:
                    took = timed(lambda: amlfs(home, env, "download", f"{store}-{which}:1",
                                               f"{dest}/data"))  # fmt: skip
                return sizes[which] / MiB / took, "", {"seconds": took}

            def upload(which=which) -> Figure:
                pagecache.drop()
                target = f"{base}/uploads/{backend}-{which}-{time.monotonic_ns()}/"
                took = timed(lambda: fs.put(str(self.data.root / which), target, recursive=True))
                return sizes[which] / MiB / took, "fsspec put", {"seconds": took}

            def amlfs_upload(which=which) -> Figure:
                pagecache.drop()
                target = f"{store}:uploads/amlfs-{which}-{time.monotonic_ns()}"
                took = timed(lambda: amlfs(home, env, "upload", str(self.data.root / which),
                                           target))  # fmt: skip
                return sizes[which] / MiB / took, "", {"seconds": took}

            def output_mount(which=which) -> Figure:
                pagecache.drop()
                mountpoint = Path(tempfile.mkdtemp(dir=self.work, prefix="out-"))
                location = f"{store}:outputs/{which}-{time.monotonic_ns()}"
                amlfs(home, env, "output", "mount", location, str(mountpoint))
                try:
                    took = timed(lambda: (
                        run_command(["cp", "-r", f"{self.data.root / which}/.", str(mountpoint)],
                                    env),
                        amlfs(home, env, "unmount", str(mountpoint)),
                    ))  # fmt: skip
                finally:
                    unmount_if_mounted(mountpoint)
                return sizes[which] / MiB / took, "cp -r, then unmount", {"seconds": took}

            have = amlfs_supports
            self.measure(backend, f"download-{kind}", "direct", download)
            self.measure(
                backend,
                f"download-{kind}",
                "amlfs",
                amlfs_download if have("download") else not_yet("amlfs download"),
            )
            self.measure(backend, f"upload-{kind}", "direct", upload)
            sent = self.measure(
                backend,
                f"upload-{kind}",
                "amlfs",
                amlfs_upload if have("upload") else not_yet("amlfs upload"),
            )
            self.measure(
                backend,
                f"output-{kind}",
                "direct",
                lambda sent=sent: (
                    (sent.value, "amlfs upload", {}) if sent.value else not_yet("amlfs upload")()
                ),
            )
            writes = output_mount if have("output") else not_yet("amlfs output mount")
            self.measure(backend, f"output-{kind}", "amlfs", writes)
        self.fsyncing_writer(backend, store)

    def fsyncing_writer(self, backend: str, store: str) -> None:
        """A checkpoint written with an fsync every 16 MiB (as the size of the large set),
        to the local disk and through an output mount: until close() returns, the upload
        after it is not timed."""
        size = self.data.large_bytes

        def write_to(folder: Path) -> Figure:
            took = fsynced_write(folder / "ckpt.bin", size)
            return size / MiB / took, f"{size // MiB} MiB", {"seconds": took}

        def local() -> Figure:
            with tempfile.TemporaryDirectory(dir=self.work) as folder:
                return write_to(Path(folder))

        def output_mount() -> Figure:
            mountpoint = Path(tempfile.mkdtemp(dir=self.work, prefix="out-"))
            location = f"{store}:outputs/fsync-{time.monotonic_ns()}"
            amlfs(self.home, self.env, "output", "mount", location, str(mountpoint))
            try:
                figure = write_to(mountpoint)
                amlfs(self.home, self.env, "unmount", str(mountpoint))
            finally:
                unmount_if_mounted(mountpoint)
            return figure

        self.measure(backend, "output-fsync", "direct", local)
        writes = output_mount if amlfs_supports("output") else not_yet("amlfs output mount")
        self.measure(backend, "output-fsync", "amlfs", writes)

    def million(self) -> None:
        """Mount time and daemon RSS for a version of `scale.million` files (registry
        only: the files need no bytes), beside a plain in-memory tree of the same paths."""
        if not amlfs_supports("mount"):
            for workload in ("mount-million", "rss-million"):
                self.measure("file", workload, "amlfs", not_yet("amlfs mount"))
            return
        log.info("storing a version of %d files", self.scale.million)
        names = million_names(self.scale.million)
        with Registry(registry_path(self.home)) as registry:
            registry.register(NewVersion("million", "local", "million", ["million"], [
                PinnedFile(name, 0, "mtime-0.0-size-0") for name in names
            ]))  # fmt: skip
        del names
        mounts = AmlfsMounts(self.home, self.work, self.env, self.mount_options)
        figures: dict[str, Figure] = {}

        def mount_time() -> Figure:
            with mounts.mounted("million:1", None) as tree:
                rng = random.Random(7)
                for i in rng.sample(range(self.scale.million), 1000):  # stat spread out
                    os.stat(tree.root / million_names_one(i))
                for folder in sorted(os.listdir(tree.root))[:10]:
                    os.listdir(tree.root / folder)
                rss = peak_rss_mib(tree.pid)
            tree_rss = in_memory_tree_rss_mib(self.scale.million)
            note = f"{self.scale.million:,} files"
            figures["rss"] = (rss, f"a dict tree of the same paths: {tree_rss:,.0f} MiB",
                              {"in_memory_tree_mib": tree_rss})  # fmt: skip
            return tree.first_byte_s, note, {}

        self.measure("file", "mount-million", "amlfs", mount_time)
        self.measure("file", "rss-million", "amlfs", lambda: figures["rss"])


MILLION_FOLDERS = 1000


def million_names_one(i: int) -> str:
    return f"d{i % MILLION_FOLDERS:04}/f{i:07}.bin"


def million_names(n: int) -> list[str]:
    return [million_names_one(i) for i in range(n)]


def in_memory_tree_rss_mib(n: int) -> float:
    """Peak RSS of a process holding N paths with size and etag in a dict: what a mount
    that loads the whole tree would need at the least."""
    code = (
        "import resource\n"
        f"tree = {{f'd{{i % {MILLION_FOLDERS}:04}}/f{{i:07}}.bin': (0, 'mtime-0.0-size-0')"
        f" for i in range({n})}}\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=600)  # fmt: skip
    return float(proc.stdout)


FSYNC_EVERY = 16 * MiB


def fsynced_write(path: Path, size: int) -> float:
    """Seconds to write SIZE bytes to PATH in 1 MiB writes, with an fsync every 16 MiB,
    and close it (in a process of its own, as a training job would)."""
    code = (
        "import os, sys, time\n"
        "path, size, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
        "chunk = os.urandom(1 << 20)\n"
        "started = time.perf_counter()\n"
        "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "for done in range(0, size, len(chunk)):\n"
        "    os.write(fd, chunk[: size - done])\n"
        "    if (done + len(chunk)) % every == 0:\n"
        "        os.fsync(fd)\n"
        "os.close(fd)\n"
        "print(time.perf_counter() - started)\n"
    )
    out = run_command([sys.executable, "-c", code, str(path), str(size), str(FSYNC_EVERY)])
    return float(out)


def not_yet(feature: str) -> Callable[[], Figure]:
    def run() -> Figure:
        raise NotYet(feature)

    return run


def amlfs(home: Path, env: dict, *args: str) -> None:
    run_command(amlfs_cmd(home, *args), env)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
