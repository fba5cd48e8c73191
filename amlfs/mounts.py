"""Mounts on this machine: checking a mountpoint, starting a mount daemon and waiting
until it serves, the runtime records `amlfs status` reads, and unmounting.

Each daemon writes a record (JSON, replaced atomically) under `<home>/run/mounts/`
while it runs and removes it when it stops. A daemon is alive while it holds the lock on
the record's `.lock` file, which the kernel releases when the process ends (a pid could
be reused); a record whose lock is free is stale, and whoever finds it removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from amlfs import locks, logs
from amlfs.errors import AmlfsError, UserError
from amlfs.home import ensure_home

if TYPE_CHECKING:
    from amlfs.registry.models import Datastore
    from amlfs.storage import Store

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2)
READY_ENV = "AMLFS_READY_FD"  # the daemon reports "ready" or "error: …" on this pipe
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# An output daemon gives up on its uploads after its own patience; this only guards
# against a daemon that hangs.
OUTPUT_STOP_TIMEOUT_S = 3600.0


def run_dir(home: Path) -> Path:
    path = ensure_home(home) / "run" / "mounts"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def log_dir(home: Path) -> Path:
    path = ensure_home(home) / "logs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def mounted_paths() -> dict[str, str]:
    """Mountpoint -> filesystem type, from the kernel's table (also lists dead FUSE
    mounts, which os.path.ismount cannot stat)."""
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def parse_mountinfo(text: str) -> dict[str, str]:
    table = {}
    for line in text.splitlines():
        fields = line.split()
        # The kernel writes space, tab, newline and backslash as octal (\040); the rest
        # of the path, UTF-8 included, is as it is.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        table[point] = fields[fields.index("-") + 1]
    return table


def check_mountpoint(mountpoint: Path) -> Path:
    """The absolute mountpoint, or a UserError saying why it cannot be used."""
    path = mountpoint.expanduser().absolute()
    if str(path) in mounted_paths():
        raise UserError(f"{path} is already a mount point")
    if not path.exists():
        raise UserError(f"mountpoint {path} does not exist")
    if not path.is_dir():
        raise UserError(f"mountpoint {path} is not a directory")
    if any(path.iterdir()):
        raise UserError(f"mountpoint {path} is not empty")
    return path


# How a read-only mount serves unless told otherwise; the amlfs:// filesystem, which
# reads through the same reader and cache, starts from the same values.
MOUNT_DEFAULTS = {
    "cache_size": "10GiB",
    "block_size": "4MiB",
    "memory_cache": "64MiB",
    "fetch_limit": 8,
    "io_timeout": 30.0,
}


BLOCK_SIZES = (4096, 256 * 2**20)  # the block sizes a mount or `amlfs://` accepts


def check_block_size(size: int, option: str) -> int:
    """SIZE, if a block may be that large; a UserError naming OPTION if not."""
    if not BLOCK_SIZES[0] <= size <= BLOCK_SIZES[1]:
        raise UserError(f"{option} must be between 4KiB and 256MiB")
    return size


@dataclass(frozen=True)
class MountOptions:
    """How a read-only mount serves (the `amlfs mount` options, parsed); `amlfs://` reads
    with the same options (amlfs.pinned_reads), the FUSE ones left at their defaults."""

    cache_dir: Path
    cache_size: int
    block_size: int
    hot_bytes: int
    fetch_limit: int
    io_timeout: float
    allow_other: bool = False
    metrics_address: str | None = None  # IP:PORT of a Prometheus endpoint (amlfs.metrics)


@dataclass(frozen=True)
class OutputOptions:
    """How an output mount serves (the `amlfs output mount` options, parsed)."""

    staging_root: Path  # each mount stages under a folder of its own in here
    workers: int  # uploads at once
    patience_s: float  # at unmount: how long to keep retrying while no upload succeeds
    register: str | None = None
    allow_other: bool = False
    metrics_address: str | None = None  # IP:PORT of a Prometheus endpoint (amlfs.metrics)


@dataclass
class MountRecord:
    pid: int
    kind: str  # "read-only" or "output"
    what: str  # dataset:version, or DATASTORE:PATH
    mountpoint: str
    started_at: float
    cache_dir: str
    stats: dict
    lock: str = ""  # the file its daemon holds locked while alive; the record is beside it

    @property
    def alive(self) -> bool:
        return locks.held(Path(self.lock))

    @property
    def path(self) -> Path:
        return Path(self.lock).with_suffix(".json")

    def public(self, alive: bool) -> dict:
        return {**self.__dict__, "alive": alive}


def daemon_alive(pid: int) -> bool:
    """Whether PID, an amlfs process, is still running (not a zombie). Sure only of a
    child not yet reaped (its pid cannot be reused); a daemon's record tells by its lock."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if "\nState:\tZ" in status:
        # A zombie leader whose other threads are still exiting still holds its files
        # (and locks): they are released with the last thread.
        return any(_task_running(task) for task in Path(f"/proc/{pid}/task").glob("*"))
    # A process that is exiting has no command line any more but still holds its files
    # (and locks) until it is a zombie; kernel threads (children of kthreadd) have none.
    exiting = not cmdline and "\nPPid:\t2\n" not in status and "\nPPid:\t0\n" not in status
    return b"amlfs" in cmdline or exiting


