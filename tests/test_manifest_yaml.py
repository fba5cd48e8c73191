"""YAML manifests and declarations: round trips, and hostile input named by line."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amlfs.errors import ManifestError
from amlfs.registry import Version
from amlfs.registry.manifest import (
    export_manifest,
    load_declaration,
    load_manifest,
    manifest_to_new_version,
)
from amlfs.registry.models import PinnedFile
from amlfs.registry.store import manifest_digest
from tests.test_paths import relative_path


def version_of(files: list[PinnedFile], **overrides: object) -> Version:
    fields = dict(
        id=1, dataset="weather", version=3, datastore="raw", root="Weather",
        sources=["Weather/week27"], description="d: with 'quotes'\nand lines", tags={"a": "1"},
        file_count=len(files), total_bytes=sum(f.size for f in files),
        manifest_sha256="0" * 64, created_at="2026-11-21T00:00:00+00:00",
    )  # fmt: skip
    fields.update(overrides)
    return Version(**fields)


pinned_file = st.builds(
    PinnedFile,
    path=relative_path,
    size=st.integers(0, 2**50),
    etag=st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
    md5=st.none() | st.binary(min_size=16, max_size=16),
    last_modified=st.none() | st.just("2026-01-02T03:04:05+00:00"),
)


def tree(files: list[PinnedFile]) -> list[PinnedFile]:
    """Drop files that would clash with an earlier one (duplicate, or file vs folder)."""
    from amlfs.registry import paths

    kept: list[PinnedFile] = []
    for f in files:
        if paths.tree_problem([k.path for k in kept] + [f.path]) is None:
            kept.append(f)
    return kept


@settings(max_examples=150, deadline=None)
@given(st.lists(pinned_file, min_size=1, max_size=20).map(tree))
def test_export_then_import_pins_exactly_the_same_files(files: list[PinnedFile]) -> None:
    text = export_manifest(version_of(files), "az://c/p", files)
    back = manifest_to_new_version(load_manifest(text, "m.yaml"))
    assert back.files == files
    assert (back.dataset, back.datastore, back.root, back.sources) == (
        "weather", "raw", "Weather", ["Weather/week27"]
    )  # fmt: skip
    assert back.description == version_of(files).description
    assert manifest_digest("raw", "Weather", back.files) == manifest_digest("raw", "Weather", files)


MANIFEST = """\
schema: amlfs/manifest/v1
dataset: weather
datastore: raw
root: Weather
sources: [Weather/week27]
files:
- {path: week27/a.csv, size: 3, etag: '"0x1"'}
- {path: week27/b.csv, size: 4, etag: '"0x2"', md5: 0123456789abcdef0123456789abcdef}
"""


def test_the_minimal_manifest_loads() -> None:
    manifest = load_manifest(MANIFEST, "m.yaml")
    assert [f.path for f in manifest.files] == ["week27/a.csv", "week27/b.csv"]


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("week27/b.csv", "/etc/passwd"), 8, "absolute path '/etc/passwd'"),
        (("week27/b.csv", "week27/../../x"), 8, "'..' component"),
        (("week27/b.csv", "week27/a.csv"), 8, "duplicate path 'week27/a.csv'"),
        (("week27/b.csv", "week27/a.csv/x"), 8, "'week27/a.csv' is both a file and a folder"),
        (("size: 4", "size: '4'"), 8, "files[1].size: Input should be a valid integer"),
        (("size: 4", "size: -4"), 8, "files[1].size: Input should be greater than or equal to 0"),
        (("size: 4", "size: 4, owner: root"), 8, "files[1].owner: Extra inputs are not permitted"),
        (("md5: 0123", "md5: zz23"), 8, "files[1].md5: String should match pattern"),
        (("root: Weather", "root: /Weather"), 4, "root: absolute path"),
        (("root: Weather\n", "root: Weather\nroot: Other\n"), 5, "duplicate key 'root'"),
        (("dataset: weather", "dataset: 'bad name'"), 2, "invalid dataset name"),
        (("schema: amlfs/manifest/v1", "schema: amlfs/manifest/v9"), 1, "schema: Input should be"),
        (("sources: [Weather/week27]", "sources: [../up]"), 5, "'..' component"),
        (
            ("sources: [Weather/week27]", "sources: Weather"),
            5,
            "sources: Input should be a valid list",
        ),
        (("files:", "file_count: 7\nfiles:"), 1, "file_count is 7 but 2 files"),
        (("- {path: week27/a.csv", "- {path: [week27/a.csv"), 7, "not valid YAML"),
        (
            ("dataset: weather", "dataset: &w weather\ndescription: *w"),
            2,
            "aliases are not allowed",
        ),
        (("dataset: weather", "dataset: !!python/object:os.system ls"), 2, "not valid YAML"),
    ],
)
def test_a_bad_manifest_names_the_problem_and_the_line(
    change: tuple[str, str], line: int, message: str
) -> None:
    assert_rejected(load_manifest, MANIFEST.replace(*change), line, message)


def assert_rejected(load: Callable[[str, str], object], text: str, line: int, message: str) -> None:
    with pytest.raises(ManifestError) as raised:
        load(text, "doc.yaml")
    assert f"doc.yaml:{line}:" in str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize("text", ["", "[1, 2]", "just a string", "null"])
def test_a_manifest_that_is_not_a_mapping_is_rejected(text: str) -> None:
    with pytest.raises(ManifestError):
        load_manifest(text, "m.yaml")


def test_a_billion_laughs_document_is_rejected_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(ManifestError, match="aliases are not allowed"):
        load_manifest("\n".join(lines), "laughs.yaml")


DECLARATION = textwrap.dedent("""\
    schema: amlfs/declaration/v1
    datastores:
    - name: raw
      url: az://data
      connection_string_env: RAW_CONN
    datasets:
    - name: weather
      datastore: raw
      paths: [Weather/week27, Weather/week28]
      tags: {owner: climate}
    """)


def test_a_declaration_loads() -> None:
    declaration = load_declaration(DECLARATION, "d.yaml")
    assert declaration.datastores[0].connection_string_env == "RAW_CONN"
    assert declaration.datasets[0].paths == ["Weather/week27", "Weather/week28"]


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("connection_string_env: RAW_CONN", "connection_string_env: RAW_CONN\n  anonymous: true"),
         3, "at most one of"),
        (("RAW_CONN", "not-a-var"), 5, "is not an environment variable name"),
        (("paths: [Weather/week27, ", "paths: [/abs, "), 9, "absolute"),
        (("- name: weather", "- name: weather\n  colour: blue"), 8, "colour: Extra inputs"),
        (("datasets:\n", "datasets:\n- {name: weather, datastore: raw, paths: [x]}\n"), 6,
         "'weather' is declared more than once"),
    ],
)  # fmt: skip
def test_a_bad_declaration_names_the_problem_and_the_line(
    change: tuple[str, str], line: int, message: str
) -> None:
    assert_rejected(load_declaration, DECLARATION.replace(*change), line, message)
