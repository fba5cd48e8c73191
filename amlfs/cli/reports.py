"""Profiles and diffs as text for people (their JSON is their own to_json())."""

from __future__ import annotations

from amlfs.cli.output import human_bytes
from amlfs.diff import Delta, Diff
from amlfs.profile import Profile, SizeStats, Tally

LISTED_PER_KIND = 20  # paths shown per kind of change; --json lists them all


def render_profile(p: Profile) -> list[str]:
    lines = [
        f"version:      {p.version}",
        f"files:        {p.files:,} ({human_bytes(p.bytes)})",
        f"sizes:        {size_line(p.sizes)}",
        f"modified:     {p.oldest or '-'} .. {p.newest or '-'}",
        f"md5:          {p.md5_files:,} of {p.files:,} files have one",
        f"manifest:     sha256:{p.manifest_sha256}",
    ]
    d = p.duplicates
    lines.append(
        f"duplicates:   {d.groups:,} groups of identical files, {d.files:,} files, "
        f"{human_bytes(d.redundant_bytes)} redundant"
    )
    lines += [
        f"  md5 {g.md5} ({human_bytes(g.size)} × {g.files}): {', '.join(g.paths)}"
        for g in d.examples
    ]
    lines.append("size histogram:")
    lines += [
        f"  [{human_bytes(low)}, {human_bytes(high)})  {n:,}" for low, high, n in p.sizes.histogram
    ]
    lines += ["extensions:", *_tallies(p.extensions)]
    lines += ["top-level folders:", *_tallies(p.folders)]
    return lines


def _tallies(tallies: dict[str, Tally]) -> list[str]:
    width = max((len(k or "(none)") for k in tallies), default=0)
    return [
        f"  {(k or '(none)').ljust(width)}  {t.files:>10,} files  {human_bytes(t.bytes):>10}"
        for k, t in tallies.items()
    ]


def size_line(s: SizeStats) -> str:
    """Least, quantiles and greatest size on one line."""
    parts = [f"min {human_bytes(s.min)}"]
    parts += [f"p{p} {human_bytes(size)}" for p, size in s.quantiles.items()]
    parts.append(f"max {human_bytes(s.max)}")
    return ", ".join(parts)


def render_diff(d: Diff) -> list[str]:
    lines = [
        f"{side}: {v.ref}  {v.file_count:,} files ({human_bytes(v.total_bytes)})  "
        f"from {v.datastore}:{v.root or '/'}"
        for side, v in (("A", d.a), ("B", d.b))
    ]
    kinds = [
        ("added", [f"+ {f.path}  ({human_bytes(f.size)})" for f in d.added]),
        ("removed", [f"- {f.path}  ({human_bytes(f.size)})" for f in d.removed]),
        ("changed", [
            f"~ {c.after.path}  ({human_bytes(c.before.size)} -> {human_bytes(c.after.size)})"
            for c in d.changed
        ]),
        ("renamed", [f"> {r.before.path} -> {r.after.path}" for r in d.renamed]),
    ]  # fmt: skip
    for kind, listed in kinds:
        if listed:
            lines.append(f"{kind} ({len(listed):,}):")
            lines += [f"  {line}" for line in listed[:LISTED_PER_KIND]]
            if len(listed) > LISTED_PER_KIND:
                lines.append(f"  … {len(listed) - LISTED_PER_KIND:,} more (--json lists all)")
    lines.append(
        f"{len(d.added):,} added, {len(d.removed):,} removed, {len(d.changed):,} changed, "
        f"{len(d.renamed):,} renamed, {d.unchanged:,} unchanged"
    )
    lines += ["by extension:", *_delta_table("EXTENSION", d.extensions)]
    lines += ["by top-level folder:", *_delta_table("FOLDER", d.folders)]
    lines += ["sizes:", f"  A: {size_line(d.sizes_a)}", f"  B: {size_line(d.sizes_b)}"]
    return lines


def _delta_table(heading: str, deltas: dict[str, Delta]) -> list[str]:
    rows = [(f"  {heading}", "FILES A", "FILES B", "ΔFILES", "BYTES A", "BYTES B", "ΔBYTES")]
    for key, d in deltas.items():
        rows.append((
            f"  {key or '(none)'}", f"{d.a.files:,}", f"{d.b.files:,}",
            _signed(d.b.files - d.a.files), human_bytes(d.a.bytes), human_bytes(d.b.bytes),
            _signed_bytes(d.b.bytes - d.a.bytes),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:  # the name left-aligned, the figures right-aligned
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *cells[1:]]))
    return lines


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def _signed_bytes(n: int) -> str:
    return ("+" if n > 0 else "-" if n < 0 else "") + human_bytes(abs(n))
