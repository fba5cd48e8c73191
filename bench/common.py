"""What every benchmark needs: timing, the machine's description, writing results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


def machine() -> dict:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def run_command(args: list[str], env: dict | None = None, timeout: float = 1800) -> str:
    """The output of one command, which must succeed (else RuntimeError with its stderr)."""
    proc = subprocess.run(args, env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def timed_run(args: list[str], env: dict | None = None, timeout: float = 1800) -> float:
    """Seconds one command takes; it must succeed."""
    started = time.perf_counter()
    run_command(args, env, timeout)
    return time.perf_counter() - started


def amlfs_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "amlfs", "--home", str(home), *args]


def write_results(name: str, results: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def db_size(home: Path) -> int:
    """Bytes the registry takes on disk (database plus WAL)."""
    return sum(p.stat().st_size for p in home.glob("registry.db*"))


def bounded(action: Callable[[], T], timeout: float) -> T:
    """ACTION's result, or TimeoutError after TIMEOUT seconds.

    It runs in a daemon thread, so a read stuck in a mount that stopped answering
    cannot hold the run: the caller then tears the mount down, which fails the stuck
    call, and the thread ends.
    """
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, action()))
        except BaseException as error:  # handed to the caller's thread
            outcome.append((False, error))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise TimeoutError(f"no result within {timeout:.0f} s (a mount stopped answering?)")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
