"""The benchmark harness: its report says what was measured and how amlfs compares, and a
run measures every system, fails no figure and leaves no mount or process behind.

The smoke run measures real systems on tiny data; nothing here asserts a speed."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from amlfs.mounts import mounted_paths
from bench import catalog, diff_scale, fsspec_reads, pipeline_overhead
from bench.cells import FAILED, NOT_YET, OK, Cell
from bench.pathreads import HINTED
from bench.plan import CLOUD_READS, HINTED_READS, OPERATIONS, READS, SYSTEM_BY_KEY, SYSTEMS
from bench.report import ratio, render
from bench.runs import amlfs_supports, missing_tools
from tests.conftest import require
from tests.support.mounts import processes_mentioning

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300


def results_with(cells: list[Cell]) -> dict:
    return {
        "mode": "smoke",
        "seconds": 1.0,
        "page_cache": "drop_caches",
        "machine": dict(
            date="2026-11-21T00:00:00+00:00", host_cpus=2, memory_gib=24, kernel="6", python="3.11"
        ),
        "versions": dict(amlfs_commit="abc", azurite="3", adlfs="1", rclone="rclone", fio="fio"),
        "datasets": {"large": "1 × 1 MiB"},
        "cells": [c.public() for c in cells],
    }


# --- the report -----------------------------------------------------------------------


def test_ratios_read_above_one_when_amlfs_is_better_whatever_the_unit() -> None:
    assert ratio(300.0, 150.0, higher_is_better=True) == "2.00×"  # MiB/s
    assert ratio(0.5, 1.0, higher_is_better=False) == "2.00×"  # seconds
    assert ratio(None, 1.0, higher_is_better=True) == "—"


def test_report_shows_figures_ratios_not_yet_and_numbered_failures() -> None:
    report = render(results_with([
        Cell("both", "seq-cat", "local-cold", 1000.0),
        Cell("azurite", "seq-cat", "direct", 200.0),
        Cell("azurite", "seq-cat", "rclone-full", 100.0),
        Cell("azurite", "seq-cat", "amlfs-cold", 250.0),
        Cell("azurite", "seq-cat", "rclone-off", status=FAILED, note="RuntimeError: boom"),
        Cell("azurite", "find", "amlfs-cold", status=NOT_YET, note="amlfs mount"),
    ]))  # fmt: skip
    cat_rows = [line for line in report.splitlines() if line.startswith("| sequential, cat")]
    reads, _file_reads, azurite_ratios, _file_ratios = cat_rows
    assert "| 1,000 |" in reads and "| 250 |" in reads and "failed [1]" in reads
    # amlfs cold against adlfs direct, then against rclone full.
    assert "| 1.25× |" in azurite_ratios and "| 2.50× |" in azurite_ratios
    assert "[1] azurite / seq-cat / rclone-off: RuntimeError: boom" in report
    assert "not yet" in next(line for line in report.splitlines() if line.startswith("| find"))


def test_local_disk_is_measured_once_and_shown_as_the_ceiling_of_both_backends() -> None:
    report = render(results_with([Cell("both", "walk-stat", "local-warm", 0.25)]))
    rows = [line for line in report.splitlines() if line.startswith("| walk + stat")]
    assert sum("0.25 s" in row for row in rows) == 2


def test_reads_with_hints_are_measured_on_the_cloud_rows_whose_order_a_sampler_knows() -> None:
    assert SYSTEM_BY_KEY["amlfs-hints"].backends == ("cloud",)
    assert [w.key for w in READS if "amlfs-hints" in w.systems] == list(HINTED_READS)
    assert set(HINTED_READS) <= set(CLOUD_READS) and set(HINTED) == set(HINTED_READS)


def test_the_report_sets_reads_with_hints_against_amlfs_cold_and_rclone_full() -> None:
    report = render(results_with([
        Cell("cloud", "shuffle", "rclone-full", 100.0),
        Cell("cloud", "shuffle", "amlfs-cold", 150.0),
        Cell("cloud", "shuffle", "amlfs-hints", 300.0),
    ]))  # fmt: skip
    assert "amlfs hints ÷ amlfs cold" in report and "amlfs hints ÷ rclone full" in report
    [row] = [line for line in report.splitlines()
             if line.startswith("| shuffled pass, 4 workers | cloud |")]  # fmt: skip
    assert "| 2.00× |" in row and "| 3.00× |" in row and "| 1.50× |" in row


# --- a whole run ------------------------------------------------------------------------


def require_bench_tools() -> None:
    missing = missing_tools()
    require(not missing, f"benchmark tools missing: {', '.join(missing)}")
    require(os.geteuid() == 0 or os.access("/dev/fuse", os.W_OK), "FUSE is not usable")


def bench_args(work: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "bench", "--mode", "smoke", "--no-docs", "--keep", str(work),
            "--results-dir", str(results)]  # fmt: skip


CLOUD_ROWS = (*CLOUD_READS, "first-byte", "daemon-rss")


def mounts_under(folder: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(folder))]  # fmt: skip


def test_a_smoke_run_measures_every_system_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_bench_tools()
    work, results = tmp_path / "work", tmp_path / "results"
    proc = subprocess.run(
        bench_args(work, results), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [raw] = results.glob("bench-*.json")
    listed = json.loads(raw.read_text())["cells"]
    cells = {(c["backend"], c["workload"], c["system"]): c for c in listed}

    failed = [key for key, c in cells.items() if c["status"] == FAILED]
    assert not failed, [cells[k]["note"] for k in failed]
    for workload in READS:
        for system in SYSTEMS:
            if system.key not in workload.systems:
                continue
            for backend in system.backends:
                if backend == "cloud" and workload.key not in CLOUD_ROWS:
                    continue  # the cloud-like backend measures only a few cold rows
                cell = cells.get((backend, workload.key, system.key)) or cells.get(
                    ("both", workload.key, system.key)
                )
                assert cell is not None, (backend, workload.key, system.key)
                if system.key.startswith("amlfs") and not amlfs_supports("mount"):
                    assert cell["status"] == NOT_YET
                else:
                    assert cell["status"] == OK and cell["value"] > 0, cell
    for workload in OPERATIONS:
        # The million-file version lives in the registry only: one backend is enough.
        million = workload.key.endswith("million")
        for backend in ("file",) if million else ("azurite", "file"):
            assert (backend, workload.key, "amlfs") in cells
    assert "#### Reads, Azurite emulator" in proc.stdout
    assert "#### Reads, cloud-like" in proc.stdout
    assert not mounts_under(work)
    assert not processes_mentioning(work)


def test_ctrl_c_stops_every_mount_and_the_emulator(tmp_path: Path) -> None:
    require_bench_tools()
    work, results = tmp_path / "work", tmp_path / "results"
    proc = subprocess.Popen(bench_args(work, results), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not mounts_under(work) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mounts_under(work), "the run never mounted anything"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert not mounts_under(work)
    assert not processes_mentioning(work)
    assert not list(results.glob("*.json"))


def test_missing_tools_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH: no fio, rclone, find…
    proc = subprocess.run(bench_args(tmp_path / "w", tmp_path / "r"), capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bench: error: missing fio" in proc.stderr


def test_the_diff_bench_finds_its_four_kinds_of_change_and_reports_them(tmp_path: Path) -> None:
    results = diff_scale.bench(2_000, 0.04, 1, tmp_path)
    assert results["per_kind"] == 20  # bench() checks that the diff found 20 of each kind
    assert "`amlfs dataset diff A B --json`, a process" in diff_scale.report(results)


def test_the_pipeline_bench_runs_both_ways_and_decides_reuse_on_a_big_input(
    tmp_path: Path,
) -> None:
    chain = pipeline_overhead.bench_chain(5, 1, tmp_path)
    decide = pipeline_overhead.bench_decide(1_000, 1, tmp_path)  # it asserts the reuse
    text = pipeline_overhead.report(chain, decide)
    assert "`amlfs pipeline run --force`" in text and "1,000 files" in text


def test_the_fsspec_bench_reads_the_same_bytes_every_way(tmp_path: Path) -> None:
    args = argparse.Namespace(large=1, large_mib=2, small=5, small_kib=4, repeat=1, delay_ms=0)
    results = fsspec_reads.bench(args, tmp_path)
    passes = results["passes"]
    assert all(len(rates) == 1 and rates[0] > 0 for cell in passes.values()
               for rates in cell.values())  # fmt: skip
    assert "`amlfs://` from the block cache" in fsspec_reads.report(results)
    assert not [p for p in mounted_paths() if p.startswith(str(tmp_path))]


def test_the_catalog_bench_times_commands_both_ways_and_catches_up(tmp_path: Path) -> None:
    args = argparse.Namespace(datasets=4, versions=2, files=3, repeat=1, delay_ms=0)
    results = catalog.bench(args, tmp_path)  # it checks what each refresh read
    assert results["median"]["objects"] == 4 * 2 + 3  # versions, marker, datastore, small:1
    text = catalog.report(results)
    assert "`amlfs dataset show`" in text and "nothing new" in text
