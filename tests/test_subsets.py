"""Pure logic of subsets: which files a sample, a split or a filter keeps, and the rule
docs/semantics.md gives to reproduce a sample outside amlfs."""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amlfs.errors import UserError
from amlfs.globs import compile_glob, matches
from amlfs.registry.models import PinnedFile
from amlfs.subsets import FileFilter, Sample, SplitPart
from amlfs.units import parse_size, parse_time

SEMANTICS = Path(__file__).parent.parent / "docs" / "semantics.md"
PATHS = [f"shard-{i // 100:03d}/item-{i:05d}.npy" for i in range(10_000)]

component = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=12
).filter(lambda c: c not in (".", ".."))
relative_paths = st.lists(
    st.lists(component, min_size=1, max_size=4).map("/".join), min_size=1, max_size=40, unique=True
)


def pinned(*paths: str, size: int = 1, modified: str | None = None) -> list[PinnedFile]:
    return [PinnedFile(p, size, f'"etag-{p}"', None, modified) for p in paths]


def kept(selection, paths: list[str]) -> list[str]:
    return [f.path for f in selection.select(pinned(*paths))]


def documented_snippet() -> dict:
    """The Python block of the 'Which files a sample keeps' section, executed."""
    text = SEMANTICS.read_text(encoding="utf-8")
    section = text.split("### Which files a sample keeps", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(SEMANTICS), "exec"), namespace)  # our own documentation
    return namespace


# -- the hash -----------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "seed"), [(0.1, 0), (0.5, 7), (0.9, 2**64 - 1), (1e-3, 42)])
def test_the_documented_snippet_reproduces_amlfs_choice(fraction: float, seed: int) -> None:
    in_sample = documented_snippet()["in_sample"]
    paths = [*PATHS[:2000], "é/ü ß.txt", "日本/データ.csv", "a b/c d"]
    expected = [p for p in paths if in_sample(p, fraction, seed)]
    assert kept(Sample(fraction, seed), paths) == expected
    assert kept(SplitPart(fraction, seed, "second"), paths) == [
        p for p in paths if not in_sample(p, fraction, seed)
    ]


def test_the_snippet_is_four_lines_with_a_default_seed_of_zero() -> None:
    text = SEMANTICS.read_text(encoding="utf-8").split("### Which files a sample keeps", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 4
    in_sample = documented_snippet()["in_sample"]
    assert kept(Sample(0.3), PATHS[:500]) == [p for p in PATHS[:500] if in_sample(p, 0.3)]


@given(relative_paths, st.integers(0, 2**64 - 1), st.randoms(use_true_random=False))
def test_the_same_seed_keeps_the_same_files_whatever_the_order(
    paths: list[str], seed: int, rng: random.Random
) -> None:
    shuffled = paths[:]
    rng.shuffle(shuffled)
    assert set(kept(Sample(0.5, seed), paths)) == set(kept(Sample(0.5, seed), shuffled))


@given(relative_paths, relative_paths, st.integers(0, 1000))
def test_adding_files_never_moves_another_file_in_or_out(
    old: list[str], added: list[str], seed: int
) -> None:
    before = set(kept(Sample(0.3, seed), old))
    after = set(kept(Sample(0.3, seed), old + [p for p in added if p not in old]))
    assert after & set(old) == before


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_the_share_kept_of_10000_files_is_near_the_fraction(fraction: float) -> None:
    count = len(kept(Sample(fraction, seed=3), PATHS))
    sigma = math.sqrt(len(PATHS) * fraction * (1 - fraction))
    assert abs(count - fraction * len(PATHS)) < 5 * sigma  # loose: a failure is ~1 in 10^6


def test_other_seeds_choose_other_files() -> None:
    choices = {tuple(kept(Sample(0.5, seed), PATHS[:200])) for seed in range(5)}
    assert len(choices) == 5


@given(relative_paths, st.floats(0.01, 0.99), st.integers(0, 2**64 - 1))
def test_split_parts_are_disjoint_complete_and_the_first_is_the_sample(
    paths: list[str], fraction: float, seed: int
) -> None:
    first = kept(SplitPart(fraction, seed, "first"), paths)
    second = kept(SplitPart(fraction, seed, "second"), paths)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(paths)
    assert first == kept(Sample(fraction, seed), paths)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(UserError, match="fraction"):
        Sample(fraction)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5])
def test_a_seed_outside_its_range_is_refused(seed: int) -> None:
    with pytest.raises(UserError, match="seed"):
        Sample(0.5, seed)


# -- globs, sizes, times ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "x/a.csv", False),  # `*` stays within one name
        ("**/*.csv", "a.csv", True),  # `**` spans no folder too
        ("**/*.csv", "x/y/a.csv", True),
        ("x/**/a.csv", "x/a.csv", True),
        ("x/**", "x/y/z", True),
        ("train", "train/a/b.bin", True),  # a folder stands for every file below it
        ("train/", "train/a.bin", True),
        ("train", "training/a.bin", False),
        ("tr?in/*.bin", "train/a.bin", True),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("*", "deep/er/file", True),
        ("with space é.txt", "with space é.txt", True),
    ],
)
def test_globs_match_relative_paths_as_register_paths_do(
    pattern: str, path: str, expected: bool
) -> None:
    assert matches(compile_glob(pattern), path) is expected


