"""The service's health check and systemd's watchdog.

Each mount's daemon is asked a statfs of its mountpoint about once a second. The kernel
passes every statfs to the daemon (it caches no answer, unlike the attributes a stat
would get; the asker, the daemon's parent, is the mount's owner, so the kernel does not
answer for it), and the daemon answers it from memory on its trio loop, so an answer
within seconds means the FUSE loop is turning. A daemon that has not answered for
ANSWER_WITHIN_S fails the check; after WEDGED_AFTER_S it is wedged, and the supervisor
kills and restarts it.

WATCHDOG=1 goes to systemd (every half WATCHDOG_USEC, as sd_watchdog_enabled(3)
suggests) only while every running daemon passes: a wedged mount the supervisor
cannot end, or a supervisor whose own loop stopped, stops the pings, and systemd
restarts the service.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping

CHECK_EVERY_S = 1.0
ANSWER_WITHIN_S = 5.0  # a statfs outstanding this long fails the check: WATCHDOG=1 withheld
WEDGED_AFTER_S = 15.0  # ... and this long: the daemon is wedged, killed and started again

# Answers that say the FUSE connection is gone although its daemon still runs.
_DISCONNECTED = (errno.ENOTCONN, errno.ECONNABORTED)


class Probe:
    """The statfs checks of one mountpoint served by one process, at most one at a time:
    a statfs on a mount whose daemon is stopped blocks until that daemon answers or dies,
    so a thread per try would pile up behind it."""

    def __init__(self, mountpoint: str, ask: Callable[[str], object]) -> None:
        self.mountpoint, self._ask = mountpoint, ask
        self.answered = time.monotonic()  # the last good answer; the daemon just said ready
        self._outstanding = False  # set here, cleared by the checking thread when answered

    def poll(self) -> float:
        """Start a check unless one is still outstanding; return for how long the daemon
        has given no good answer."""
        if not self._outstanding:
            self._outstanding = True
            threading.Thread(target=self._check, name=f"statfs {self.mountpoint}",
                             daemon=True).start()  # fmt: skip
        return time.monotonic() - self.answered

    def _check(self) -> None:
        # Signals are the trio thread's to handle: one delivered here could wait behind a
        # statfs that never returns.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._ask(self.mountpoint)
            good = True
        except OSError as error:  # an error is an answer, unless the connection is gone
            good = error.errno not in _DISCONNECTED
        if good:
            self.answered = time.monotonic()
        self._outstanding = False  # last: the answer is recorded before the next check


class Health:
    """The probes of the running daemons, by pid (a restarted mount gets a new probe)."""

    def __init__(self, ask: Callable[[str], object] = os.statvfs) -> None:
        self._ask = ask  # the check of a mountpoint: statfs
        self._probes: dict[int, Probe] = {}
        self.late: dict[int, tuple[str, float]] = {}  # pid -> mountpoint, seconds silent

    def check(self, serving: Mapping[int, str]) -> None:
        """Check SERVING (pid -> mountpoint): the daemons running now."""
        for pid in set(self._probes) - set(serving):
            self.forget(pid)
        self.late = {}
        for pid, mountpoint in serving.items():
            if pid not in self._probes:
                self._probes[pid] = Probe(mountpoint, self._ask)
            silent = self._probes[pid].poll()
            if silent >= ANSWER_WITHIN_S:
                self.late[pid] = (mountpoint, silent)

    def forget(self, pid: int) -> None:
        """PID ended: a check it left outstanding ends with it."""
        self._probes.pop(pid, None)
        self.late.pop(pid, None)

    def passes(self) -> bool:
        return not self.late

    def wedged(self, pid: int) -> bool:
        return pid in self.late and self.late[pid][1] >= WEDGED_AFTER_S


class Watchdog:
    """WATCHDOG=1 at half the interval systemd asked for, if it asked us (WATCHDOG_USEC,
    and WATCHDOG_PID, when set, naming this process)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.every_s: float | None = None
        self._last = float("-inf")
        usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and pid in (None, str(os.getpid())):
            self.every_s = int(usec) / 2e6

    def due(self) -> bool:
        """Whether a ping is due now: the interval passed since the last one. A ping held
        back while a check failed is due as soon as the checks pass again."""
        return self.every_s is not None and time.monotonic() - self._last >= self.every_s

    def sent(self) -> None:
        self._last = time.monotonic()
