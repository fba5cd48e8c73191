"""What the team catalog costs: commands with it beside the local-only registry, and
catching up with a big catalog.

    python -m bench.catalog [--datasets 1000] [--versions 10] [--files 10] [--repeat 5]
                            [--delay-ms 0]

Starts its own emulator on 127.0.0.1 (with --delay-ms, through bench's delay line,
bench/latency.py, that many ms each way) and measures, as real processes (start-up
included), medians of --repeat:
1. `amlfs dataset register` of a small folder (--files files) and `amlfs dataset show`,
   in a state folder of its own (local only) and in one attached to a catalog that
   already holds DATASETS × VERSIONS versions;
2. catching up with that catalog (amlfs.catalog.link.CatalogLink.refresh, in-process):
   a state folder that attaches and reads every version, then a refresh with nothing
   new (one listing: what every command pays), then one after a version was added
   elsewhere. The catalog's versions are written straight to the container (the same
   documents `amlfs` writes), so that filling it does not dominate the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import adlfs

from amlfs.catalog import layout
from amlfs.catalog.link import CatalogLink, Refreshed
from amlfs.home import registry_path
from amlfs.registry import replicas
from amlfs.registry.models import NewVersion, PinnedFile
from amlfs.registry.shared import dataset_scope
from amlfs.registry.store import Registry, manifest_digest, now
from amlfs.storage import Store
from bench.common import amlfs_cmd, machine, run_command, timed_run, write_results
from bench.latency import DelayProxy
from tests.support.azurite import Azurite

CONNECTION_ENV = "AMLFS_BENCH_CONNECTION_STRING"
CONTAINER = "catalog"
BATCH = 500  # objects written to the container per request batch while filling it


def fill(fs: adlfs.AzureBlobFileSystem, datasets: int, versions: int, files: int) -> None:
    """DATASETS × VERSIONS version objects of FILES synthetic files each, the marker and
    the datastore's object, in the catalog below team:catalog."""
    root = f"{CONTAINER}/catalog"
    objects = {f"{root}/{layout.MARKER}": layout.marker()}
    for d in range(datasets):
        for v in range(1, versions + 1):
            pinned = [PinnedFile(f"part-{i:03}.bin", 1000 + i, f'"0x{d:04x}{v:02x}{i:03x}"')
                      for i in range(files)]  # fmt: skip
            new = NewVersion(f"set{d:04}", "team", f"sets/set{d:04}/v{v}", [f"sets/v{v}"],
                             pinned)  # fmt: skip
            digest = manifest_digest(new.datastore, new.root, pinned)
            key = layout.version_key(new.dataset, v)
            document = replicas.new_version_document(new, v, digest, now())
            objects[f"{root}/{key}"] = layout.encode(key, document)
    names = list(objects)
    for start in range(0, len(names), BATCH):
        fs.pipe({name: objects[name] for name in names[start : start + BATCH]})


def bench(args: argparse.Namespace, work: Path) -> dict:
    figures: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds)

    with ExitStack() as stack:
        emulator = stack.enter_context(Azurite(work / "azurite"))
        fs = adlfs.AzureBlobFileSystem(connection_string=emulator.connection_string,
                                       skip_instance_cache=True)  # fmt: skip
        fs.mkdir(CONTAINER)
        fs.pipe({f"{CONTAINER}/small/f{i:03}.bin": os.urandom(1000) for i in range(args.files)})
        started = time.perf_counter()
        fill(fs, args.datasets, args.versions, args.files)
        fill_s = time.perf_counter() - started
        proxy = DelayProxy(emulator.port, args.delay_ms / 1000) if args.delay_ms else None
        stack.enter_context(proxy or nullcontext())
        port = proxy.port if proxy else emulator.port
        connection = emulator.connection_string.replace(f":{emulator.port}/", f":{port}/")
        env = {**os.environ, CONNECTION_ENV: connection}

        homes = {"local": work / "local", "catalog": work / "attached"}
        for home in homes.values():
            run_command(amlfs_cmd(home, "datastore", "add", "team", f"az://{CONTAINER}",
                                  "--connection-string-env", CONNECTION_ENV), env)  # fmt: skip
        started = time.perf_counter()
        run_command(amlfs_cmd(homes["catalog"], "catalog", "attach", "team:catalog"), env)
        record("attach_s", time.perf_counter() - started)

        for _run in range(args.repeat):
            for kind, home in homes.items():
                record(f"register_{kind}_s", timed_run(amlfs_cmd(
                    home, "dataset", "register", "small", "--datastore", "team",
                    "--path", "small"), env))  # fmt: skip
                record(f"show_{kind}_s", timed_run(amlfs_cmd(
                    home, "dataset", "show", "small"), env))  # fmt: skip
                record(f"list_{kind}_s", timed_run(amlfs_cmd(
                    home, "dataset", "list"), env))  # fmt: skip

        for run in range(args.repeat):
            first, unchanged, one_new, dataset = catch_up(work / f"fresh{run}",
                                                          homes["catalog"], env)  # fmt: skip
            record("refresh_dataset_s", dataset.seconds)
            record("refresh_first_s", first.seconds)
            record("refresh_unchanged_s", unchanged.seconds)
            record("refresh_one_new_s", one_new.seconds)
            figures.setdefault("objects", []).append(first.listed)
            print(f"bench.catalog: pass {run + 1} of {args.repeat} done", file=sys.stderr)
    return {
        "datasets": args.datasets, "versions": args.versions, "files": args.files,
        "repeat": args.repeat, "delay_ms": args.delay_ms, "fill_s": fill_s,
        "median": {name: statistics.median(values) for name, values in figures.items()},
        "passes": figures,
    }  # fmt: skip


