"""The soak (bench/soak.py), two minutes of it: `amlfs daemon` serving eight readers and a
writer through a cache smaller than the version, reloaded every 30 s, passes (every
byte read and written checks out, no error, RSS, descriptors and threads flat) and
leaves no mount or process behind. The full run is `python -m bench.soak --minutes 30`,
not part of the suite."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from amlfs.mounts import mounted_paths
from tests.conftest import require
from tests.support.azurite import Azurite
from tests.support.mounts import processes_mentioning

REPO = Path(__file__).resolve().parents[1]
MINUTES = 2


@pytest.mark.soak
def test_a_two_minute_soak_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require(Azurite.available(), "Azurite is not installed (run `npm ci`)")
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(shutil.which("fusermount3") is not None, "fusermount3 is missing (apt: fuse3)")
    args = [sys.executable, "-m", "bench.soak", "--minutes", str(MINUTES), "--files", "40",
            "--file-size", "1MiB", "--cache-size", "16MiB", "--memory-cache", "8MiB",
            "--reload-every", "30", "--work", str(tmp_path), "--results", str(tmp_path),
            "--plot", str(tmp_path / "soak.png")]  # fmt: skip
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                              timeout=MINUTES * 60 + 120)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (results,) = (json.loads(p.read_text()) for p in tmp_path.glob("soak-*.json"))
        assert results["passed"] and results["error_count"] == 0
        assert results["read"]["checked"] == results["read"]["bytes"] > 0
        assert results["written"]["checked"] == results["written"]["bytes"] > 0
        assert len(results["reloads"]) >= 3  # the extra mount added, removed, added
        assert len(results["samples"]) >= MINUTES * 6
        assert (tmp_path / "soak.png").stat().st_size > 0
        assert not [p for p in mounted_paths() if p.startswith(f"{tmp_path}/")]
        assert not processes_mentioning(tmp_path)
    finally:  # the soak cleans up after itself; this is for when it could not
        for pid in processes_mentioning(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in mounted_paths():
            if point.startswith(f"{tmp_path}/"):
                subprocess.run(["fusermount3", "-u", "-z", point], check=False)
