"""Subsets of a version registered as versions of their own: a sample, the two parts of
a split, a filter. They pin the parent's files as they are (no data is copied) and
remember their parent and how they were made.

    from amlfs import subsets
    small = subsets.sample(registry, "weather:2", 0.1, seed=7, register="weather-small")
    train, test = subsets.split(registry, "weather:2", 0.8, first="train", second="test")
    csvs = subsets.filter_files(registry, "weather", subsets.FileFilter(include=("**/*.csv",)),
                                register="weather-csv")
"""

from __future__ import annotations

from amlfs.registry.models import Version
from amlfs.registry.store import Registry
from amlfs.subsets.derive import Selection, derive, derive_once, derive_pair
from amlfs.subsets.filters import FileFilter
from amlfs.subsets.selection import DEFAULT_SEED, Sample, SplitPart, score, threshold

__all__ = [
    "DEFAULT_SEED", "FileFilter", "Sample", "Selection", "SplitPart", "derive", "derive_once",
    "filter_files", "sample", "score", "split", "threshold",
]  # fmt: skip


def sample(
    registry: Registry, parent: Version | str, fraction: float, seed: int = DEFAULT_SEED,
    *, register: str,
) -> Version:  # fmt: skip
    """Each file of PARENT kept with probability FRACTION, as the next version of REGISTER."""
    return derive(registry, _version(registry, parent), Sample(fraction, seed), register)


def split(
    registry: Registry, parent: Version | str, fraction: float, seed: int = DEFAULT_SEED,
    *, first: str, second: str,
) -> tuple[Version, Version]:  # fmt: skip
    """PARENT's files in two: about FRACTION of them in FIRST, the rest in SECOND."""
    parts = (SplitPart(fraction, seed, "first"), SplitPart(fraction, seed, "second"))
    return derive_pair(registry, _version(registry, parent), parts, (first, second))


def filter_files(
    registry: Registry, parent: Version | str, rule: FileFilter, *, register: str
) -> Version:
    """The files of PARENT that RULE keeps, as the next version of REGISTER."""
    return derive(registry, _version(registry, parent), rule, register)


def _version(registry: Registry, parent: Version | str) -> Version:
    return registry.resolve(parent) if isinstance(parent, str) else parent
