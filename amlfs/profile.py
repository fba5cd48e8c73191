"""The profile of a file-dataset version: what its files are like, from the registry alone.

A profile reads nothing from storage: every figure comes from what the version pinned
(size, MD5, last-modified, path), so it can be computed for a version whose source is
gone, and two profiles of one version are always equal.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from amlfs.registry import trees
from amlfs.registry.models import PinnedFile, Version
from amlfs.registry.store import Registry

QUANTILES = (10, 25, 50, 75, 90, 99)
DUPLICATE_EXAMPLES = 5  # groups of identical files shown, the most redundant bytes first
PATHS_PER_EXAMPLE = 5
ROOT_FOLDER = "."  # the top-level "folder" of files at the version's root


def extension(name: str) -> str:
    """A file name's extension: its last '.' and what follows, lower-cased
    (`a.tar.GZ` -> `.gz`); '' when the name has no '.', ends with its last '.' (`a.`), or
    its last '.' is its first character (`.bashrc`)."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return ""
    return name[dot:].lower()


def top_folder(path: str) -> str:
    """The first component of a file's path, or ROOT_FOLDER for a file at the root."""
    head, sep, _ = path.partition("/")
    return head if sep else ROOT_FOLDER


@dataclass(frozen=True)
class Tally:
    files: int = 0
    bytes: int = 0

    def to_json(self) -> dict:
        return {"files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class SizeStats:
    """File sizes: least, quantiles, greatest, and how many fall in each power of two.

    The p-th quantile is the nearest rank: the least size that at least p% of the files
    do not exceed. Histogram bucket `(low, high)` counts the sizes low <= size < high,
    where high is a power of two and low half of it ((0, 1) holds the empty files)."""

    min: int
    max: int
    quantiles: dict[int, int]
    histogram: list[tuple[int, int, int]]  # (low, high, files), empty buckets left out

    @classmethod
    def of(cls, sizes: list[int]) -> SizeStats:
        """The statistics of SIZES, which are sorted (smallest first)."""
        if not sizes:
            return cls(0, 0, {}, [])
        n = len(sizes)
        quantiles = {p: sizes[max(math.ceil(p * n / 100), 1) - 1] for p in QUANTILES}
        histogram = []
        low, start = 0, 0
        while start < n:
            high = max(low * 2, 1)
            end = bisect.bisect_left(sizes, high, start)
            if end > start:
                histogram.append((low, high, end - start))
            low, start = high, end
        return cls(sizes[0], sizes[-1], quantiles, histogram)

    def to_json(self) -> dict:
        return {
            "min": self.min,
            **{f"p{p}": size for p, size in self.quantiles.items()},
            "max": self.max,
            "histogram": [{"from": lo, "below": hi, "files": n} for lo, hi, n in self.histogram],
        }


@dataclass(frozen=True)
class DuplicateGroup:
    md5: str  # hex
    size: int
    files: int
    paths: list[str]  # the first PATHS_PER_EXAMPLE in listing order


@dataclass(frozen=True)
class Duplicates:
    """Files with identical content: the same MD5 and size as another file."""

    groups: int = 0
    files: int = 0  # in all the groups
    redundant_bytes: int = 0  # what keeping one file of each group would save
    examples: list[DuplicateGroup] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "groups": self.groups,
            "files": self.files,
            "redundant_bytes": self.redundant_bytes,
            "examples": [vars(example) for example in self.examples],
        }


@dataclass(frozen=True)
class Breakdown:
    """Files and bytes per extension and per top-level folder, and every file's size."""

    extensions: dict[str, Tally]  # by extension(), sorted
    folders: dict[str, Tally]  # by top_folder(), sorted
    sizes: list[int]  # smallest first

    def replaced(self, leaving: list[PinnedFile], joining: list[PinnedFile]) -> Breakdown:
        """The breakdown once the LEAVING files (all among these) are replaced by the
        JOINING ones: what a diff derives for B from A, without a second pass over B."""
        extensions, folders = dict(self.extensions), dict(self.folders)
        for sign, files in ((-1, leaving), (1, joining)):
            for f in files:
                for totals, key in ((extensions, extension(f.path.rpartition("/")[2])),
                                    (folders, top_folder(f.path))):  # fmt: skip
                    was = totals.get(key, Tally())
                    totals[key] = Tally(was.files + sign, was.bytes + sign * f.size)
        return Breakdown(_sorted(extensions), _sorted(folders), _sizes_replaced(
            self.sizes, [f.size for f in leaving], [f.size for f in joining]
        ))  # fmt: skip


def _sorted(totals: dict[str, Tally]) -> dict[str, Tally]:
    return {k: t for k, t in sorted(totals.items()) if t.files}


