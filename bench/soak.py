"""A soak run of `amlfs daemon`: hours of production load, compressed into minutes.

    python -m bench.soak [--minutes 30] [--files 96] [--file-size 2MiB] [--cache-size 64MiB]
                         [--readers 8] [--reload-every 60] [--plot docs/soak.png]

Starts its own emulator on 127.0.0.1 and stores FILES files of pinned random bytes (their
SHA-256 known before a byte is read), registered as one version larger than the cache.
`amlfs daemon --config FILE` then serves, as under systemd, a read-only mount of that
version and an output mount, for MINUTES:
- READERS threads read random files whole through the read-only mount and check each
  against its SHA-256; after each file its pages are dropped from the kernel's cache
  (POSIX_FADV_DONTNEED), so that every read reaches the daemon;
- a writer writes and closes files in the output mount; after the run, what was stored
  is checked against what was written;
- every RELOAD_EVERY seconds the daemon is sent SIGHUP, with its file alternately adding
  and removing a second read-only mount of the version (sharing the cache folder), which
  is read once while it is there; the two other mounts must stay served by the same
  processes throughout;
- every 10 s the RSS, open file descriptors and threads of the daemon and of each of its
  mount processes are sampled.

The run fails (exit 1) unless every byte read and written checks out, nothing failed,
and RSS, descriptors and threads stayed flat (see `flatness`). Results go to
bench/results/soak-*.json (or --results), the plot to --plot.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import adlfs
import yaml

from amlfs.mounts import mounted_paths
from amlfs.units import parse_size
from bench.common import RESULTS, amlfs_cmd, machine, run_command, write_results
from tests.support.azurite import Azurite

CONNECTION_ENV = "AMLFS_BENCH_CONNECTION_STRING"
CONTAINER = "soak"
SAMPLE_EVERY_S = 10.0
WAIT_S = 120.0  # for a mount to appear or go, the daemon to stop, a thread to end
CHUNK = 1 << 20
# Flat: after the warm-up (the first WARM_UP of the samples), the median of the last
# third of the samples is no higher than the highest sample of the first third plus a
# slack. Against the first third's highest, not its median: a mount's RSS swings by its
# blocks in flight (write-behind holds up to 64 MiB), and growth is what is looked for.
WARM_UP = 0.25
RSS_GROWTH = 0.10  # of the first third's highest, or RSS_SLACK_MIB if more
RSS_SLACK_MIB = 16.0
FDS_SLACK = 8
THREADS_SLACK = 8
ROLES = ("daemon", "data", "output", "extra")
STEADY = ("daemon", "data", "output")  # served throughout; "extra" comes and goes
KEPT_ERRORS = 50
FAILED_PAUSE_S = 0.1  # a reader that failed does not spin


@dataclass
class Tally:
    """What the readers or the writer did; every failure is counted, the first ones kept."""

    files: int = 0
    bytes: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, size: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += size

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures += 1
            if len(self.errors) < KEPT_ERRORS:
                self.errors.append(message)


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def store_source(fs: adlfs.AzureBlobFileSystem, files: int, size: int) -> dict[str, str]:
    """FILES files of SIZE pinned random bytes under data/; their SHA-256 by path."""
    digests = {}
    batch: dict[str, bytes] = {}
    for index in range(files):
        path = f"f{index:04}.bin"
        data = content(index, size)
        digests[path] = hashlib.sha256(data).hexdigest()
        batch[f"{CONTAINER}/data/{path}"] = data
        if len(batch) * size >= 64 * CHUNK or index == files - 1:
            fs.pipe(batch)
            batch = {}
    return digests


def read_checked(path: Path, expected: str) -> int:
    """Read PATH whole, drop its pages from the kernel's cache, check its SHA-256."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if digest.hexdigest() != expected:
        raise ValueError(f"{path}: {size} bytes read, SHA-256 differs from the source's")
    return size


def reader(root: Path, digests: dict[str, str], seed: int, stop: threading.Event,
           tally: Tally) -> None:  # fmt: skip
    rng = random.Random(seed)
    names = sorted(digests)
    while not stop.is_set():
        name = rng.choice(names)
        try:
            tally.add(read_checked(root / name, digests[name]))
        except Exception as error:  # counted and reported; the run fails
            tally.fail(f"read {name}: {error!r}")
            stop.wait(FAILED_PAUSE_S)


def writer(root: Path, every: float, stop: threading.Event, tally: Tally,
           written: dict[str, str]) -> None:  # fmt: skip
    """Write and close a file of 64 KiB to 1 MiB every EVERY seconds; note its SHA-256."""
    index = 0
    while not stop.wait(every):
        index += 1
        name = f"w{index:06}.bin"
        data = content(1_000_000 + index, random.Random(-index).randrange(1 << 16, 1 << 20))
        try:
            with open(root / name, "wb") as out:
                out.write(data)
        except Exception as error:
            tally.fail(f"write {name}: {error!r}")
            continue
        written[name] = hashlib.sha256(data).hexdigest()
        tally.add(len(data))


