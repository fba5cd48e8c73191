"""A mount daemon started ahead: forked as `amlfs mount` begins, it imports what serving
needs while the command imports its own modules and checks its arguments, then takes
over once the mount is known to be sound.

The daemon of `amlfs mount` is the command's own process, forked (amlfs.mounts); forked
only after validation, it must still import the FUSE side (trio, pyfuse3, the reader:
about 0.1 s here) before it can mount, and all of that lies between the command starting
and the mount serving. Forked at the start instead, the two halves overlap.

Only the standard library is imported here, before the fork. Until the hand-over the
daemon-to-be holds nothing but its two pipes, reads from and writes to /dev/null, and is
killed with the command if the command dies; told nothing (the command failed, or
served in the foreground), it exits when its pipe closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import pickle
import signal
from dataclasses import dataclass
from typing import Any

PR_SET_PDEATHSIG = 1  # prctl(2)
MAX_STATE = 1 << 20  # bytes: what the command hands over is a few KiB


@dataclass
class WarmDaemon:
    """In the command: the daemon started ahead, and its two pipes."""

    pid: int
    hand_over: int  # write end: the mount to serve, then closed; closed alone: not needed
    report: int  # read end: the daemon says "ready" or why it cannot serve (amlfs.mounts)

    def dismiss(self) -> None:
        """Not needed after all: closing its pipe ends it."""
        for fd in (self.hand_over, self.report):
            with contextlib.suppress(OSError):
                os.close(fd)


def mounting(argv: list[str]) -> bool:
    """Whether ARGV (without the program name) is an `amlfs mount` that will fork a
    daemon: the subcommand after the group's own options, not in the foreground, not
    asking for help."""
    args = iter(argv)
    for arg in args:
        if arg == "--home":
            next(args, None)
        elif arg.startswith("--home=") or arg == "--debug":
            continue
        else:
            return arg == "mount" and not {"--foreground", "-h", "--help"} & set(argv)
    return False


def prestart(serve: str) -> WarmDaemon | None:
    """Fork the daemon-to-be. In the command: the WarmDaemon (None if the fork failed);
    in the child: never returns. The child imports SERVE ("module:function": the work
    done ahead), waits, and calls it with the state handed over and the report pipe's
    write end; it returns the exit status."""
    try:
        hand_over_r, hand_over_w = os.pipe()
        report_r, report_w = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:
        os.close(hand_over_w)
        os.close(report_r)
        _child(serve, hand_over_r, report_w)
    os.close(hand_over_r)
    os.close(report_w)
    return WarmDaemon(pid, hand_over_w, report_r)


def hand_over(warm: WarmDaemon, state: dict[str, Any]) -> bool:
    """Give the daemon-to-be its mount; False if it is gone (the caller forks anew)."""
    try:
        data = memoryview(pickle.dumps(state))
        while data:  # bounded: each write takes at least a byte, or raises
            data = data[os.write(warm.hand_over, data) :]
        os.close(warm.hand_over)
    except OSError:
        warm.dismiss()
        return False
    return True


def _child(serve: str, hand_over_r: int, report_w: int) -> None:
    code = 1
    try:
        # Killed with the command until the hand-over: never left behind by a failure.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the command died before the line above
            os._exit(1)
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        module, function = serve.split(":")
        served = getattr(importlib.import_module(module), function)  # the work done ahead
        state = _read_state(hand_over_r)
        if state is None:
            os._exit(0)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0)  # a daemon from here on
        code = served(state, report_w)
    finally:
        os._exit(code)


def _read_state(fd: int) -> dict[str, Any] | None:
    data = b""
    while len(data) <= MAX_STATE:  # bounded; the command closes the pipe after writing
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return pickle.loads(data) if data else None
