"""A version's profile, computed from the registry alone, against a case worked out by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from amlfs.cli.reports import render_profile
from amlfs.profile import SizeStats, extension, profile, top_folder
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from amlfs.registry.store import manifest_digest

M2, M3 = b"\x02" * 16, b"\x03" * 16
FILES = [
    PinnedFile("a.CSV", 0, '"e1"', b"\x01" * 16, "2026-01-02T00:00:00+00:00"),
    PinnedFile("data/x.csv", 10, '"e2"', M2, "2026-01-01T00:00:00+00:00"),
    PinnedFile("data/y.csv", 10, '"e3"', M2, "2026-01-03T00:00:00+00:00"),
    PinnedFile("data/sub/.hidden", 100, '"e4"', None, None),
    PinnedFile("img/p.tar.gz", 1000, '"e5"', M3, "2026-01-02T12:00:00+00:00"),
    PinnedFile("img/q.gz", 1000, '"e6"', M3, "2026-01-02T12:00:00+00:00"),
    PinnedFile("img/r", 3, '"e7"', b"\x04" * 16, "2026-01-02T12:00:00+00:00"),
]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        yield registry


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", ".csv"), ("A.JPG", ".jpg"), ("a.tar.gz", ".gz"), ("README", ""),
        (".bashrc", ""), ("a.", ""), ("..", ""), ("..x", ".x"), (".a.b", ".b"),
    ],
)  # fmt: skip
def test_an_extension_is_the_last_dot_and_what_follows_lower_cased(
    name: str, expected: str
) -> None:
    assert extension(name) == expected


def test_files_at_the_root_are_in_the_folder_dot() -> None:
    assert top_folder("a.csv") == "." and top_folder("x/y/z.csv") == "x"


def test_quantiles_are_nearest_ranks_and_buckets_powers_of_two() -> None:
    stats = SizeStats.of([0, 3, 10, 10, 100, 1000, 1000])
    assert (stats.min, stats.max) == (0, 1000)
    assert stats.quantiles == {10: 0, 25: 3, 50: 10, 75: 1000, 90: 1000, 99: 1000}
    assert stats.histogram == [(0, 1, 1), (2, 4, 1), (8, 16, 2), (64, 128, 1), (512, 1024, 2)]
    assert SizeStats.of([7]).quantiles == dict.fromkeys((10, 25, 50, 75, 90, 99), 7)


def test_a_profile_counts_sizes_extensions_folders_times_md5s_and_duplicates(
    registry: Registry,
) -> None:
    version = registry.register(NewVersion("hand", "synthetic", "", ["."], FILES))
    p = profile(registry, version)
    assert (p.version, p.files, p.bytes) == ("hand:1", 7, 2123)
    assert p.sizes == SizeStats.of([0, 3, 10, 10, 100, 1000, 1000])
    as_pairs = {k: (t.files, t.bytes) for k, t in p.extensions.items()}
    assert as_pairs == {"": (2, 103), ".csv": (3, 20), ".gz": (2, 2000)}
    assert {k: (t.files, t.bytes) for k, t in p.folders.items()} == {
        ".": (1, 0), "data": (3, 120), "img": (3, 2003),
    }  # fmt: skip
    assert (p.oldest, p.newest) == ("2026-01-01T00:00:00+00:00", "2026-01-03T00:00:00+00:00")
    assert p.md5_files == 6
    assert p.manifest_sha256 == manifest_digest("synthetic", "", FILES)
    d = p.duplicates
    assert (d.groups, d.files, d.redundant_bytes) == (2, 4, 1010)
    # The group wasting the most bytes first.
    assert [(g.md5, g.size, g.files, g.paths) for g in d.examples] == [
        (M3.hex(), 1000, 2, ["img/p.tar.gz", "img/q.gz"]),
        (M2.hex(), 10, 2, ["data/x.csv", "data/y.csv"]),
    ]


def test_a_profile_is_json_and_text(registry: Registry) -> None:
    version = registry.register(NewVersion("hand", "synthetic", "", ["."], FILES))
    document = json.loads(json.dumps(profile(registry, version).to_json()))
    assert document["sizes"]["p50"] == 10
    assert document["sizes"]["histogram"][0] == {"from": 0, "below": 1, "files": 1}
    assert document["extensions"][".gz"] == {"files": 2, "bytes": 2000}
    assert document["md5"] == {"files": 6, "of": 7}
    assert document["duplicates"]["redundant_bytes"] == 1010
    text = "\n".join(render_profile(profile(registry, version)))
    assert "6 of 7 files have one" in text and "img/p.tar.gz, img/q.gz" in text


def test_a_profile_covers_only_its_own_version(registry: Registry) -> None:
    registry.register(NewVersion("hand", "synthetic", "", ["."], FILES))
    other = registry.register(NewVersion("other", "synthetic", "", ["."], FILES[:2]))
    p = profile(registry, other)
    assert p.sizes.max == 10 and sum(t.files for t in p.folders.values()) == 2
    assert p.duplicates.groups == 0
