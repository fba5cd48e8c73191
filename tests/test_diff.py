"""`amlfs dataset diff`: what changed between two versions, from the registry alone.

The rules against hand-made versions (pure registry), then the command end to end on
versions registered from the Azurite emulator, also after their storage is gone."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amlfs.diff import diff
from amlfs.profile import SizeStats, breakdown
from amlfs.registry import Datastore, NewVersion, PinnedFile, Registry
from tests.conftest import CONNECTION_ENV, Cli, Container


def pin(path: str, size: int, etag: str, md5: bytes | None = None) -> PinnedFile:
    return PinnedFile(path, size, f'"{etag}"', md5)


K, C1, C2, G, R, N, W = (bytes([i]) * 16 for i in range(1, 8))
A = [
    pin("keep.txt", 5, "e1", K),
    pin("rewritten.txt", 9, "w1", W),
    pin("data/change.csv", 10, "e2", C1),
    pin("data/gone.csv", 20, "e3", G),
    pin("data/old.bin", 30, "e4", R),
    pin("nomd5/same-size.dat", 7, "a"),
    pin("nomd5/same-etag.dat", 7, "s"),
]
B = [
    pin("keep.txt", 5, "e1", K),
    pin("rewritten.txt", 9, "w2", W),  # written again with the same bytes: same MD5
    pin("data/change.csv", 12, "e2x", C2),
    pin("data/added.csv", 40, "e5", N),
    pin("moved/new.bin", 30, "e9", R),
    pin("nomd5/same-size.dat", 7, "b"),  # no MD5, same size, other etag: changed
    pin("nomd5/same-etag.dat", 7, "s", K),  # an MD5 on one side only: the etags decide
]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        yield registry


def versions(registry: Registry, a: list[PinnedFile], b: list[PinnedFile]) -> tuple:
    first = registry.register(NewVersion("hand", "synthetic", "", ["."], a))
    return first, registry.register(NewVersion("hand", "synthetic", "", ["."], b))


def test_the_four_kinds_of_change_follow_the_documented_rule(registry: Registry) -> None:
    d = diff(registry, *versions(registry, A, B))
    assert [f.path for f in d.added] == ["data/added.csv"]
    assert [f.path for f in d.removed] == ["data/gone.csv"]
    assert [c.after.path for c in d.changed] == ["data/change.csv", "nomd5/same-size.dat"]
    assert [(r.before.path, r.after.path) for r in d.renamed] == [("data/old.bin", "moved/new.bin")]
    assert d.unchanged == 3 and not d.same


def test_deltas_per_extension_and_top_level_folder_match_the_hand_count(
    registry: Registry,
) -> None:
    d = diff(registry, *versions(registry, A, B)).to_json()
    ext = {
        k: (*v["a"].values(), *v["b"].values(), *v["delta"].values())
        for k, v in d["extensions"].items()
    }
    assert ext == {
        ".bin": (1, 30, 1, 30, 0, 0),
        ".csv": (2, 30, 2, 52, 0, 22),
        ".dat": (2, 14, 2, 14, 0, 0),
        ".txt": (2, 14, 2, 14, 0, 0),
    }
    folders = {k: (v["delta"]["files"], v["delta"]["bytes"]) for k, v in d["folders"].items()}
    assert folders == {".": (0, 0), "data": (-1, -8), "moved": (1, 30), "nomd5": (0, 0)}
    assert d["folders"]["moved"]["a"] == {"files": 0, "bytes": 0}
    assert d["sizes"]["a"]["max"] == 30 and d["sizes"]["b"]["max"] == 40


def test_renames_with_the_same_content_pair_in_path_order(registry: Registry) -> None:
    x = b"\x09" * 16
    a = [pin("a/2", 3, "1", x), pin("a/1", 3, "2", x)]
    b = [pin("b/3", 3, "3", x), pin("b/1", 3, "4", x), pin("b/2", 3, "5", x)]
    d = diff(registry, *versions(registry, a, b))
    assert [(r.before.path, r.after.path) for r in d.renamed] == [("a/1", "b/1"), ("a/2", "b/2")]
    assert [f.path for f in d.added] == ["b/3"] and d.removed == []


def test_a_file_that_became_a_folder_is_removed_and_its_files_added(registry: Registry) -> None:
    d = diff(registry, *versions(registry, [pin("p", 1, "1"), pin("q/r", 1, "2")],
                                 [pin("p/x", 1, "3"), pin("q", 1, "4")]))  # fmt: skip
    assert sorted(f.path for f in d.removed) == ["p", "q/r"]
    assert sorted(f.path for f in d.added) == ["p/x", "q"]


def test_a_version_diffed_with_itself_is_the_same(registry: Registry) -> None:
    first, _ = versions(registry, A, B)
    d = diff(registry, first, first)
    assert d.same and d.unchanged == len(A)


# A reference: the same rule over two dicts of paths, in plain Python.
def reference(a: list[PinnedFile], b: list[PinnedFile]) -> tuple[set, set, set]:
    left, right = {f.path: f for f in a}, {f.path: f for f in b}

    def same(x: PinnedFile, y: PinnedFile) -> bool:
        if x.size != y.size:
            return False
        return x.md5 == y.md5 if x.md5 and y.md5 else x.etag == y.etag

    changed = {p for p in left.keys() & right.keys() if not same(left[p], right[p])}
    return set(right) - set(left), set(left) - set(right), changed


names = st.sampled_from(["a", "b", "c.txt", "D.TXT"])
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
pins = st.builds(
    pin, paths, st.integers(0, 2), st.sampled_from(["1", "2"]),
    st.sampled_from([None, b"\x01" * 16, b"\x02" * 16]),
)  # fmt: skip


def tree(files: list[PinnedFile]) -> list[PinnedFile]:
    """FILES without the paths that would make a file also a folder, or twice the same."""
    kept: dict[str, PinnedFile] = {}
    for f in files:
        if all(not (k.startswith(f.path + "/") or f.path.startswith(k + "/") or k == f.path)
               for k in kept):  # fmt: skip
            kept[f.path] = f
    return list(kept.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(pins, min_size=1, max_size=12), st.lists(pins, min_size=1, max_size=12))
def test_the_tree_walk_agrees_with_a_comparison_of_paths_and_b_with_its_own_profile(
    a: list[PinnedFile], b: list[PinnedFile]
) -> None:
    a, b = tree(a), tree(b)
    with tempfile.TemporaryDirectory() as folder, Registry(Path(folder) / "r.db") as registry:
        registry.add_datastore(Datastore("synthetic", "file:///synthetic", "none"))
        first, second = versions(registry, a, b)
        d = diff(registry, first, second)
        of_b = breakdown(registry, second)
    # B's figures, derived from A's and the differences, are those of B itself.
    assert {k: x.b for k, x in d.extensions.items() if x.b.files} == of_b.extensions
    assert {k: x.b for k, x in d.folders.items() if x.b.files} == of_b.folders
    assert d.sizes_b == SizeStats.of(of_b.sizes)
    added, removed, changed = reference(a, b)
    renamed = {(r.before.path, r.after.path) for r in d.renamed}
    assert {f.path for f in d.added} | {t for _, t in renamed} == added
    assert {f.path for f in d.removed} | {s for s, _ in renamed} == removed
    assert {c.after.path for c in d.changed} == changed
    assert d.same == (not (added or removed or changed))


# -- the command, on versions registered from the emulator --------------------------

FILES = {
    "train/a.csv": b"a,1\n" * 10,
    "train/b.csv": b"b,2\n" * 20,
    "train/old-name.bin": bytes(range(256)),
    "valid/c.csv": b"c,3\n",
    "labels.txt": b"cat\ndog\n",
}


@pytest.fixture
def two_versions(cli: Cli, container: Container) -> Container:
    """ds:1 with FILES; ds:2 after one overwrite, one delete, one add and one rename."""
    container.put(FILES)
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".")
    container.put({"train/a.csv": b"a,1\n" * 11, "valid/new.csv": b"new\n"})
    container.fs.rm(f"{container.name}/train/b.csv")
    container.fs.copy(f"{container.name}/train/old-name.bin", f"{container.name}/new-name.bin")
    container.fs.rm(f"{container.name}/train/old-name.bin")
    assert cli.ok("dataset", "register", "ds", "--datastore", "blob", "--path", ".").last_line == (
        "ds:2"
    )
    return container


def test_diff_lists_each_kind_of_change_and_exits_1(cli: Cli, two_versions: Container) -> None:
    result = cli("dataset", "diff", "ds:1", "ds", "--json")
    assert result.code == 1
    d = json.loads(result.out)
    assert [f["path"] for f in d["added"]] == ["valid/new.csv"]
    assert [f["path"] for f in d["removed"]] == ["train/b.csv"]
    assert [c["path"] for c in d["changed"]] == ["train/a.csv"]
    assert d["changed"][0]["a"]["size"] == 40 and d["changed"][0]["b"]["size"] == 44
    assert d["renamed"] == [
        {"a": "train/old-name.bin", "b": "new-name.bin", "size": 256, "md5": d["renamed"][0]["md5"]}
    ]
    assert d["counts"] == {"added": 1, "removed": 1, "changed": 1, "renamed": 1, "unchanged": 2}
    assert d["same"] is False and d["a"]["ref"] == "ds:1" and d["b"]["ref"] == "ds:2"
    assert d["folders"]["train"]["delta"] == {"files": -2, "bytes": 4 - 80 - 256}
    assert d["folders"]["."]["delta"] == {"files": 1, "bytes": 256}
    assert d["extensions"][".csv"]["delta"] == {"files": 0, "bytes": 4 - 80 + 4}
    assert set(d["sizes"]["a"]) == {"min", "p10", "p25", "p50", "p75", "p90", "p99", "max",
                                    "histogram"}  # fmt: skip
    text = cli("dataset", "diff", "ds:1", "ds:2")
    assert text.code == 1
    for line in ("+ valid/new.csv", "- train/b.csv", "~ train/a.csv",
                 "> train/old-name.bin -> new-name.bin",
                 "1 added, 1 removed, 1 changed, 1 renamed, 2 unchanged"):  # fmt: skip
        assert line in text.out


def test_the_same_files_exit_0(cli: Cli, two_versions: Container) -> None:
    result = cli("dataset", "diff", "ds:2", "ds:latest", "--json")
    assert result.code == 0 and json.loads(result.out)["same"] is True
    text = cli.ok("dataset", "diff", "ds:1", "ds:1").out
    assert "0 added, 0 removed, 0 changed, 0 renamed, 5 unchanged" in text


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ("ds:1", "ds:9", "has no version 9"),
        ("nope", "ds:1", "no dataset named 'nope'"),
        ("ds:x", "ds:1", "invalid version"),
        ("ds:1@snap", "ds:1", "has no snapshot 'snap'"),
    ],
)
def test_a_bad_reference_is_one_error_line_and_exit_2(
    cli: Cli, two_versions: Container, a: str, b: str, message: str
) -> None:
    result = cli("dataset", "diff", a, b)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("amlfs: error: ") and message in result.err
    assert result.err.count("\n") == 1


def test_diff_reads_the_registry_only(
    cli: Cli, two_versions: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = json.loads(cli("dataset", "diff", "ds:1", "ds:2", "--json").out)
    # The storage is gone and so is its credential: any storage call would fail.
    two_versions.fs.rm(two_versions.name, recursive=True)
    monkeypatch.delenv(CONNECTION_ENV)
    result = cli("dataset", "diff", "ds:1", "ds:2", "--json")
    assert result.code == 1 and json.loads(result.out) == before


def test_text_lists_at_most_20_paths_per_kind(cli: Cli, container: Container) -> None:
    container.put({"a.txt": b"a"})
    cli.ok("datastore", "add", "blob", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "many", "--datastore", "blob", "--path", ".")
    container.put({f"new/{i:02}.txt": str(i).encode() for i in range(25)})
    cli.ok("dataset", "register", "many", "--datastore", "blob", "--path", ".")
    result = cli("dataset", "diff", "many:1", "many:2")
    assert "+ new/19.txt" in result.out and "+ new/20.txt" not in result.out
    assert "… 5 more (--json lists all)" in result.out
    added = json.loads(cli("dataset", "diff", "many:1", "many:2", "--json").out)["added"]
    assert len(added) == 25
