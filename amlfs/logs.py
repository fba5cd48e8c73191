"""Size-bounded logs of mount daemons: HOME/logs/NAME.log, rotated to NAME.log.1 and
NAME.log.2 when it reaches MAX_BYTES, so that a daemon's logs never hold more than about
KEEP × MAX_BYTES (10 MiB × 3 files).

A daemon's log is its stdout and stderr (file descriptors 1 and 2): its own log lines,
but also a traceback or what C code prints. So the rotation renames the files and puts a
fresh file over descriptors 1 and 2 (dup2), whoever writes to them. It is checked after
every log line and, for what bypasses logging, every CHECK_EVERY_S by a thread: output
written between two checks may take a file past MAX_BYTES by that much.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

MAX_BYTES = 10 * 2**20
KEEP = 3  # NAME.log and two older files
CHECK_EVERY_S = 1.0
LOG_ENV = "AMLFS_LOG_FILE"  # a daemon's log file, for it to rotate (see mounts.start_daemon)
FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class RotatingLog:
    """The log file PATH written through the descriptors FDS, rotated past MAX_BYTES."""

    def __init__(self, path: Path, fds: tuple[int, ...] = (1, 2), max_bytes: int | None = None,
                 keep: int | None = None):  # fmt: skip
        self.path, self.fds = path, fds
        self.max_bytes, self.keep = max_bytes or MAX_BYTES, keep or KEEP
        self._lock = threading.Lock()

    def check(self) -> None:
        """Rotate if the file the descriptors write to has reached MAX_BYTES."""
        with self._lock:
            try:
                ours = os.fstat(self.fds[0])
                if ours.st_size < self.max_bytes:
                    return
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                # Another daemon appending to the same file may have rotated it already:
                # then only follow it to the new file.
                if current is not None and os.path.samestat(current, ours):
                    self._shift()
                self._reopen()
            except OSError:
                return  # a full or vanished log folder: keep writing where we are

    def _shift(self) -> None:
        """NAME.log.(K-1) -> NAME.log.K … NAME.log -> NAME.log.1; the oldest is dropped."""
        for number in range(self.keep - 1, 0, -1):
            older = self._numbered(number - 1)
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, self._numbered(number))

    def _numbered(self, number: int) -> Path:
        return self.path if number == 0 else self.path.with_name(f"{self.path.name}.{number}")

    def _reopen(self) -> None:
        fd = os.open(self.path, FLAGS, 0o600)
        try:
            for target in self.fds:
                os.dup2(fd, target, inheritable=target <= 2)
        finally:
            os.close(fd)


class _CheckAfterEachLine(logging.Filter):
    """Passes every record; rotates the log first if it is full."""

    def __init__(self, log: RotatingLog):
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        self.log.check()
        return True


_started: RotatingLog | None = None


def rotate_daemon_log() -> RotatingLog | None:
    """In a daemon that logs to a file of its own (LOG_ENV, set by whoever started it):
    rotate that file from now on, after each log line and every CHECK_EVERY_S. Once per
    process; None where the daemon logs elsewhere (a service's journal)."""
    global _started
    if _started is not None or LOG_ENV not in os.environ:
        return _started
    _started = RotatingLog(Path(os.environ[LOG_ENV]))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_CheckAfterEachLine(_started))
    threading.Thread(target=_check_forever, args=(_started,), name="log-rotation",
                     daemon=True).start()  # fmt: skip
    return _started


def _check_forever(log: RotatingLog) -> None:
    stop = threading.Event()  # never set: the thread ends with the daemon
    while not stop.wait(CHECK_EVERY_S):
        log.check()
