"""`amlfs dataset diff` of two versions of a million files, beside listing both.

    python -m bench.diff_scale [--files 1000000] [--differ 0.01] [--repeat 3]

Stores two synthetic versions of N files (the manifests are what matters, not the
bytes; the paths of the registry-scale bench, varied sizes, an MD5 each) that differ in
a fraction of their files, in equal parts added, removed, changed and renamed. Then,
in the same run and alternately, it times:
- the ceiling: listing both versions' files from the registry (`Registry.iter_files`,
  what any comparison in Python would start from), in-process;
- `amlfs.diff.diff()` in-process;
- `amlfs dataset diff A B --json` as a real process (interpreter start-up, printing
  every difference as JSON), with its peak RSS.
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from amlfs.diff import diff
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from bench.common import amlfs_cmd, db_size, machine, run_command, write_results
from bench.registry_scale import file_names


def two_versions(n: int, differ: float) -> tuple[list[PinnedFile], list[PinnedFile], int]:
    """Version A's files, version B's, and how many files each kind of change touches."""
    rng = random.Random(0)
    a = [
        PinnedFile(name, int(rng.lognormvariate(10, 2)), f'"0x{i:015X}"', rng.randbytes(16),
                   "2026-11-21T00:00:00+00:00")
        for i, name in enumerate(file_names(n))
    ]  # fmt: skip
    each = int(n * differ / 4)
    picked = rng.sample(range(n), 3 * each)
    removed, changed, renamed = (set(picked[k * each : (k + 1) * each]) for k in range(3))
    b = []
    for i, f in enumerate(a):
        if i in changed:
            b.append(PinnedFile(f.path, f.size + 1, f.etag + "b", rng.randbytes(16)))
        elif i in renamed:
            b.append(PinnedFile(f.path.replace("/f", "/renamed-f"), f.size, f.etag, f.md5))
        elif i not in removed:
            b.append(f)
    b += [PinnedFile(f"set/added/a{j:07}.bin", 1000 + j, f'"a{j}"', rng.randbytes(16))
          for j in range(each)]  # fmt: skip
    return a, b, each


def timed(action: Callable[[], object]) -> float:
    gc.collect()  # no collection of an earlier action's garbage inside this one
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench(n: int, differ: float, repeat: int, work: Path) -> dict:
    home = work / "home"
    home.mkdir(mode=0o700)
    (home / "registry.db").touch(mode=0o600)
    a, b, each = two_versions(n, differ)
    with Registry(home / "registry.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        first = registry.register(NewVersion("big", "synthetic", "", ["set"], a))
        second = registry.register(NewVersion("big", "synthetic", "", ["set"], b))
        del a, b
        found = diff(registry, first, second)
        counts = {k: len(getattr(found, k)) for k in ("added", "removed", "changed", "renamed")}
        assert counts == dict.fromkeys(counts, each), counts
        ceiling, api, cli = [], [], []
        command = amlfs_cmd(home, "dataset", "diff", first.ref, second.ref, "--json")
        for _ in range(repeat):  # alternately, so that a noisy neighbour hits all three
            ceiling.append(timed(lambda: [sum(1 for _ in registry.iter_files(v))
                                          for v in (first, second)]))  # fmt: skip
            api.append(timed(lambda: diff(registry, first, second)))
            cli.append(timed(lambda: _differing(command)))
    return {
        "files": n,
        "differ": differ,
        "per_kind": each,
        "repeat": repeat,
        "registry_bytes": db_size(home),
        "iter_files_both_s": statistics.median(ceiling),
        "diff_api_s": statistics.median(api),
        "diff_cli_s": statistics.median(cli),
        "cli_peak_rss_mib": peak_rss_mib(home, first.ref, second.ref),
    }


# The process reads its own high-water mark: a child's rusage would also count the
# memory of the bench process it was forked from.
_REPORT_PEAK = """
import sys
from amlfs.cli.main import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")),
      file=sys.stderr)
sys.exit(code)
"""


def peak_rss_mib(home: Path, a: str, b: str) -> float:
    """The peak RSS of one `dataset diff A B --json`."""
    command = [sys.executable, "-c", _REPORT_PEAK, "--home", str(home), "dataset", "diff", a, b,
               "--json"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 1, proc.stderr
    return int(proc.stderr.split()[-1]) / 1024


def _differing(command: list[str]) -> None:
    """Run `dataset diff`, which exits 1 when the versions differ (as they do here)."""
    try:
        run_command(command)
    except RuntimeError as exc:
        if "failed (1)" not in str(exc):
            raise


def report(r: dict) -> str:
    ceiling = r["iter_files_both_s"]
    return "\n".join([
        f"### `dataset diff` of two versions of {r['files']:,} files",
        "",
        f"{r['per_kind']:,} files each added, removed, changed and renamed "
        f"({r['differ']:.0%} of the files); medians of {r['repeat']} runs.",
        "",
        "| what | time | against the ceiling (above 1: faster) |",
        "|---|---|---|",
        f"| list both versions' files, `iter_files` (ceiling) | {ceiling:.2f} s | 1.00× |",
        f"| `amlfs.diff.diff()` in-process | {r['diff_api_s']:.2f} s | "
        f"{ceiling / r['diff_api_s']:.2f}× |",
        f"| `amlfs dataset diff A B --json`, a process | {r['diff_cli_s']:.2f} s | "
        f"{ceiling / r['diff_cli_s']:.2f}× |",
        "",
        f"Peak RSS of the `dataset diff` process: {r['cli_peak_rss_mib']:.0f} MiB; "
        f"registry: {r['registry_bytes'] / 2**20:.0f} MiB.",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--differ", type=float, default=0.01, help="fraction of files changed")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-"))
    try:
        results = {"machine": machine(), **bench(args.files, args.differ, args.repeat, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("diff_scale", results)
    print(report(results))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