def _task_running(task: Path) -> bool:
    try:
        return "\nState:\tZ" not in (task / "status").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def daemon_record(home: Path, kind: str, what: str, mountpoint: Path,
                  cache_dir: Path) -> Iterator[MountRecord]:  # fmt: skip
    """In a daemon: its record, alive from here (its lock taken) until the block ends,
    when the record and the lock file are removed. The daemon writes the record
    (`write_record`) once it serves, before it reports ready."""
    lock = run_dir(home) / f"{os.getpid()}-{time.time_ns()}.lock"  # never reused
    held = locks.hold(lock)
    assert held is not None, "a new daemon's lock file is its own"
    record = MountRecord(
        pid=os.getpid(), kind=kind, what=what, mountpoint=str(mountpoint), started_at=time.time(),
        cache_dir=str(cache_dir), stats={}, lock=str(lock),
    )  # fmt: skip
    try:
        yield record
    finally:
        record.path.unlink(missing_ok=True)
        held.release()


def write_record(record: MountRecord) -> None:
    temporary = record.path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record.__dict__))
    os.replace(temporary, record.path)


_unpublished_since: float | None = None  # when status records began failing to be written


def publish_record(record: MountRecord) -> None:
    """write_record for a serving daemon's periodic status: best effort. A record that
    cannot be written (no file descriptor left, a full disk) leaves `amlfs status` showing
    older figures; it must never take the mount, and the files being served or uploaded,
    down with it. Logged once per spell of failures."""
    global _unpublished_since
    try:
        write_record(record)
    except OSError as error:
        if _unpublished_since is None:
            _unpublished_since = time.monotonic()
            log.warning("status record not written (%s); serving goes on", error)
        return
    if _unpublished_since is not None:
        log.info("status record written again")
        _unpublished_since = None


def remove_record(record: MountRecord) -> None:
    """Remove the record of a daemon that ended (never that of a live one)."""
    held = locks.hold(Path(record.lock))
    if held is None:
        return  # alive after all
    record.path.unlink(missing_ok=True)
    record.path.with_suffix(".hints").unlink(missing_ok=True)  # its read-hint socket, if any
    held.release()


def records(home: Path) -> list[MountRecord]:
    """Every record, of live daemons and stale ones (see `current_records`)."""
    found = []
    for path in sorted(run_dir(home).glob("*.json")):
        try:
            # A record is judged by the lock beside it, whatever it says.
            data = {**json.loads(path.read_text()), "lock": str(path.with_suffix(".lock"))}
            found.append(MountRecord(**data))
        except (OSError, ValueError, TypeError):
            continue  # being replaced, or not ours
    return found


