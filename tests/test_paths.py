"""Pure logic: names, references and the paths a version may contain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amlfs.errors import UserError
from amlfs.registry import paths

component = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=20
).filter(lambda c: c not in (".", ".."))
relative_path = st.lists(component, min_size=1, max_size=5).map("/".join)


@given(relative_path)
def test_canonical_relative_paths_are_accepted(path: str) -> None:
    assert paths.path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("a\0b", "NUL"),
        ("x" * 256, "longer than 255"),
        (3, "string"),
    ],
)
def test_unsafe_paths_are_rejected_with_the_reason(path: object, reason: str) -> None:
    problem = paths.path_problem(path)
    assert problem is not None and reason in problem


@given(relative_path, st.integers(0, 4))
def test_dotdot_anywhere_is_rejected(path: str, position: int) -> None:
    parts = path.split("/")
    parts.insert(min(position, len(parts)), "..")
    assert "'..'" in paths.path_problem("/".join(parts))


@given(st.lists(relative_path, min_size=1, max_size=30))
def test_tree_problem_finds_duplicates_and_file_folder_clashes(candidates: list[str]) -> None:
    problem = paths.tree_problem(candidates)
    files = set(candidates)
    folders = {"/".join(p.split("/")[:i]) for p in candidates for i in range(1, p.count("/") + 1)}
    valid = len(files) == len(candidates) and not (files & folders)
    assert (problem is None) == valid
    if problem:
        index, _ = problem
        assert 0 <= index < len(candidates)


def test_tree_problem_names_the_clash() -> None:
    assert paths.tree_problem(["a/b", "a"]) == (1, "'a' is both a file and a folder")
    assert paths.tree_problem(["a", "a/b"]) == (1, "'a' is both a file and a folder")
    assert paths.tree_problem(["x", "y", "x"]) == (2, "duplicate path 'x'")


@pytest.mark.parametrize(
    ("folders", "common"),
    [
        (["Weather/week27", "Weather/week28"], "Weather"),
        (["Weather/week27"], "Weather/week27"),
        (["a/b/c", "a/bc"], "a"),
        (["a", "b"], ""),
        (["", "a/b"], ""),
    ],
)
def test_common_folder_works_by_whole_components(folders: list[str], common: str) -> None:
    assert paths.common_folder(folders) == common


@given(st.lists(relative_path, min_size=1, max_size=10))
def test_common_folder_contains_every_folder(folders: list[str]) -> None:
    common = paths.common_folder(folders)
    for folder in folders:
        assert folder == common or folder.startswith(common + "/") or common == ""


@pytest.mark.parametrize(
    ("given_path", "normal"),
    [("a//b/", "a/b"), ("./a/./b", "a/b"), (".", ""), ("a", "a")],
)
def test_source_paths_are_normalised(given_path: str, normal: str) -> None:
    assert paths.normalise_source(given_path) == normal


@pytest.mark.parametrize("bad", ["/abs", "a/../b", "..", "a\0"])
def test_unsafe_source_paths_are_user_errors(bad: str) -> None:
    with pytest.raises(UserError):
        paths.normalise_source(bad)


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("w", ("w", None)),
        ("w:latest", ("w", None)),
        ("w:12", ("w", 12)),
        ("a.b-c_d:1", ("a.b-c_d", 1)),
    ],
)
def test_version_references(ref: str, parsed: tuple) -> None:
    assert paths.parse_version_ref(ref) == parsed


@pytest.mark.parametrize("bad", ["w:0", "w:-1", "w:x", ":1", "w/x", "-w", "", "w:1:2"])
def test_bad_version_references_are_user_errors(bad: str) -> None:
    with pytest.raises(UserError):
        paths.parse_version_ref(bad)


@pytest.mark.parametrize(
    ("pattern", "base"), [("imgs/*.png", "imgs"), ("a/b*/c", "a"), ("*", ""), ("a/[xy]/z", "a")]
)
def test_glob_base_is_the_fixed_part(pattern: str, base: str) -> None:
    assert paths.has_glob(pattern)
    assert paths.glob_base(pattern) == base
