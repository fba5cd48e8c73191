"""What changed between two dataset versions, from the registry alone.

Files are compared by their path below each version's root and by what the versions
pinned, never by reading storage (docs/semantics.md, "Comparing versions"):

- *added*: a path only B has a file at; *removed*: a path only A has a file at;
- *changed*: a path both have a file at, with other content: the sizes differ, or the
  MD5s differ where both files have one, or, where either lacks one, the etags differ;
- *renamed*: a removed file and an added file with the same MD5 and size. Where several
  removed and added files share an MD5 and size, they are paired in path order (the
  first removed path with the first added path, ...); the unpaired stay removed or added.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from amlfs.profile import SizeStats, Tally, breakdown
from amlfs.registry import trees
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.store import Registry


@dataclass(frozen=True)
class Changed:
    before: PinnedFile
    after: PinnedFile


@dataclass(frozen=True)
class Renamed:
    before: PinnedFile
    after: PinnedFile


@dataclass(frozen=True)
class Delta:
    """One extension's or top-level folder's files and bytes in A and in B."""

    a: Tally
    b: Tally

    def to_json(self) -> dict:
        return {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "delta": {"files": self.b.files - self.a.files, "bytes": self.b.bytes - self.a.bytes},
        }


@dataclass(frozen=True)
class Diff:
    a: Version
    b: Version
    added: list[PinnedFile]  # each list in path order (renamed: by the path in A)
    removed: list[PinnedFile]
    changed: list[Changed]
    renamed: list[Renamed]
    extensions: dict[str, Delta]
    folders: dict[str, Delta]
    sizes_a: SizeStats
    sizes_b: SizeStats

    @property
    def same(self) -> bool:
        """A and B pin the same content at the same paths."""
        return not (self.added or self.removed or self.changed or self.renamed)

    @property
    def unchanged(self) -> int:
        """Files at the same path with the same content in both."""
        return self.a.file_count - len(self.removed) - len(self.changed) - len(self.renamed)

    def to_json(self) -> dict:
        return {
            "a": _version_json(self.a),
            "b": _version_json(self.b),
            "same": self.same,
            "counts": {
                "added": len(self.added),
                "removed": len(self.removed),
                "changed": len(self.changed),
                "renamed": len(self.renamed),
                "unchanged": self.unchanged,
            },
            "added": [_file_json(f) for f in self.added],
            "removed": [_file_json(f) for f in self.removed],
            "changed": [
                {"path": c.after.path, "a": _pins_json(c.before), "b": _pins_json(c.after)}
                for c in self.changed
            ],
            "renamed": [_renamed_json(r) for r in self.renamed],
            "extensions": {k: d.to_json() for k, d in self.extensions.items()},
            "folders": {k: d.to_json() for k, d in self.folders.items()},
            "sizes": {"a": self.sizes_a.to_json(), "b": self.sizes_b.to_json()},
        }


def diff(registry: Registry, a: Version, b: Version) -> Diff:
    """How version B differs from version A."""
    added, removed, changed = [], [], []
    for before, after in trees.differing_files(registry, a, b):
        if before is None:
            added.append(after)
        elif after is None:
            removed.append(before)
        else:
            changed.append(Changed(before, after))
    renamed = _pair_renames(removed, added)
    moved_from = {r.before.path for r in renamed}
    moved_to = {r.after.path for r in renamed}
    # B's figures are A's with the differing files swapped: one pass over A, none over B.
    of_a = breakdown(registry, a)
    of_b = of_a.replaced(
        [*removed, *(c.before for c in changed)], [*added, *(c.after for c in changed)]
    )
    return Diff(
        a=a,
        b=b,
        added=sorted((f for f in added if f.path not in moved_to), key=_path),
        removed=sorted((f for f in removed if f.path not in moved_from), key=_path),
        changed=sorted(changed, key=lambda c: c.after.path),
        renamed=renamed,
        extensions=_deltas(of_a.extensions, of_b.extensions),
        folders=_deltas(of_a.folders, of_b.folders),
        sizes_a=SizeStats.of(of_a.sizes),
        sizes_b=SizeStats.of(of_b.sizes),
    )


def _pair_renames(removed: list[PinnedFile], added: list[PinnedFile]) -> list[Renamed]:
    """Removed and added files with the same MD5 and size, paired in path order."""
    gone: dict[tuple[bytes, int], list[PinnedFile]] = defaultdict(list)
    for f in removed:
        if f.md5 is not None:
            gone[(f.md5, f.size)].append(f)
    came: dict[tuple[bytes, int], list[PinnedFile]] = defaultdict(list)
    for f in added:
        if f.md5 is not None and (f.md5, f.size) in gone:
            came[(f.md5, f.size)].append(f)
    pairs = []
    for key, targets in came.items():
        sources = sorted(gone[key], key=_path)
        pairs += map(Renamed, sources, sorted(targets, key=_path))  # zip: leftovers stay
    return sorted(pairs, key=lambda r: r.before.path)


def _deltas(a: dict[str, Tally], b: dict[str, Tally]) -> dict[str, Delta]:
    return {k: Delta(a.get(k, Tally()), b.get(k, Tally())) for k in sorted({*a, *b})}


def _path(f: PinnedFile) -> str:
    return f.path


def _version_json(v: Version) -> dict:
    return {
        "ref": v.ref,
        "datastore": v.datastore,
        "root": v.root,
        "files": v.file_count,
        "bytes": v.total_bytes,
        "manifest_sha256": v.manifest_sha256,
    }


def _pins_json(f: PinnedFile) -> dict:
    return {
        "size": f.size,
        "etag": f.etag,
        "md5": f.md5.hex() if f.md5 else None,
        "last_modified": f.last_modified,
    }


def _renamed_json(r: Renamed) -> dict:
    md5 = r.after.md5.hex() if r.after.md5 else None
    return {"a": r.before.path, "b": r.after.path, "size": r.after.size, "md5": md5}


def _file_json(f: PinnedFile) -> dict:
    return {"path": f.path, **_pins_json(f)}