@pytest.mark.parametrize("pattern", ["", "/abs", "a/../b", "./a", "a//b", "a**b", "**x/y"])
def test_a_bad_glob_is_refused(pattern: str) -> None:
    with pytest.raises(UserError, match="bad glob"):
        FileFilter(include=(pattern,))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10MB", 10_000_000), ("1MiB", 2**20), ("512", 512), ("1.5kib", 1536), ("4 KB", 4000)],
)
def test_sizes_are_read_as_mount_reads_them(text: str, expected: int) -> None:
    assert parse_size(text, "--min-size") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T10:00:00Z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20T11:00:00+01:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20 10:00", datetime(2026, 11, 20, 10, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_times_are_iso_8601_and_utc_unless_they_say_otherwise(
    text: str, expected: datetime
) -> None:
    assert parse_time(text, "--modified-after") == expected


@pytest.mark.parametrize("text", ["yesterday", "20/11/2026", "", "2026-13-01"])
def test_a_bad_time_is_refused(text: str) -> None:
    with pytest.raises(UserError, match="ISO 8601"):
        parse_time(text, "--modified-after")


# -- filters -----------------------------------------------------------------------------

TREE = ["b/2.csv", "a/1.csv", "a/2.txt", "a/sub/3.csv", "a.csv", "tmp/x.csv"]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (FileFilter(), ["a/1.csv", "a/2.txt", "a/sub/3.csv", "a.csv", "b/2.csv", "tmp/x.csv"]),
        (FileFilter(include=("**/*.csv",)),
         ["a/1.csv", "a/sub/3.csv", "a.csv", "b/2.csv", "tmp/x.csv"]),
        (FileFilter(include=("a", "b")), ["a/1.csv", "a/2.txt", "a/sub/3.csv", "b/2.csv"]),
        (FileFilter(include=("**/*.csv",), exclude=("tmp", "a/sub")),
         ["a/1.csv", "a.csv", "b/2.csv"]),
        (FileFilter(skip=2), ["a/sub/3.csv", "a.csv", "b/2.csv", "tmp/x.csv"]),
        (FileFilter(take=2), ["a/1.csv", "a/2.txt"]),
        (FileFilter(include=("**/*.csv",), skip=1, take=2), ["a/sub/3.csv", "a.csv"]),
        (FileFilter(skip=10), []),
    ],
)  # fmt: skip
def test_filters_keep_by_glob_then_by_position_in_path_order(
    rule: FileFilter, expected: list[str]
) -> None:
    assert kept(rule, TREE) == expected


def test_size_bounds_include_their_ends() -> None:
    files = [PinnedFile(f"f{n}", n, "e") for n in (0, 9, 10, 11, 20, 21)]
    rule = FileFilter(min_size=10, max_size=20)
    assert [f.size for f in rule.select(files)] == [10, 11, 20]


def test_time_bounds_are_strict_and_a_file_without_a_time_fails_them() -> None:
    times = ["2026-11-19T23:59:59+00:00", "2026-11-20T00:00:00+00:00", "2026-11-20T12:00:00Z",
             "2026-11-21T00:00:00+00:00", None]  # fmt: skip
    files = [PinnedFile(f"f{i}", 1, "e", None, t) for i, t in enumerate(times)]
    rule = FileFilter(modified_after=parse_time("2026-11-20", "t"),
                      modified_before=parse_time("2026-11-21", "t"))  # fmt: skip
    assert [f.path for f in rule.select(files)] == ["f2"]
    assert [f.path for f in FileFilter().select(files)] == [f"f{i}" for i in range(5)]


def test_filter_parameters_are_canonical() -> None:
    rule = FileFilter(
        include=("**/*.csv",), min_size=parse_size("10MB", "s"),
        modified_after=parse_time("2026-11-20T11:00:00+01:00", "t"), take=5,
    )  # fmt: skip
    assert rule.parameters() == {
        "include": ["**/*.csv"], "min_size": 10_000_000,
        "modified_after": "2026-11-20T10:00:00+00:00", "take": 5,
    }  # fmt: skip
    assert rule == FileFilter(include=("**/*.csv",), min_size=10**7, take=5,
                              modified_after=datetime(2026, 11, 20, 10, tzinfo=UTC))  # fmt: skip


@pytest.mark.parametrize("given", [{"skip": -1}, {"take": 0}, {"min_size": -5}, {"max_size": 1.5}])
def test_bad_counts_and_sizes_are_refused(given: dict) -> None:
    with pytest.raises(UserError):
        FileFilter(**given)


def test_the_documented_declaration_with_subsets_loads() -> None:
    from amlfs.apply import selection
    from amlfs.registry.manifest import load_declaration

    text = (SEMANTICS.parent / "manifests.md").read_text(encoding="utf-8")
    section = text.split("## Declaration", 1)[1]
    document = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    declared = load_declaration(document, "manifests.md").datasets
    rules = [selection(d.derived_from) for d in declared if d.derived_from]
    assert [r.operation for r in rules] == ["sample", "split", "split", "filter"]
    assert rules[3].parameters()["min_size"] == 1024
    assert rules[3].parameters()["modified_after"] == "2026-11-01T00:00:00+00:00"