class Daemon:
    """`amlfs daemon --config FILE` as a process of ours, and its mount processes."""

    def __init__(self, work: Path, home: Path, env: dict[str, str]):
        self.work, self.home, self.env = work, home, env
        self.config = work / "mounts.yaml"
        self.log = work / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def declare(self, entries: list[dict]) -> None:
        staged = self.config.with_suffix(".new")
        staged.write_text(yaml.safe_dump({"mounts": entries}, sort_keys=False))
        staged.replace(self.config)  # a reload never reads half a file

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                amlfs_cmd(self.home, "daemon", "--config", str(self.config)), env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> dict[int, str]:
        """The daemon's pid and each of its mount processes' pids, with their role."""
        found = {}
        if self.alive():
            found[self.proc.pid] = "daemon"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"amlfs" not in b" ".join(args[:3]):
                continue
            for role in ("data", "output", "extra"):
                if str(self.work / role).encode() in args:
                    found[int(entry.name)] = role
        return found

    def stop(self) -> int | None:
        """SIGTERM (every mount unmounted, uploads finished); the exit code, or None if it
        had to be killed. Whatever is left is ended by pid and detached."""
        code = None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT_S)
        elif self.proc is not None:
            code = self.proc.returncode
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in mounted_paths():
            if point.startswith(f"{self.work}/"):
                subprocess.run(["fusermount3", "-u", "-z", point], check=False)
        return code


