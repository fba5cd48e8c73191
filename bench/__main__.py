"""One command that measures amlfs beside its ceilings and a peer mount, on the same bytes.

    python -m bench [--mode quick|full|smoke] [--docs] [--keep WORKDIR]
                    [--only reads|operations|cloud] [--mount-option ARG]… [size flags]

Starts its own emulator on 127.0.0.1, generates the data sets, runs every workload for
every system, tears everything down (also on Ctrl-C, SIGTERM or failure), prints a
markdown table and writes the raw results to bench/results/. With --docs (the default in
full mode) it also rewrites the table and plot in docs/performance.md.
"""

from __future__ import annotations

import argparse
import compileall
import logging
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import fields
from pathlib import Path

import amlfs
from bench import pagecache, report
from bench.common import RESULTS, write_results
from bench.data import generate, upload
from bench.plan import PRESETS, Scale, scale_with
from bench.runs import Run, missing_tools, versions
from tests.support.azurite import Azurite

log = logging.getLogger("bench")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(PRESETS), default="quick")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rewrite docs/performance.md (default: only in full mode)",
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--only",
        choices=("reads", "operations", "cloud"),
        help="measure one half of the plan (the other half's cells are left out), or only "
        "the cloud-like backend's reads beside local disk",
    )
    parser.add_argument(
        "--mount-option",
        action="append",
        default=[],
        metavar="ARG",
        help="give ARG to every `amlfs mount` (repeat for more), e.g."
        " --mount-option=--metrics-address --mount-option=127.0.0.1:9101",
    )
    parser.add_argument("--results-name", default="bench", help="prefix of the JSON file")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    for f in fields(Scale):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(PRESETS["quick"].public()[f.name])
        )
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every mount and the emulator are stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Only the harness's own progress: the Azure SDK logs every request at INFO.
    logging.basicConfig(level=logging.WARNING, format="bench: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    missing = missing_tools()
    if missing:
        print(f"bench: error: missing {', '.join(missing)}; run scripts/bootstrap.sh --bench",
              file=sys.stderr)  # fmt: skip
        return 2
    scale = scale_with(args.mode, vars(args))
    # As an installed amlfs has: else a checkout run with PYTHONDONTWRITEBYTECODE compiles
    # every module at each start, and the first-byte row times the compiler.
    compileall.compile_dir(Path(amlfs.__file__).parent, quiet=1)
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    with ExitStack() as stack:
        if args.keep:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(tempfile.mkdtemp(prefix="amlfs-bench-"))
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        log.info("generating data sets in %s", work / "data")
        data = generate(work / "data", scale)
        emulator = stack.enter_context(Azurite(work / "azurite"))
        run = Run(work, data, scale, emulator, tuple(args.mount_option))
        log.info("uploading to the emulator on 127.0.0.1:%d", emulator.port)
        upload_s = upload(run.direct.fs(8), data)
        run.measure_everything(only=args.only)
        results = {
            "mode": args.mode,
            "machine": run.machine(),
            "versions": versions(),
            "scale": scale.public(),
            "mount_options": args.mount_option,
            "datasets": data.describe(),
            "page_cache": "drop_caches" if pagecache.can_drop() else "fadvise",
            "setup_upload_s": upload_s,
            "seconds": time.monotonic() - started,
            "cells": [c.public() for c in run.cells],
        }
    path = write_results(args.results_name, results, args.results_dir)
    write_docs = args.docs if args.docs is not None else args.mode == "full"
    # The plot shows the emulator's reads: none without them.
    plot = report.write_plot(results, write_docs) if args.only in (None, "reads") else None
    print(report.render(results, plot=plot))
    if write_docs:
        report.update_docs(results)
    log.info("raw results: %s (%.0f s in all)", path, results["seconds"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        sys.exit(130)
