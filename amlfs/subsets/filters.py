"""A subset by path, size, last-modified time and position in path order. Pure logic.

Globs are matched against the path relative to the version's root (see amlfs.globs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from amlfs.errors import UserError
from amlfs.globs import compile_glob, matches
from amlfs.registry.models import PinnedFile
from amlfs.units import parse_time


def _modified(f: PinnedFile) -> datetime | None:
    if not f.last_modified:
        return None
    try:
        return parse_time(f.last_modified, "last_modified")
    except UserError:
        return None


@dataclass(frozen=True)
class FileFilter:
    """Files that match an INCLUDE glob (any file when there is none) and no EXCLUDE
    glob, of MIN_SIZE to MAX_SIZE bytes (both included), last modified strictly after
    MODIFIED_AFTER and before MODIFIED_BEFORE (a file without a time fails a time bound);
    of those, in path order, all but the first SKIP, then at most TAKE."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None
    max_size: int | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    skip: int = 0
    take: int | None = None
    operation = "filter"
    _include: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            patterns = tuple(getattr(self, name))
            object.__setattr__(self, name, patterns)
            compiled = tuple(compile_glob(p, f"--{name}") for p in patterns)
            object.__setattr__(self, f"_{name}", compiled)
        for name in ("min_size", "max_size", "skip", "take"):
            value = getattr(self, name)
            lowest = 1 if name == "take" else 0
            if value is not None and (not isinstance(value, int) or value < lowest):
                raise UserError(f"--{name.replace('_', '-')}: must be a whole number >= {lowest}")
        for name in ("modified_after", "modified_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))

    def parameters(self) -> dict:
        """What was given, in canonical form (bytes, UTC times): equal filters, equal
        parameters."""
        given: dict = {
            "include": list(self.include), "exclude": list(self.exclude),
            "min_size": self.min_size, "max_size": self.max_size,
            "modified_after": _iso(self.modified_after),
            "modified_before": _iso(self.modified_before),
            "skip": self.skip or None, "take": self.take,
        }  # fmt: skip
        return {k: v for k, v in given.items() if v not in (None, [])}

    def keeps(self, f: PinnedFile) -> bool:
        """Every test but the position in path order."""
        if self._include and not any(matches(p, f.path) for p in self._include):
            return False
        if any(matches(p, f.path) for p in self._exclude):
            return False
        if self.min_size is not None and f.size < self.min_size:
            return False
        if self.max_size is not None and f.size > self.max_size:
            return False
        if self.modified_after is None and self.modified_before is None:
            return True
        modified = _modified(f)
        return modified is not None and (
            (self.modified_after is None or modified > self.modified_after)
            and (self.modified_before is None or modified < self.modified_before)
        )

    def select(self, files: Iterable[PinnedFile]) -> list[PinnedFile]:
        kept = sorted((f for f in files if self.keeps(f)), key=path_order)
        end = None if self.take is None else self.skip + self.take
        return kept[self.skip : end]


def path_order(f: PinnedFile) -> list[str]:
    """Folder by folder, each name by code point: the order of a version's tree."""
    return f.path.split("/")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None
