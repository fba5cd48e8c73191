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
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fsspec

from bench import pagecache, pathreads
from bench.cells import FAILED, NOT_YET, Cell, NotYet
from bench.common import amlfs_cmd, machine
from bench.data import CONTAINER, DataSets
from bench.direct import Direct
from bench.mounts import MountedTree, container_sas_url, rclone_mount
from bench.pathreads import Figure
from bench.plan import MOUNTS, READS, MiB, Scale
from tests.support.azurite import Azurite

log = logging.getLogger("bench")
TOOLS = ("fio", "rclone", "fusermount3", "find", "cat")
SET_OF = {"seq": "large", "ran": "large", "sma": "images", "shu": "images",
          "fin": "meta", "wal": "meta"}  # fmt: skip
CONNECTION_ENV = "BENCH_CONNECTION_STRING"


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing + ([] if Azurite.available() else ["the Azurite emulator (npm ci)"])


def amlfs_supports(command: str) -> bool:
    from amlfs.cli.main import cli

    return command in cli.commands


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
    def __init__(self, work: Path, data: DataSets, scale: Scale, emulator: Azurite):
        self.work = work
        self.data = data
        self.scale = scale
        self.emulator = emulator
        self.direct = Direct(emulator.connection_string)
        self.cells: list[Cell] = []

    def machine(self) -> dict:
        return {**machine(), "disk_free_gib": round(shutil.disk_usage(self.work).free / 2**30)}

    def measure_everything(self) -> None:
        self.local_reads()
        self.direct_reads()
        for mode in ("full", "off"):
            self.rclone_reads(mode)
        self.amlfs_reads()
        self.operations()

    def measure(self, backend: str, workload: str, system: str, fn: Callable[[], Figure]) -> Cell:
        try:
            value, note, extra = fn()
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

            def cold(fn=fn, files=files) -> Figure:
                pagecache.drop(files)
                return fn(self.data.root, self.data, self.scale)

            def warm(fn=fn, files=files) -> Figure:
                pagecache.warm(files)
                return fn(self.data.root, self.data, self.scale)

            self.measure("both", workload, "local-cold", cold)
            self.measure("both", workload, "local-warm", warm)

    def direct_reads(self) -> None:
        for workload, fn in self.direct.workloads().items():

            def cold(fn=fn) -> Figure:
                pagecache.drop()
                return fn(self.data, self.scale)

            self.measure("azurite", workload, "direct", cold)

    def rclone_reads(self, mode: str) -> None:
        """Each workload on a fresh mount with an empty cache and a dropped page cache."""
        system = f"rclone-{mode}"
        sas_url = container_sas_url(self.emulator.port)
        probe = f"images/{self.data.images[0][0]}"
        sessions: list[MountedTree] = []
        for workload, fn in pathreads.WORKLOADS.items():

            def cold(fn=fn) -> Figure:
                pagecache.drop()
                with rclone_mount(mode, sas_url, self.work, probe) as tree:
                    sessions.append(tree)
                    return fn(tree.root, self.data, self.scale)

            self.measure("azurite", workload, system, cold)
        self.mount_figures("azurite", system, sessions)

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
        if amlfs_supports("mount"):
            raise NotImplementedError("bench: wire the amlfs mount in bench/runs.py")
        for backend in ("azurite", "file"):
            for workload in READS:
                for system in MOUNTS:
                    if system.startswith("amlfs"):
                        self.measure(backend, workload.key, system, not_yet("amlfs mount"))

    # --- operations -----------------------------------------------------------------

    def operations(self) -> None:
        home = self.work / "home"
        shutil.rmtree(home, ignore_errors=True)  # a kept work folder starts a new registry
        env = {**os.environ, CONNECTION_ENV: self.emulator.connection_string}
        amlfs(home, env, "datastore", "add", "az", f"az://{CONTAINER}",
              "--connection-string-env", CONNECTION_ENV)  # fmt: skip
        amlfs(home, env, "datastore", "add", "local", f"file://{self.data.root}")
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
            self.transfers(backend, fs, base)
            self.measure(backend, "mount-million", "amlfs", not_yet("amlfs mount"))
            self.measure(backend, "rss-million", "amlfs", not_yet("amlfs mount"))

    def transfers(self, backend: str, fs, base: str) -> None:
        """Direct parallel fsspec get/put of the same files, beside amlfs download/upload."""
        sizes = {"large": self.data.large_bytes, "images": self.data.images_bytes}
        for which, kind in (("large", "large"), ("images", "small")):

            def download(which=which) -> Figure:
                pagecache.drop()
                with tempfile.TemporaryDirectory(dir=self.work) as dest:
                    took = timed(lambda: fs.get(f"{base}/{which}/", dest, recursive=True))
                return sizes[which] / MiB / took, "fsspec get", {"seconds": took}

            def upload(which=which) -> Figure:
                pagecache.drop()
                target = f"{base}/uploads/{backend}-{which}-{time.monotonic_ns()}/"
                took = timed(lambda: fs.put(str(self.data.root / which), target, recursive=True))
                return sizes[which] / MiB / took, "fsspec put", {"seconds": took}

            self.measure(backend, f"download-{kind}", "direct", download)
            self.measure(backend, f"download-{kind}", "amlfs", not_yet("amlfs download"))
            self.measure(backend, f"upload-{kind}", "direct", upload)
            self.measure(backend, f"upload-{kind}", "amlfs", not_yet("amlfs upload"))


def not_yet(feature: str) -> Callable[[], Figure]:
    def run() -> Figure:
        raise NotYet(feature)

    return run


def amlfs(home: Path, env: dict, *args: str) -> None:
    proc = subprocess.run(amlfs_cmd(home, *args), env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"amlfs {' '.join(args)}: {proc.stderr.strip()}")


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
