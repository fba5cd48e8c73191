"""Running a job's command as a child: signals sent to `amlfs run` are passed on to it,
and its exit status comes back as a shell would report it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping

from amlfs.errors import UserError
from amlfs.home import caller_umask

log = logging.getLogger(__name__)

FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGUSR2})  # fmt: skip
POLL_S = 0.2
SI_KERNEL = 0x80  # si_code of a signal the kernel raised, such as the terminal's Ctrl-C


def check_command(argv: list[str]) -> None:
    """A UserError now, before any input is mounted, if ARGV[0] cannot be run."""
    program = argv[0]
    if "/" in program:
        if not os.path.isfile(program) or not os.access(program, os.X_OK):
            raise UserError(f"cannot run {program}: not an executable file")
    elif shutil.which(program) is None:
        raise UserError(f"command not found: {program}")


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for a child ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def should_forward(info: signal.struct_siginfo) -> bool:
    """Whether a signal we received must be passed on to the child.

    A signal the terminal raised (Ctrl-C, Ctrl-\\, a hang-up) goes to the whole
    foreground process group, the child included: passing it on would deliver it twice,
    and a second Ctrl-C cuts a Python program's clean-up short. Signals sent by a process
    (`kill`, a scheduler, systemd) reach us alone, and are passed on.
    """
    return info.si_code != SI_KERNEL


def run_command(argv: list[str], env: Mapping[str, str]) -> int:
    """Run ARGV in our process group until it ends, passing on FORWARDED signals sent to
    us; return its exit status. It runs under the umask amlfs was started with, not
    amlfs's own private one: what a job writes is the user's business."""
    umask = caller_umask()

    def prepare_child() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.umask(umask)

    # Blocked before the child exists, so that none is lost or handled the default way
    # between the start and the loop; the child unblocks them for itself.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        try:
            child = subprocess.Popen(argv, env=dict(env), preexec_fn=prepare_child)
        except OSError as error:
            log.error("cannot run %s: %s", argv[0], error.strerror)
            return 126 if isinstance(error, PermissionError) else 127
        while True:
            info = signal.sigtimedwait(FORWARDED, POLL_S)
            if info is not None and should_forward(info):
                log.info("passing %s on to the command", signal.Signals(info.si_signo).name)
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(info.si_signo)
            if child.poll() is not None:
                break
        # A signal that arrived as the child ended would otherwise strike once unblocked.
        while (late := signal.sigtimedwait(FORWARDED, 0)) is not None:
            log.info("%s after the command ended: ignored", signal.Signals(late.si_signo).name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return exit_status(child.returncode)
