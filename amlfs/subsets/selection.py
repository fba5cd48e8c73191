"""Which files a sample or a split keeps: a keyed hash of (seed, path). Pure logic.

A file is in the sample (the first part of a split) when

    int.from_bytes(blake2b(path, key=str(seed), digest_size=8), "big") < floor(F * 2**64)

with the path as UTF-8 bytes, relative to the version's root. The decision depends on
that file alone: not on the listing order, nor on which other files the version holds.
docs/semantics.md gives the same rule as a snippet to run outside amlfs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from amlfs.errors import UserError
from amlfs.registry.models import PinnedFile

DEFAULT_SEED = 0
MAX_SEED = 2**64 - 1  # its decimal string, the hash key, stays within BLAKE2b's 64 bytes
PARTS = ("first", "second")


def score(seed: int, path: str) -> int:
    """The file's place in [0, 2**64): the first part of a split is the low end."""
    key = str(seed).encode("ascii")
    # surrogateescape: a name that is not UTF-8 (a local file) hashes as its own bytes.
    data = path.encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, key=key, digest_size=8).digest(), "big")


def threshold(fraction: float) -> int:
    """floor(FRACTION * 2**64), exactly: scaling a float by a power of two is exact."""
    return math.floor(fraction * 2**64)


def check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise UserError(f"invalid fraction {fraction!r}: give a number between 0 and 1")
    if not (math.isfinite(fraction) and 0 < fraction < 1):
        raise UserError(f"invalid fraction {fraction!r}: it must be above 0 and below 1")
    return float(fraction)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"invalid seed {seed!r}: give a whole number from 0 to 2**64 - 1")
    return seed


@dataclass(frozen=True)
class Sample:
    """Each file independently, with probability FRACTION (by the hash, not at random)."""

    fraction: float
    seed: int = DEFAULT_SEED
    operation = "sample"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", check_fraction(self.fraction))
        check_seed(self.seed)

    def parameters(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed}

    def select(self, files: Iterable[PinnedFile]) -> list[PinnedFile]:
        below = threshold(self.fraction)
        return [f for f in files if score(self.seed, f.path) < below]


@dataclass(frozen=True)
class SplitPart:
    """One part of a split: "first" is exactly Sample(FRACTION, SEED), "second" the rest."""

    fraction: float
    seed: int = DEFAULT_SEED
    part: Literal["first", "second"] = "first"
    operation = "split"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", check_fraction(self.fraction))
        check_seed(self.seed)
        if self.part not in PARTS:
            raise UserError(f"invalid split part {self.part!r}: use 'first' or 'second'")

    def parameters(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed, "part": self.part}

    def select(self, files: Iterable[PinnedFile]) -> list[PinnedFile]:
        below, first = threshold(self.fraction), self.part == "first"
        return [f for f in files if (score(self.seed, f.path) < below) == first]
