"""`amlfs daemon`: the mounts a YAML file declares, each served by a child process of
its own and supervised here, for systemd (Type=notify).

pyfuse3 serves one filesystem per process, and a process per mount keeps one mount's
failure from taking the others down. The children are the same daemons `amlfs mount`
and `amlfs output mount` start, so `amlfs status` and `amlfs unmount` see them as usual.

systemd hears READY=1 once every valid entry has been started (serving, or failed and
reported), STATUS= with a summary whenever it changes, RELOADING=1 on SIGHUP and
STOPPING=1 on SIGTERM; WATCHDOG=1 while every mount answers its health check (see
amlfs.service.watchdog), and a mount that stops answering is killed and started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from cysystemd.daemon import Notification
from cysystemd.daemon import notify as sd_notify

from amlfs import mounts
from amlfs.catalog import open_registry
from amlfs.credentials import daemon_environment
from amlfs.errors import AmlfsError, UserError
from amlfs.home import registry_path
from amlfs.metrics.timings import copied
from amlfs.registry.store import Registry
from amlfs.service import config
from amlfs.service.config import Declared, Rejected
from amlfs.service.watchdog import CHECK_EVERY_S as HEALTH_EVERY_S
from amlfs.service.watchdog import Health, Watchdog

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0
RESTART_FIRST_S = 5.0  # a child that died is started again after this, doubling up to
RESTART_MAX_S = 300.0  # this; the delay starts over once it has served for that long
STOP_WAIT_S = mounts.STOP_TIMEOUT_S  # for a child that would not unmount and was signalled


@dataclass
class Child:
    """One declared mount and the process serving it (pid None: not running)."""

    declared: Declared
    pid: int | None = None
    started: float = 0.0
    failure: str | None = None
    retry_at: float | None = None  # when to start it again; None: not until a reload
    delay: float = RESTART_FIRST_S


class Service:
    def __init__(self, home: Path, config_path: Path):
        self.home, self.config_path = home, config_path
        self.children: dict[str, Child] = {}
        self.rejected: list[Rejected] = []
        self._lock = trio.Lock()  # one change of self.children at a time
        self._status = ""
        self.health = Health()
        self.watchdog = Watchdog(os.environ)
        self.restarts = self.reloads = 0  # for metrics

    def read(self) -> tuple[list[Declared], list[Rejected]]:
        """The file as it is now, against the registry as it is now (from any thread)."""
        with open_registry(self.home, offline=log.warning) as registry:
            return config.read(self.config_path, registry)

    async def run(self, declared: list[Declared], rejected: list[Rejected]) -> None:
        """Serve DECLARED until SIGTERM or SIGINT; SIGHUP reads the file again."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with self._lock:
                await self._apply(declared, rejected)
            self._publish()
            notify(Notification.READY)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._supervise)
                nursery.start_soon(self._watch)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self._reload()
                        continue
                    log.info("%s: unmounting everything", signal.Signals(signum).name)
                    notify(Notification.STOPPING)
                    nursery.cancel_scope.cancel()
                    break
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._stop_all()

    async def _reload(self) -> None:
        notify(Notification.RELOADING)
        self.reloads += 1
        log.info("SIGHUP: reading %s again", self.config_path)
        try:
            declared, rejected = await trio.to_thread.run_sync(self.read)
        except Exception as error:  # a broken file, a registry locked too long
            log.error("reload failed, the mounts stay as they are: %s", error)
            notify(Notification.STATUS, f"reload failed: {error}")
        else:
            async with self._lock:
                await self._apply(declared, rejected)
        self._publish()
        notify(Notification.READY)

    async def _apply(self, declared: list[Declared], rejected: list[Rejected]) -> None:
        """Make the children match DECLARED: stop the removed and changed, start the new
        and changed (and any not running: a reload retries a failed entry at once),
        leave the unchanged alone."""
        for entry in rejected:
            log.error("entry skipped: %s", entry.reason)
        self.rejected = rejected
        wanted = {d.mountpoint: d for d in declared}
        going = [child for point, child in self.children.items()
                 if wanted.get(point) != child.declared or child.pid is None]  # fmt: skip
        async with trio.open_nursery() as nursery:
            for child in going:
                nursery.start_soon(self._retire, child, wanted.get(child.declared.mountpoint))
        coming = [d for point, d in wanted.items() if point not in self.children]
        async with trio.open_nursery() as nursery:
            for entry in coming:
                self.children[entry.mountpoint] = Child(entry)
                nursery.start_soon(self._start, self.children[entry.mountpoint])

    async def _retire(self, child: Child, replacement: Declared | None) -> None:
        """Stop CHILD (removed or changed). A mount in use is kept, and said so."""
        try:
            await trio.to_thread.run_sync(self._unmount, child)
        except AmlfsError as error:
            log.error("%s kept as it is: %s", child.declared.mountpoint, error)
            child.failure = f"not changed: {error}"
            return
        del self.children[child.declared.mountpoint]
        if replacement is not None:
            log.info("%s changed: %s", child.declared.mountpoint, replacement.what)

    async def _start(self, child: Child) -> None:
        entry = child.declared
        try:
            await trio.to_thread.run_sync(mounts.detach_if_dead, self.home, Path(entry.mountpoint))
            child.pid = await trio.to_thread.run_sync(self._launch, entry)
        except UserError as error:  # the entry itself is wrong: not until it is changed
            child.failure, child.retry_at = str(error), None
            log.error("%s not served: %s", entry.mountpoint, error)
            return
        except AmlfsError as error:
            child.failure, child.retry_at = str(error), time.monotonic() + child.delay
            log.error("%s not served: %s; trying again in %.0f s", entry.mountpoint, error,
                      child.delay)  # fmt: skip
            child.delay = min(child.delay * 2, RESTART_MAX_S)
            return
        child.started, child.failure, child.retry_at = time.monotonic(), None, None
        log.info("serving %s at %s (pid %d)", entry.what, entry.mountpoint, child.pid)

    def _launch(self, entry: Declared) -> int:
        """Start ENTRY's daemon with its own datastore's credentials and no other's (the
        registry as it is now: a datastore added since the start is known)."""
        with Registry(registry_path(self.home)) as registry:
            env = daemon_environment(registry.list_datastores(), entry.datastore)
        return mounts.start_daemon(self.home, list(entry.args), None, env=env)

    async def _supervise(self) -> None:
        """Notice children that died, detach what they left mounted, start them again."""
        while True:
            await trio.sleep(CHECK_EVERY_S)
            async with self._lock:
                for child in list(self.children.values()):
                    await self._check(child)
            self._publish()

    async def _watch(self) -> None:
        """Check the running children's FUSE loops; ping systemd's watchdog while all
        answer. Apart from _supervise and without the lock: a reload that waits for an
        output mount's uploads must not stop the pings. Restarting a wedged child is
        _supervise's."""
        every = min(HEALTH_EVERY_S, self.watchdog.every_s or HEALTH_EVERY_S)
        while True:
            # No await from here to the pings: the children do not change meanwhile.
            self.health.check({c.pid: c.declared.mountpoint
                               for c in self.children.values() if c.pid is not None})  # fmt: skip
            if self.health.passes() and self.watchdog.due():
                notify(Notification.WATCHDOG)
                self.watchdog.sent()
            self._publish()
            await trio.sleep(every)

    async def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.pid is not None and self.health.wedged(child.pid):
            silent = self.health.late[child.pid][1]
            log.error("%s: its daemon (pid %d) has not answered for %.0f s; killing it",
                      child.declared.mountpoint, child.pid, silent)  # fmt: skip
            if await trio.to_thread.run_sync(_end_wedged, child.pid, child.declared.mountpoint):
                self._ended(child, now, "stopped answering")
        elif child.pid is not None and not mounts.daemon_alive(child.pid):
            _reap(child.pid)
            self._ended(child, now, "ended")
        elif child.pid is None and child.retry_at is not None and now >= child.retry_at:
            await self._start(child)

    def _ended(self, child: Child, now: float, how: str) -> None:
        """CHILD's daemon is gone (it ended, or it stopped answering and was killed):
        start it again after a pause that grows with each failure in a row."""
        assert child.pid is not None
        self.health.forget(child.pid)
        served_for = now - child.started
        if served_for >= RESTART_MAX_S:
            child.delay = RESTART_FIRST_S
        log.error("%s: its daemon (pid %d) %s after %.0f s; starting it again in %.0f s",
                  child.declared.mountpoint, child.pid, how, served_for, child.delay)  # fmt: skip
        child.failure = f"its daemon {how} (pid {child.pid})"
        self.restarts += 1
        child.pid = None
        child.retry_at = now + child.delay
        child.delay = min(child.delay * 2, RESTART_MAX_S)

    async def _stop_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for child in self.children.values():
                nursery.start_soon(trio.to_thread.run_sync, self._stop, child)
        self.children.clear()
        notify(Notification.STATUS, "stopped")

    def _stop(self, child: Child) -> None:
        """At shutdown: unmount; a mount in use is detached by signalling its daemon."""
        try:
            self._unmount(child)
        except AmlfsError as error:
            if child.pid is None or not mounts.daemon_alive(child.pid):
                log.error("%s: %s", child.declared.mountpoint, error)
                return
            log.warning("%s: %s; signalling its daemon to detach it", child.declared.mountpoint,
                        error)  # fmt: skip
            os.kill(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            while mounts.daemon_alive(child.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if child.pid is not None:
            _reap(child.pid)

    def _unmount(self, child: Child) -> None:
        """Unmount CHILD's mount (its daemon finishes its uploads first); raise if the
        kernel refuses (the mount is in use)."""
        point = child.declared.mountpoint
        if point in mounts.mounted_paths():
            record = mounts.unmount(self.home, Path(point))
            if record is not None and record.kind == "output":
                _report_uploads(self.home, record)
        elif child.pid is not None and mounts.daemon_alive(child.pid):
            os.kill(child.pid, signal.SIGTERM)  # still starting: nothing mounted yet
        if child.pid is not None:
            _reap(child.pid)
        log.info("unmounted %s", point)

    def _publish(self) -> None:
        """STATUS= for systemctl status, when it changed."""
        serving = [c for c in self.children.values() if c.pid is not None]
        failing = [c for c in self.children.values() if c.failure]
        parts = [f"serving {len(serving)} of {len(self.children) + len(self.rejected)} mounts"]
        if failing:
            first = failing[0]
            parts.append(f"{len(failing)} failing ({first.declared.mountpoint}: {first.failure})")
        if self.health.late:
            late = sorted(point for point, _ in self.health.late.values())
            parts.append(f"{len(late)} not answering ({late[0]})")
        if self.rejected:
            parts.append(f"{len(self.rejected)} bad entries ({self.rejected[0].reason})")
        status = "; ".join(parts)
        if status != self._status:
            self._status = status
            notify(Notification.STATUS, status)
            log.info("%s", status)

    def summary(self) -> dict:
        """Mounts by state, restarts and reloads (for metrics, from any thread)."""
        found = list(copied(self.children).values())
        return {
            "serving": sum(c.pid is not None for c in found),
            "failing": sum(c.failure is not None for c in found),
            "rejected": len(self.rejected), "restarts": self.restarts, "reloads": self.reloads,
        }  # fmt: skip

    def served_records(self) -> list[mounts.MountRecord]:
        """The records of the live daemons serving this service's mounts (from any thread)."""
        points = set(copied(self.children))
        return [r for r in mounts.records(self.home) if r.mountpoint in points and r.alive]


def serve(home: Path, config_path: Path, metrics_address: str | None = None) -> None:
    """Read CONFIG_PATH (a file that cannot be read at all is a UserError) and serve,
    with a metrics endpoint at METRICS_ADDRESS, else at the file's metrics_address."""
    service = Service(home, config_path)
    declared, rejected = service.read()
    _open_files_up_to_hard_limit()
    address = metrics_address or config.metrics_address(config_path)
    exporter = None
    if address is not None:
        from amlfs.metrics.collect import ServiceCollector
        from amlfs.metrics.exporter import Exporter

        exporter = Exporter(address, ServiceCollector(service.summary, service.served_records))
    try:
        trio.run(service.run, declared, rejected)
    finally:
        if exporter is not None:
            exporter.close()


def _open_files_up_to_hard_limit() -> None:
    """Raise the soft limit on open files to the hard one, for this process and the
    mounts' daemons, which inherit it. An output mount holds a file open per file written
    until it is uploaded, and every read being served holds one; the soft default of
    1024 exists for programs that use select(), which amlfs does not (trio uses epoll).
    systemd sets both limits from LimitNOFILE=; elsewhere the soft one is often 1024
    under a far higher hard one (systemd's own default is 1024:524288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open files: soft limit raised from %d to %d", soft, hard)


def notify(notification: Notification, value: str | None = None) -> None:
    """Tell systemd, if it started us (without NOTIFY_SOCKET, cysystemd logs a failure)."""
    if os.environ.get("NOTIFY_SOCKET"):
        sd_notify(notification, value)


def _report_uploads(home: Path, record: mounts.MountRecord) -> None:
    from amlfs.transfer.outputs import UploadsPending, ended_session

    if "session" in record.stats:
        try:
            ended_session(home, record.stats["session"])
        except UploadsPending as pending:  # journaled: the next mount or a resume sends them
            log.warning("%s: %s", record.mountpoint, pending)


def _end_wedged(pid: int, mountpoint: str) -> bool:
    """Kill the wedged daemon PID (our child) and detach its mount lazily: a program
    holding a file or folder in it would keep a plain unmount from detaching it, and the
    mount is dead either way. False if the daemon does not end (stuck in the kernel):
    the health check keeps failing, and systemd's watchdog restarts the service."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # also ends a stopped process
    deadline = time.monotonic() + STOP_WAIT_S
    while mounts.daemon_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if mounts.daemon_alive(pid):
        log.error("%s: its daemon (pid %d) did not end when killed", mountpoint, pid)
        return False
    _reap(pid)
    if mounts.mounted_paths().get(mountpoint) == "fuse.amlfs":
        proc = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                              text=True, check=False)  # fmt: skip
        if proc.returncode != 0:  # then detaching is tried again before the restart
            log.error("%s: cannot detach it: %s", mountpoint, proc.stderr.strip())
    return True


def _reap(pid: int) -> None:
    """Collect an ended child, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
