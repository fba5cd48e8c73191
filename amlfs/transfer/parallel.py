"""Running transfers: a bounded pool of threads over a list of files, and retries."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from amlfs.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ATTEMPTS = 4  # per file, for storage failures; anything else is not retried
RETRY_FIRST_S = 0.5


def with_retries(call: Callable[[], R], what: str, stopping: threading.Event | None = None) -> R:
    """CALL, tried again with backoff (0.5 s doubling) while it raises StorageError, up to
    ATTEMPTS times or until STOPPING is set."""
    delay = RETRY_FIRST_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except StorageError as error:
            if attempt == ATTEMPTS or (stopping is not None and stopping.is_set()):
                raise
            log.info("%s: %s; trying again in %.1f s", what, error, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def run_parallel(
    items: Iterable[T],
    work: Callable[[T], R],
    workers: int,
    done: Callable[[T, R], None],
    failed: Callable[[T, Exception], None],
    expected: tuple[type[Exception], ...],
    stopping: threading.Event | None = None,
) -> None:
    """WORK on each item, WORKERS at once, in the order given; DONE or FAILED (for the
    EXPECTED errors; others propagate) is called on this thread as each ends. On Ctrl-C
    (or any error) STOPPING is set, queued items are never started and those in flight
    end on their own."""
    queue = list(items)
    queue.reverse()  # popped from the end
    with ThreadPoolExecutor(workers, thread_name_prefix="transfer") as pool:
        running: dict[Future, T] = {}
        try:
            while queue or running:
                while queue and len(running) < workers:
                    item = queue.pop()
                    running[pool.submit(work, item)] = item
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = running.pop(future)
                    try:
                        result = future.result()
                    except expected as error:
                        failed(item, error)
                        continue
                    done(item, result)
        except BaseException:
            if stopping is not None:
                stopping.set()
            for future in running:
                future.cancel()
            raise