def current_records(home: Path) -> list[tuple[MountRecord, bool]]:
    """Records and whether their daemon is alive. Stale ones are removed on the way (by
    whoever looks), except that of a mountpoint still mounted with no live daemon:
    `amlfs status` shows that mount as stale until `amlfs unmount` detaches it."""
    found = [(record, record.alive) for record in records(home)]
    serving = {record.mountpoint for record, alive in found if alive}
    table = mounted_paths()
    kept = []
    for record, alive in found:
        if not alive and (record.mountpoint not in table or record.mountpoint in serving):
            remove_record(record)  # ended without cleaning up, or an earlier mount's
            continue
        kept.append((record, alive))
    return kept


def start_daemon(home: Path, args: list[str], log_name: str | None, *,
                 env: Mapping[str, str], ends_with_us: bool = False) -> int:  # fmt: skip
    """Start `amlfs mount … --foreground` in the background; return its pid once it
    serves. Its failure to start is raised here, with the daemon's own reason.

    ENV is the daemon's environment: credentials.daemon_environment(), which holds its
    own datastore's secret and no other. The daemon logs to HOME/logs/LOG_NAME.log, or
    without a LOG_NAME where we do (a service's journal). ENDS_WITH_US: the kernel sends
    it SIGTERM (unmount, finish the uploads) if this thread dies, killed or not; `amlfs
    run` wants that for its mounts."""
    read_end, write_end = os.pipe()
    log_path = log_dir(home) / f"{log_name}.log" if log_name else None
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115
    # It rotates its own log (amlfs.logs); one that logs where we do leaves that to us.
    rotation = {logs.LOG_ENV: str(log_path)} if log_path else {}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "amlfs", "--home", str(home), *args, "--foreground"],
            # A service's NOTIFY_SOCKET is its own: systemd hears the service, not its mounts.
            env={**{k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", logs.LOG_ENV)},
                 READY_ENV: str(write_end), **rotation},
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, preexec_fn=_terminate_with_parent if ends_with_us else None,
        )  # fmt: skip
    finally:
        os.close(write_end)
        if log is not None:
            log.close()
    return _await_ready(read_end, proc)


def can_fork() -> bool:
    """Whether this process may fork a daemon: only with one thread (a fork copies the
    calling thread alone; locks other threads held would stay locked in the child)."""
    return threading.active_count() == 1


def fork_daemon(home: Path, log_name: str, *, env: Mapping[str, str]) -> int | None:
    """Fork this command into its mount daemon: in the daemon None (it goes on to serve, as
    with `--foreground`); in the command, the daemon's pid once it serves, or its failure
    to start, raised, as start_daemon does. No second interpreter starts and nothing is
    imported twice, which makes a mount start at once.

    As start_daemon's, the daemon runs in a session of its own with ENV (its own
    datastore's secret and no other) as its whole environment, logs to
    HOME/logs/LOG_NAME.log and reports on a pipe. Only from the command line's own
    process, with one thread (can_fork), and with no registry connection open: SQLite
    connections do not survive a fork, the daemon opens its own.
    """
    assert can_fork(), "a fork copies only the calling thread"
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    log = open_log(home, log_name)
    pid = os.fork()
    if pid == 0:
        become_daemon(log, env, write_end)
        return None
    os.close(log)
    os.close(write_end)
    return _await_ready(read_end, _Forked(pid))