def sample(pid: int) -> dict[str, float] | None:
    """RSS (MiB), open descriptors and threads of PID; None if it is gone."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
        fds = len(os.listdir(Path("/proc") / str(pid) / "fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    return {"rss_mib": rss_kib / 1024, "fds": fds, "threads": int(fields["Threads"])}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {WAIT_S:.0f} s: {what}")
        time.sleep(0.1)


def flatness(samples: list[dict]) -> dict:
    """Per steady role, and for their sum: the first and last third's medians (after the
    warm-up) of RSS, descriptors and threads, and whether each stayed within its bound."""
    steady = samples[int(len(samples) * WARM_UP) :]
    third = max(1, len(steady) // 3)
    verdicts = {}
    for role in (*STEADY, "total"):

        def series(metric: str, role: str = role) -> list[float]:
            if role == "total":
                return [sum(s["roles"][r][metric] for r in STEADY if r in s["roles"])
                        for s in steady]  # fmt: skip
            return [s["roles"][role][metric] for s in steady if role in s["roles"]]

        verdict = {}
        for metric, bound in (("rss_mib", lambda a: a + max(a * RSS_GROWTH, RSS_SLACK_MIB)),
                              ("fds", lambda a: a + FDS_SLACK),
                              ("threads", lambda a: a + THREADS_SLACK)):  # fmt: skip
            values = series(metric)
            if len(values) < 2:
                verdict[metric] = {"flat": False, "why": "too few samples"}
                continue
            first, highest = statistics.median(values[:third]), max(values[:third])
            last = statistics.median(values[-third:])
            verdict[metric] = {"first": first, "first_max": highest, "last": last,
                               "max": max(values), "bound": bound(highest),
                               "flat": last <= bound(highest)}  # fmt: skip
        verdicts[role] = verdict
    return verdicts


def entries(work: Path, cache: dict[str, str], extra: bool) -> list[dict]:
    data = {"dataset": "ds:1", **cache}
    output = {"output": "blob:out", "workers": 2}
    declared = [{"mountpoint": str(work / "data"), **data},
                {"mountpoint": str(work / "output"), **output}]  # fmt: skip
    if extra:
        declared.append({"mountpoint": str(work / "extra"), **data})
    return declared


def soak(args: argparse.Namespace, work: Path) -> dict:
    size = parse_size(args.file_size, "--file-size")
    cache = {"cache_dir": str(work / "cache"), "cache_size": args.cache_size,
             "block_size": args.block_size, "memory_cache": args.memory_cache}  # fmt: skip
    with Azurite(work / "azurite") as emulator:
        env = {**os.environ, CONNECTION_ENV: emulator.connection_string}
        fs = adlfs.AzureBlobFileSystem(connection_string=emulator.connection_string,
                                       skip_instance_cache=True)  # fmt: skip
        fs.mkdir(CONTAINER)
        digests = store_source(fs, args.files, size)
        home = work / "home"
        run_command(amlfs_cmd(home, "datastore", "add", "blob", f"az://{CONTAINER}",
                              "--connection-string-env", CONNECTION_ENV), env)  # fmt: skip
        run_command(amlfs_cmd(home, "dataset", "register", "ds", "--datastore", "blob",
                              "--path", "data"), env)  # fmt: skip
        for name in ("data", "output", "extra"):
            (work / name).mkdir()
        daemon = Daemon(work, home, env)
        try:
            return run(args, work, daemon, cache, digests, fs, size)
        finally:
            daemon.stop()


def run(args: argparse.Namespace, work: Path, daemon: Daemon, cache: dict[str, str],
        digests: dict[str, str], fs: adlfs.AzureBlobFileSystem, size: int) -> dict:  # fmt: skip
    reads, writes, events = Tally(), Tally(), Tally()
    written: dict[str, str] = {}
    daemon.declare(entries(work, cache, extra=False))
    daemon.start()
    wait_for(lambda: {str(work / "data"), str(work / "output")} <= set(mounted_paths()),
             "the daemon serves its mounts")  # fmt: skip
    first_pids = {role: pid for pid, role in daemon.processes().items()}
    stop = threading.Event()
    threads = [threading.Thread(target=reader, args=(work / "data", digests, n, stop, reads),
                                daemon=True) for n in range(args.readers)]  # fmt: skip
    threads.append(threading.Thread(target=writer, daemon=True, args=(
        work / "output", args.write_every, stop, writes, written)))  # fmt: skip
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[dict] = []
    reloads: list[float] = []
    extra = False
    end = started + args.minutes * 60
    next_sample, next_reload = started, started + args.reload_every
    try:
        while (now := time.monotonic()) < end and daemon.alive():
            if now >= next_sample:
                roles = {}
                for pid, role in daemon.processes().items():
                    figures = sample(pid)
                    if figures is not None:
                        roles[role] = figures
                        if role in STEADY and first_pids.get(role) != pid:
                            events.fail(
                                f"{role} is served by pid {pid}, not {first_pids.get(role)}"
                            )
                            first_pids[role] = pid
                samples.append({"t": round(now - started, 1), "roles": roles})
                next_sample += SAMPLE_EVERY_S
            if now >= next_reload:
                extra = not extra
                reloads.append(round(now - started, 1))
                try:
                    reload(daemon, work, cache, extra, digests)
                except Exception as error:
                    events.fail(f"reload at {reloads[-1]} s: {error!r}")
                next_reload += args.reload_every
            time.sleep(max(0.0, min(next_sample, next_reload, end) - time.monotonic()))
        if not daemon.alive():
            events.fail(f"the daemon ended ({daemon.proc.returncode}) during the run")
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_S)
    seconds = time.monotonic() - started
    mounted = {m["mountpoint"]: m["stats"] for m in json.loads(
        run_command(amlfs_cmd(daemon.home, "status", "--json"), daemon.env))}  # fmt: skip
    code = daemon.stop()
    if code != 0:
        events.fail(f"the daemon exited {code} on SIGTERM")
    stored = check_stored(fs, written, writes)
    logged = daemon.log.read_text(errors="replace").splitlines()
    log_errors = [line for line in logged if ": ERROR: " in line or "Traceback" in line]
    log_warnings = [line for line in logged if ": WARNING: " in line]
    flat = flatness(samples)
    errors = reads.errors + writes.errors + events.errors + log_errors[:KEPT_ERRORS]
    error_count = reads.failures + writes.failures + events.failures + len(log_errors)
    return {
        "minutes": args.minutes, "seconds": round(seconds, 1), "readers": args.readers,
        "files": args.files, "file_size": size, "source_bytes": args.files * size,
        "cache": cache | {"cache_dir": "(work)/cache"}, "reload_every_s": args.reload_every,
        "write_every_s": args.write_every,
        "read": {"files": reads.files, "bytes": reads.bytes, "checked": reads.bytes},
        "written": {"files": writes.files, "bytes": writes.bytes, "checked": stored},
        "mount_stats": {role: mounted.get(str(work / role)) for role in ("data", "output")},
        "reloads": reloads, "errors": errors[:KEPT_ERRORS], "error_count": error_count,
        "log_warnings": log_warnings[:KEPT_ERRORS], "log_warning_count": len(log_warnings),
        "samples": samples, "flatness": flat,
        "bounds": {"warm_up": WARM_UP, "rss_growth": RSS_GROWTH, "rss_slack_mib": RSS_SLACK_MIB,
                   "fds_slack": FDS_SLACK, "threads_slack": THREADS_SLACK},
        "passed": not error_count and stored == writes.bytes
        and all(m["flat"] for v in flat.values() for m in v.values()),
    }  # fmt: skip


def reload(daemon: Daemon, work: Path, cache: dict[str, str], extra: bool,
           digests: dict[str, str]) -> None:  # fmt: skip
    """SIGHUP with the extra mount added (then read once) or removed, and wait for it."""
    daemon.declare(entries(work, cache, extra))
    daemon.reload()
    point = str(work / "extra")
    wait_for(lambda: (point in mounted_paths()) == extra,
             f"the extra mount {'added' if extra else 'removed'}")  # fmt: skip
    if extra:
        name = random.choice(sorted(digests))
        read_checked(work / "extra" / name, digests[name])


def check_stored(fs: adlfs.AzureBlobFileSystem, written: dict[str, str], tally: Tally) -> int:
    """Bytes of the written files stored exactly as written; a difference is an error."""
    checked = 0
    for name, expected in written.items():
        try:
            data = fs.cat_file(f"{CONTAINER}/out/{name}")
        except FileNotFoundError:
            tally.fail(f"output {name} was not stored")
            continue
        if hashlib.sha256(data).hexdigest() != expected:
            tally.fail(f"output {name}: the stored bytes differ from those written")
            continue
        checked += len(data)
    return checked


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(3, 1, figsize=(9, 8), sharex=True)
    labels = {"rss_mib": "RSS (MiB)", "fds": "open descriptors", "threads": "threads"}
    for axis, (metric, label) in zip(axes, labels.items(), strict=True):
        for role in ROLES:
            points = [(s["t"] / 60, s["roles"][role][metric]) for s in results["samples"]
                      if role in s["roles"]]  # fmt: skip
            if points:
                style = "o" if role == "extra" else "-"
                axis.plot(*zip(*points, strict=True), style, label=role, markersize=3)
        for at in results["reloads"]:
            axis.axvline(at / 60, color="grey", linewidth=0.5, alpha=0.5)
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower right", ncol=4)
    axes[-1].set_xlabel("minutes (grey: SIGHUP reloads)")
    figure.suptitle(f"amlfs daemon soak: {results['readers']} readers, an output mount, "
                    f"{results['minutes']:g} min")  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def report(r: dict) -> str:
    mib = 2**20
    rows = []
    for role in (*STEADY, "total"):
        cells = []
        for metric, unit in (("rss_mib", " MiB"), ("fds", ""), ("threads", "")):
            m = r["flatness"][role][metric]
            if "first" not in m:
                cells.append("—")
                continue
            cells.append(f"{m['first']:.0f} → {m['last']:.0f}{unit} (max {m['max']:.0f})"
                         + ("" if m["flat"] else " **not flat**"))  # fmt: skip
        rows.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join([
        f"### Soak: {r['minutes']:g} minutes, {r['readers']} readers, an output mount, "
        f"a reload every {r['reload_every_s']:g} s",
        "",
        f"{r['files']} files of {r['file_size'] / mib:g} MiB ({r['source_bytes'] / mib:.0f} MiB) "
        f"through a cache of {r['cache']['cache_size']} ({r['cache']['block_size']} blocks, "
        f"{r['cache']['memory_cache']} in memory); {len(r['reloads'])} reloads; "
        f"{len(r['samples'])} samples, 10 s apart.",
        "",
        f"- read and checked: {r['read']['files']:,} files, {r['read']['bytes'] / mib:,.0f} MiB "
        f"({r['read']['bytes'] / mib / r['seconds']:.1f} MiB/s)",
        f"- written and checked after: {r['written']['files']:,} files, "
        f"{r['written']['checked'] / mib:,.1f} of {r['written']['bytes'] / mib:,.1f} MiB",
        f"- errors: {r['error_count']} (warnings logged: {r['log_warning_count']})",
        f"- verdict: {'passed' if r['passed'] else 'FAILED'}",
        "",
        "Median of the first → of the last third of the samples after the warm-up "
        f"({r['bounds']['warm_up']:.0%} of the run), and the highest sample:",
        "",
        "| process | RSS | open descriptors | threads |",
        "|---|---|---|---|",
        *rows,
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--files", type=int, default=96)
    parser.add_argument("--file-size", default="2MiB")
    parser.add_argument("--cache-size", default="64MiB")
    parser.add_argument("--block-size", default="1MiB")
    parser.add_argument("--memory-cache", default="16MiB")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=60.0)
    parser.add_argument("--write-every", type=float, default=1.0, help="seconds between files")
    parser.add_argument("--plot", type=Path, help="where to draw the samples (PNG)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--work", type=Path, help="the run's folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    source = args.files * parse_size(args.file_size, "--file-size")
    if source <= parse_size(args.cache_size, "--cache-size"):
        parser.error("the version must be larger than the cache (--files × --file-size)")
    # SIGTERM ends the run as Ctrl-C does: the daemon is stopped and the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="amlfs-soak-", dir=args.work))
    try:
        results = {"machine": machine(), **soak(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("soak", results, args.results)
    if args.plot:
        plot(results, args.plot)
    print(report(results))
    for error in results["errors"][:10]:
        print(f"error: {error}", file=sys.stderr)
    print(f"\nraw results: {path}", file=sys.stderr)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