def _sizes_replaced(sizes: list[int], leaving: list[int], joining: list[int]) -> list[int]:
    """SIZES (sorted) with one of each LEAVING size taken out and the JOINING sizes put in,
    by slices and one sort of two sorted runs: a million sizes take milliseconds."""
    cuts = []
    for size, count in Counter(leaving).items():
        first = bisect.bisect_left(sizes, size)
        cuts.append((first, first + count))
    kept, start = [], 0
    for first, end in sorted(cuts):
        kept += sizes[start:first]
        start = end
    kept += sizes[start:]
    kept += sorted(joining)
    kept.sort()  # Timsort merges the two sorted runs in linear time
    return kept


@dataclass(frozen=True)
class Profile:
    version: str  # NAME:VERSION
    manifest_sha256: str
    files: int
    bytes: int
    sizes: SizeStats
    extensions: dict[str, Tally]  # by extension(), sorted
    folders: dict[str, Tally]  # by top_folder(), sorted
    oldest: str | None  # last-modified range, as the store reported it
    newest: str | None
    md5_files: int  # files with a content MD5
    duplicates: Duplicates

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "files": self.files,
            "bytes": self.bytes,
            "sizes": self.sizes.to_json(),
            "extensions": {k: t.to_json() for k, t in self.extensions.items()},
            "folders": {k: t.to_json() for k, t in self.folders.items()},
            "last_modified": {"oldest": self.oldest, "newest": self.newest},
            "md5": {"files": self.md5_files, "of": self.files},
            "duplicates": self.duplicates.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        """The profile to_json() gave (a snapshot stores its profile so)."""
        sizes, dups = data["sizes"], data["duplicates"]
        return cls(
            version=data["version"],
            manifest_sha256=data["manifest_sha256"],
            files=data["files"],
            bytes=data["bytes"],
            sizes=SizeStats(
                sizes["min"], sizes["max"],
                {p: sizes[f"p{p}"] for p in QUANTILES if f"p{p}" in sizes},
                [(h["from"], h["below"], h["files"]) for h in sizes["histogram"]],
            ),
            extensions={k: Tally(**t) for k, t in data["extensions"].items()},
            folders={k: Tally(**t) for k, t in data["folders"].items()},
            oldest=data["last_modified"]["oldest"],
            newest=data["last_modified"]["newest"],
            md5_files=data["md5"]["files"],
            duplicates=Duplicates(
                dups["groups"], dups["files"], dups["redundant_bytes"],
                [DuplicateGroup(**g) for g in dups["examples"]],
            ),
        )  # fmt: skip


def profile(registry: Registry, version: Version) -> Profile:
    """VERSION's profile."""
    with trees.file_table(registry, version) as table:
        groups = table.groups(extension)
        sizes = SizeStats.of(table.sizes())
        duplicates = _duplicates(registry, table.duplicates())
    times = [t for g in groups for t in (g.oldest, g.newest) if t is not None]
    return Profile(
        version=version.ref,
        manifest_sha256=version.manifest_sha256,
        files=version.file_count,
        bytes=version.total_bytes,
        sizes=sizes,
        extensions=_tally(groups, lambda g: g.extension),
        folders=_tally(groups, lambda g: g.folder),
        oldest=min(times, default=None),
        newest=max(times, default=None),
        md5_files=sum(g.md5_files for g in groups),
        duplicates=duplicates,
    )


def breakdown(registry: Registry, version: Version) -> Breakdown:
    """VERSION's files per extension and per top-level folder, and their sizes."""
    with trees.file_table(registry, version) as table:
        groups = table.groups(extension)
        sizes = table.sizes()
    return Breakdown(
        _tally(groups, lambda g: g.extension), _tally(groups, lambda g: g.folder), sizes
    )


def _tally(groups: list[trees.Group], key: Callable[[trees.Group], str]) -> dict[str, Tally]:
    totals: dict[str, Tally] = {}
    for g in groups:
        now = totals.get(key(g), Tally())
        totals[key(g)] = Tally(now.files + g.files, now.bytes + g.bytes)
    return dict(sorted(totals.items()))


def _duplicates(registry: Registry, found: list[trees.Duplicate]) -> Duplicates:
    def redundant(d: trees.Duplicate) -> int:
        return (len(d.entry_ids) - 1) * d.size

    biggest = sorted(found, key=lambda d: (-redundant(d), d.md5))[:DUPLICATE_EXAMPLES]
    examples = []
    for d in biggest:
        # Entry ids follow the listing order (registry/schema.py): the paths of the first
        # few ids are the first few paths, however many files the group has.
        first = sorted(d.entry_ids)[:PATHS_PER_EXAMPLE]
        paths = [trees.path_of(registry, i) for i in first]
        examples.append(DuplicateGroup(d.md5.hex(), d.size, len(d.entry_ids), paths))
    return Duplicates(
        groups=len(found),
        files=sum(len(d.entry_ids) for d in found),
        redundant_bytes=sum(map(redundant, found)),
        examples=examples,
    )