def become_daemon(log: int, env: Mapping[str, str], ready: int) -> None:
    """In a forked daemon: its own session, no terminal, its log as stdout and stderr, no
    other file of the command's but the pipe READY to report on (as a started daemon's),
    ENV as its whole environment, and its log to rotate (amlfs.logs)."""
    log_path = os.readlink(f"/proc/self/fd/{log}")
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, ready)
    os.closerange(ready + 1, os.sysconf("SC_OPEN_MAX"))
    _take_environment({k: v for k, v in env.items() if k != "NOTIFY_SOCKET"})
    os.environ[READY_ENV] = str(ready)
    os.environ[logs.LOG_ENV] = log_path


def open_store_soon(datastore: Datastore) -> Future[Store]:
    """DATASTORE opened for reads in a thread of its own (importing its client, building
    it) while the caller goes on, as a mount daemon does before it mounts."""

    def open_store() -> Store:
        from amlfs.storage import Store

        return Store(datastore, reads_only=True)

    return ThreadPoolExecutor(1, thread_name_prefix="open-store").submit(open_store)


def daemon_logging() -> None:
    """A daemon logs its own INFO lines (DEBUG with --debug), with time and pid, to a log
    that rotates if it is a file of its own."""
    level = logging.DEBUG if "--debug" in sys.argv else logging.INFO
    logging.getLogger("amlfs").setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s amlfs[%(process)d] %(levelname)s "
                                               "%(name)s: %(message)s"))  # fmt: skip
    logs.rotate_daemon_log()


def await_daemon(pid: int, report: int) -> int:
    """The pid of our child PID, a daemon started ahead (amlfs.warm) and handed its
    mount, once it reports on REPORT that it serves; its failure to start raised, as
    fork_daemon does."""
    return _await_ready(report, _Forked(pid))


def open_log(home: Path, log_name: str) -> int:
    """The daemon log HOME/logs/LOG_NAME.log, opened to append."""
    return os.open(log_dir(home) / f"{log_name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                   0o600)  # fmt: skip


def _take_environment(env: Mapping[str, str]) -> None:
    """ENV becomes this process's whole environment, also as /proc/PID/environ shows it:
    that is the block the process was started with, which a forked daemon shares with the
    command it was forked from (every credential variable of the registry in it), and is
    overwritten here. The C library's environment was copied away from it by then."""
    os.environ.clear()
    os.environ.update(env)
    fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    start, end = int(fields[47]), int(fields[48])  # proc(5): env_start and env_end
    block = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())[: end - start]
    ctypes.memmove(start, block + bytes(end - start - len(block)), end - start)


class _Forked:
    """A forked daemon, seen through what _await_ready asks of a subprocess.Popen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (STOP_TIMEOUT_S if timeout is None else timeout)
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or STOP_TIMEOUT_S)
            time.sleep(0.02)
        return self.returncode

    def terminate(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _await_ready(read_end: int, proc: subprocess.Popen | _Forked) -> int:
    """The daemon PROC's pid once it reports ready; its failure to start raised."""
    try:
        message = _read_report(read_end, proc)
    except BaseException:
        # Interrupted while it starts: stop it (a mount it made is detached on SIGTERM).
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
        raise
    finally:
        os.close(read_end)
    if message == "ready":
        return proc.pid
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if message.startswith("usage: "):
        raise UserError(message.removeprefix("usage: "))
    raise AmlfsError(message.removeprefix("error: "))


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent's thread ends (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _read_report(fd: int, proc: subprocess.Popen | _Forked) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the daemon closed the pipe (it exited) without a word
            data += chunk
            if data.endswith(b"\n"):
                return data.decode().strip()
    if proc.poll() is None and not data:
        return f"error: the mount daemon did not report within {START_TIMEOUT_S:.0f} s"
    proc.wait(timeout=STOP_TIMEOUT_S)
    return data.decode().strip() or f"error: the mount daemon exited ({proc.returncode})"


def report_ready(message: str) -> None:
    """In the daemon: tell the starting command how it went (once), if one is waiting."""
    fd = os.environ.pop(READY_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), (message + "\n").encode())
        os.close(int(fd))


