"""Globs over the relative paths of a version. Pure logic.

They mean what a glob means in `dataset register --path`, which fsspec's glob expands:
we reuse fsspec's own translation. `*`, `?` and `[…]` stay within one folder; `**`, as a
whole component, spans any number of folders (none included). As with `--path`, a
pattern that matches a folder stands for every file below it.
"""

from __future__ import annotations

import re

from amlfs.errors import UserError
from amlfs.registry import paths


def compile_glob(pattern: str, what: str = "glob") -> re.Pattern[str]:
    """PATTERN as a regular expression over relative paths, or UserError naming WHAT.
    A trailing `/` is allowed (the pattern names folders anyway)."""
    from fsspec.utils import glob_translate

    relative = pattern.removesuffix("/") if isinstance(pattern, str) else pattern
    problem = paths.path_problem(relative)
    if problem is None:
        try:
            return re.compile(glob_translate(relative))
        except (ValueError, re.error) as exc:
            problem = str(exc)
    raise UserError(f"{what}: bad glob {pattern!r}: {problem}")


def matches(pattern: re.Pattern[str], path: str) -> bool:
    """PATTERN matches PATH or one of its folders."""
    parts = path.split("/")
    return any(pattern.match("/".join(parts[:depth])) for depth in range(len(parts), 0, -1))
