"""The benchmark's report: markdown tables, ratios and a plot, rebuilt from the raw JSON.

python -m bench.report bench/results/bench-….json [--docs]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.cells import FAILED, NOT_YET, OK
from bench.common import RESULTS
from bench.plan import (
    CLOUD_ONE_WAY_S,
    CLOUD_READS,
    COMPARISONS,
    OPERATIONS,
    READS,
    SYSTEM_BY_KEY,
    SYSTEMS,
    Workload,
)

DOCS = Path(__file__).parents[1] / "docs"
PLOT_NAME = "performance.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
BACKENDS = {
    "azurite": "Azurite emulator (az://)",
    "file": "file:// datastore (local disk)",
    "cloud": f"cloud-like: Azurite behind a {CLOUD_ONE_WAY_S * 1e3:g} ms delay each way (cold)",
}


class Table:
    """Cells of one run, looked up by (backend, workload, system)."""

    def __init__(self, results: dict):
        self.cells = {}
        for cell in results["cells"]:
            self.cells[cell["backend"], cell["workload"], cell["system"]] = cell
        self.failures: list[str] = []

    def get(self, backend: str, workload: str, system: str) -> dict | None:
        # Local disk is measured once and is the ceiling of both backends.
        return self.cells.get((backend, workload, system)) or self.cells.get(
            ("both", workload, system)
        )

    def has(self, backend: str) -> bool:
        """Whether BACKEND has a table: the cloud-like one only if it was measured (runs
        before it existed, and --only operations, have none)."""
        return backend != "cloud" or any(key[0] == backend for key in self.cells)

    def value(self, backend: str, workload: str, system: str) -> float | None:
        cell = self.get(backend, workload, system)
        return cell["value"] if cell and cell["status"] == OK else None

    def show(self, backend: str, workload: Workload, system: str) -> str:
        cell = self.get(backend, workload.key, system)
        if cell is None:
            return "—"
        if cell["status"] == NOT_YET:
            return "not yet"
        if cell["status"] == FAILED:
            failure = f"{cell['backend']} / {workload.key} / {system}: {cell['note']}"
            if failure not in self.failures:
                self.failures.append(failure)
            return f"failed [{self.failures.index(failure) + 1}]"
        text = number(cell["value"], workload.unit)
        if "p50_s" in cell["extra"]:
            extra = cell["extra"]
            text += f" ({extra['p50_s'] * 1e3:.2g} / {extra['p99_s'] * 1e3:.2g} ms)"
        return text


def number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3g} s" if value >= 0.01 else f"{value * 1e3:.3g} ms"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def ratio(a: float | None, b: float | None, higher_is_better: bool) -> str:
    """How many times better amlfs (`a`) is than `b`: above 1 means amlfs is better."""
    if a is None or b is None or a == 0 or b == 0:
        return "—"
    return f"{(a / b if higher_is_better else b / a):.2f}×"


def render(results: dict, plot: Path | None = None) -> str:
    table = Table(results)
    v, m = results["versions"], results["machine"]
    lines = [
        f"### Run of {m['date'][:10]} ({results['mode']} mode, {results['seconds']:.0f} s)",
        "",
        f"Machine: {m['host_cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; page cache emptied with `{results['page_cache']}`. "
        f"amlfs {v['amlfs_commit']}, Azurite {v['azurite']}, adlfs {v['adlfs']}, "
        f"{v['rclone']}, {v['fio']}.",
        "",
        "Data: " + "; ".join(f"{k}: {d}" for k, d in results["datasets"].items()) + ".",
        "",
    ]
    for backend, title in BACKENDS.items():
        if not table.has(backend):
            continue
        systems = [s for s in SYSTEMS if backend in s.backends]
        lines += [f"#### Reads, {title}", ""]
        lines.append("| workload | unit | " + " | ".join(s.label for s in systems) + " |")
        lines.append("|---|---|" + "---|" * len(systems))
        for w in READS:
            cells = [table.show(backend, w, s.key) if s.key in w.systems else "—" for s in systems]
            lines.append(f"| {w.label} | {w.unit} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ratios(table) + operations(table)
    lines.append("Small-file rows also give the per-file latency (p50 / p99).")
    if table.failures:
        lines += ["", "Failures:", *(f"[{i}] {f}" for i, f in enumerate(table.failures, 1))]
    if plot is not None:
        lines += ["", f"![amlfs beside its ceilings and rclone]({plot.name})"]
    return "\n".join(lines) + "\n"


def ratios(table: Table) -> list[str]:
    header = [f"{SYSTEM_BY_KEY[a].label} ÷ {SYSTEM_BY_KEY[b].label}" for a, b, _ in COMPARISONS]
    header += [f"{SYSTEM_BY_KEY[a].label} ÷ {SYSTEM_BY_KEY[p].label}"
               for a, _, p in COMPARISONS if p]  # fmt: skip
    lines = ["#### amlfs against its ceilings and the peer (above 1: amlfs better)", "",
             "| workload | backend | " + " | ".join(header) + " |",
             "|---|---|" + "---|" * len(header)]  # fmt: skip
    for backend in filter(table.has, BACKENDS):
        for w in READS:
            if backend == "cloud" and w.key not in CLOUD_READS:
                continue  # only a few cold rows are measured there

            def r(a: str, b: str, w: Workload = w, backend: str = backend) -> str:
                if b not in w.systems or a not in w.systems:
                    return "—"
                got = table.value(backend, w.key, a)
                if got is None and table.get(backend, w.key, a) is not None:
                    return table.show(backend, w, a)
                return ratio(got, table.value(backend, w.key, b), w.higher_is_better)

            row = [r(a, b) for a, b, _ in COMPARISONS] + [r(a, p) for a, _, p in COMPARISONS if p]
            hidden = {"file": ("rclone", "adlfs"), "cloud": ("adlfs",)}.get(backend, ())
            row = [c if not any(name in h for name in hidden) else "—"
                   for c, h in zip(row, header, strict=True)]  # fmt: skip
            lines.append(f"| {w.label} | {backend} | " + " | ".join(row) + " |")
    return [*lines, ""]


def operations(table: Table) -> list[str]:
    lines = ["#### Operations: amlfs against direct fsspec calls on the same data", "",
             "| operation | backend | unit | direct (ceiling) | amlfs | amlfs ÷ ceiling |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for backend in BACKENDS:
        if not any(table.get(backend, w.key, s) for w in OPERATIONS for s in w.systems):
            continue
        for w in OPERATIONS:
            direct = table.show(backend, w, "direct") if "direct" in w.systems else "—"
            amlfs = table.show(backend, w, "amlfs")
            cell = table.get(backend, w.key, "amlfs")
            note = f" ({cell['note']})" if cell and cell["status"] == OK and cell["note"] else ""
            got = table.value(backend, w.key, "amlfs")
            against = ratio(got, table.value(backend, w.key, "direct"), w.higher_is_better)
            lines.append(
                f"| {w.label}{note} | {backend} | {w.unit} | {direct} | {amlfs} | {against} |"
            )
    return [*lines, ""]


def short(value: float) -> str:
    if value != value:  # NaN: no figure
        return ""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def write_plot(results: dict, to_docs: bool) -> Path:
    """One panel per read workload on the emulator: every system's figure, amlfs in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = Table(results)
    systems = [s for s in SYSTEMS if "azurite" in s.backends]
    cols = 3
    rows = -(-len(READS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.6, rows * 2.6), squeeze=False)
    for ax, w in zip(axes.flat, READS, strict=False):
        names, values, colors = [], [], []
        for s in systems:
            if s.key not in w.systems:
                continue
            cell = table.get("azurite", w.key, s.key)
            names.append(
                s.label
                if cell and cell["status"] == OK
                else f"{s.label} ({cell['status'] if cell else '—'})"
            )
            values.append(table.value("azurite", w.key, s.key) or float("nan"))
            colors.append("tab:blue" if s.key.startswith("amlfs") else
                          "tab:orange" if s.key.startswith("rclone") else "tab:gray")  # fmt: skip
        rows = range(len(names))
        bars = ax.barh(rows, values, color=colors)
        ax.set_yticks(rows, names)
        ax.bar_label(bars, labels=[short(v) for v in values], fontsize=6, padding=2)
        ax.set_xscale("log")  # local page cache and the emulator differ by orders of magnitude
        ax.margins(x=0.25)
        ax.invert_yaxis()
        better = "higher" if w.higher_is_better else "lower"
        ax.set_title(f"{w.label}\n{w.unit}, {better} is better", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(READS) :]:
        ax.axis("off")
    fig.suptitle(f"amlfs, ceilings and rclone on Azurite — {results['machine']['date'][:10]}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    path = DOCS / PLOT_NAME if to_docs else RESULTS / f"{results['mode']}-{PLOT_NAME}"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def update_docs(results: dict) -> None:
    """Replace the generated section of docs/performance.md with this run's report."""
    doc = DOCS / "performance.md"
    text = doc.read_text()
    section = f"{BEGIN}\n{render(results, plot=DOCS / PLOT_NAME)}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("results", type=Path)
    parser.add_argument("--docs", action="store_true", help="rewrite docs/performance.md")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    print(render(results, plot=write_plot(results, args.docs)))
    if args.docs:
        update_docs(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