def report_failure(error: AmlfsError) -> None:
    """In the daemon: why it cannot serve, with its kind (bad input or not), for the
    starting command to raise again (see start_daemon)."""
    report_ready(f"{'usage' if error.exit_code == 2 else 'error'}: {error}")


@contextlib.contextmanager
def failures_reported(mountpoint: Path, daemon: bool = True) -> Iterator[None]:
    """In a DAEMON, a failure to set up or serve also goes to the command that started it:
    bad input stays bad input (exit 2), anything unexpected is "cannot mount …"."""
    if not daemon:
        yield
        return
    try:
        yield
    except AmlfsError as error:
        report_failure(error)
        raise
    except Exception as error:
        failure = AmlfsError(f"cannot mount {mountpoint}: {error}")
        report_failure(failure)
        raise failure from error


def unmount(
    home: Path, mountpoint: Path, waiting: Callable[[MountRecord], None] | None = None
) -> MountRecord | None:
    """Unmount (also a stale mount whose daemon died) and wait for its daemon to end;
    return the record of that daemon, None if it was dead (its record, and any other
    stale one of MOUNTPOINT, is removed: it may be that of an earlier mount there).

    An output mount's daemon first finishes its uploads (bounded by its own patience);
    WAITING hears its latest record meanwhile, every half second."""
    path = mountpoint.expanduser().absolute()
    table = mounted_paths()
    if str(path) not in table:
        raise UserError(f"{path} is not mounted")
    if not table[str(path)].startswith("fuse"):
        raise UserError(f"{path} is not an amlfs mount ({table[str(path)]})")
    here = [r for r in records(home) if r.mountpoint == str(path)]
    record = next((r for r in here if r.alive), None)
    proc = subprocess.run(["fusermount3", "-u", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise AmlfsError(f"cannot unmount {path}: {reason}")
    for stale in here:
        if stale is not record:
            remove_record(stale)
    if record is not None:
        bound = STOP_TIMEOUT_S if record.kind != "output" else OUTPUT_STOP_TIMEOUT_S
        deadline = time.monotonic() + bound
        last_heard = time.monotonic()
        while record.alive and time.monotonic() < deadline:
            time.sleep(0.05)
            if waiting is not None and time.monotonic() - last_heard >= 0.5:
                last_heard = time.monotonic()
                latest = next((r for r in records(home) if r.lock == record.lock), record)
                waiting(latest)
        if record.alive:
            raise AmlfsError(f"the daemon of {path} (pid {record.pid}) did not end within"
                             f" {bound:.0f} s; it keeps running")  # fmt: skip
        remove_record(record)
    return record


def detach_if_dead(home: Path, mountpoint: Path) -> None:
    """Detach an amlfs mount at MOUNTPOINT whose daemon is gone (it died, or a service
    was killed with its children). A live mount, or anything not amlfs, is left alone."""
    path = str(mountpoint)
    if mounted_paths().get(path) != "fuse.amlfs":
        return
    if any(r.mountpoint == path and alive for r, alive in current_records(home)):
        return
    unmount(home, mountpoint)


def hold_destination(home: Path, destination: str, mountpoint: Path) -> locks.Held:
    """In an output daemon: make DATASTORE:PATH its own while it serves, or raise a
    UserError naming the mount that has it (two mounts of one destination would overwrite
    and delete each other's files, and settle each other's sessions)."""
    folder = ensure_home(home) / "run" / "outputs"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{hashlib.sha256(destination.encode()).hexdigest()}.lock"
    held = locks.hold(path)
    if held is None:
        try:
            first = json.loads(locks.read(path))
            who = f"at {first['mountpoint']} (pid {first['pid']})"
        except (ValueError, KeyError, TypeError):
            who = "by a mount that is starting"  # it has not written its name yet
        raise UserError(f"{destination} is already mounted for output {who}; one output"
                        " mount per destination")  # fmt: skip
    held.write(json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint)}))
    return held