def catch_up(home: Path, writer: Path,
             env: dict) -> tuple[Refreshed, Refreshed, Refreshed, Refreshed]:  # fmt: skip
    """A new state folder HOME attached to the catalog catches up with all of it from
    nothing, again with nothing new, once more after WRITER registered a version, and
    then with one dataset alone (nothing new)."""
    run_command(amlfs_cmd(home, "datastore", "add", "team", f"az://{CONTAINER}",
                          "--connection-string-env", CONNECTION_ENV), env)  # fmt: skip
    with Registry(registry_path(home)) as registry:
        with registry.transaction():
            replicas.attach(registry, "team", "catalog", now())
        link = CatalogLink(Store(registry.get_datastore("team"), env), "catalog")
        registry.shared = link
        first = link.refresh(registry, keep_local={"team"})
        unchanged = link.refresh(registry, keep_local={"team"})
        run_command(amlfs_cmd(writer, "dataset", "register", "small", "--datastore", "team",
                              "--path", "small"), env)  # fmt: skip
        one_new = link.refresh(registry, keep_local={"team"})
        dataset = link.refresh(registry, keep_local={"team"}, scope=dataset_scope("set0000"))
    if one_new.read != 1 or unchanged.read != 0 or dataset.read != 0:
        raise RuntimeError(f"refreshes read {unchanged.read}, {one_new.read} and"
                           f" {dataset.read} objects, not 0, 1 and 0")  # fmt: skip
    return first, unchanged, one_new, dataset


def report(r: dict) -> str:
    m = r["median"]
    where = f"{r['delay_ms']:g} ms each way" if r["delay_ms"] else "on 127.0.0.1"
    versions = r["datasets"] * r["versions"]

    def row(label: str, local: float, shared: float) -> str:
        return (f"| {label} | {local * 1000:.0f} ms | {shared * 1000:.0f} ms |"
                f" {shared / local:.2f}× | {(shared - local) * 1000:+.0f} ms |")  # fmt: skip

    return "\n".join([
        f"### The team catalog (Azurite {where})",
        "",
        f"A catalog of {r['datasets']:,} datasets × {r['versions']} versions ({versions:,}"
        f" version objects of {r['files']} files each); medians of {r['repeat']}.",
        "",
        "| command, a process | local registry | attached to the catalog | ratio | cost |",
        "|---|---|---|---|---|",
        row(f"`amlfs dataset register` ({r['files']} files)", m["register_local_s"],
            m["register_catalog_s"]),
        row("`amlfs dataset show`", m["show_local_s"], m["show_catalog_s"]),
        row("`amlfs dataset list` (every dataset)", m["list_local_s"], m["list_catalog_s"]),
        "",
        "| catching up with the catalog, in-process | seconds |",
        "|---|---|",
        f"| one dataset, nothing new (what `dataset show`, `mount NAME:V` read) |"
        f" {m['refresh_dataset_s']:.3f} s |",
        f"| the whole catalog, nothing new (what `dataset list` reads) |"
        f" {m['refresh_unchanged_s']:.3f} s |",
        f"| the whole catalog, one version added elsewhere | {m['refresh_one_new_s']:.3f} s |",
        f"| a new machine: list, read and apply all {int(m['objects']):,} objects |"
        f" {m['refresh_first_s']:.2f} s |",
        f"| `amlfs catalog attach` of a new machine, a process (once) | {m['attach_s']:.2f} s |",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="delay the latency proxy adds each way")  # fmt: skip
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="amlfs-bench-catalog-"))
    try:
        results = {"machine": machine(), **bench(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = write_results("catalog", results)
    print(report(results))
    print(f"\nraw results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
