"""Names, references and the relative paths a version is made of. Pure logic."""

from __future__ import annotations

import re
from collections.abc import Iterable

from amlfs.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_GLOB_CHARS = frozenset("*?[")
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux: a longer name could never be mounted


def check_name(kind: str, name: str) -> str:
    """A datastore or dataset name: letters, digits, '.', '_', '-'; at most 128 characters."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


def parse_version_ref(ref: str) -> tuple[str, int | None]:
    """`NAME`, `NAME:latest` -> (NAME, None); `NAME:3` -> (NAME, 3)."""
    name, sep, version = ref.partition(":")
    check_name("dataset", name)
    if not sep or version == "latest":
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise UserError(f"invalid version in {ref!r}: use a number from 1, or 'latest'")
    return name, int(version)


# The dataset whose versions pin snapshots' copies: '@' cannot start a dataset name, so
# no user can name, list or register it; the registry keeps it out of its listings.
COPIES_DATASET = "@snapshot-copies"


def parse_snapshot_ref(ref: str) -> tuple[str, int, str]:
    """`NAME:VERSION@SNAP` -> (NAME, VERSION, SNAP)."""
    head, _, snapshot = ref.rpartition("@")
    name, version = parse_version_ref(head)
    if version is None:
        raise UserError(f"invalid snapshot reference {ref!r}: use NAME:VERSION@SNAPSHOT")
    return name, version, check_name("snapshot", snapshot)


def parse_location(text: str) -> tuple[str, str]:
    """`DATASTORE:PATH` as (datastore, path); PATH may be empty (the datastore's root)."""
    name, sep, path = text.partition(":")
    if not sep or not name:
        raise UserError(f"{text!r}: expected DATASTORE:PATH")
    return check_name("datastore", name), path.strip("/")


def path_problem(path: object) -> str | None:
    """Why PATH is not a canonical relative file path, or None if it is one."""
    if not isinstance(path, str):
        return "a path must be a string"
    if path == "":
        return "empty path"
    if "\0" in path:
        return "NUL character in path"
    if path.startswith("/"):
        return f"absolute path {path!r}: paths are relative"
    for part in path.split("/"):
        if part == "":
            return f"empty component in {path!r}"
        if part in (".", ".."):
            return f"{part!r} component in {path!r}"
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            return f"component longer than {MAX_COMPONENT_BYTES} bytes in {path!r}"
    return None


def tree_problem(paths: Iterable[str]) -> tuple[int, str] | None:
    """Why PATHS (each canonical) cannot form one folder tree, as (index of the offending
    path, reason): a duplicate, or a path that is both a file and a folder (`a`, `a/b`)."""
    files: set[str] = set()
    folders: set[str] = set()
    for index, path in enumerate(paths):
        if path in files:
            return index, f"duplicate path {path!r}"
        if path in folders:
            return index, f"{path!r} is both a file and a folder"
        files.add(path)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                return index, f"{folder!r} is both a file and a folder"
            folders.add(folder)
    return None


def normalise_source(path: str) -> str:
    """A source path as given by a user, relative to the datastore root: '/' separated,
    no empty or '.' components ('' is the whole datastore). Rejects '..' and absolutes."""
    if not isinstance(path, str) or "\0" in path:
        raise UserError(f"invalid source path {path!r}")
    if path.startswith("/"):
        raise UserError(
            f"source path {path!r} is absolute: paths are relative to the datastore's URL"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(f"source path {path!r} has a '..' component")
    return "/".join(parts)


def normalise_sources(sources: Iterable[str]) -> list[str]:
    """SOURCES normalised, each once, in the order given."""
    return list(dict.fromkeys(normalise_source(s) for s in sources))


def has_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def glob_base(path: str) -> str:
    """The folder a glob pattern is rooted at: its components before the first wildcard."""
    parts = path.split("/")
    fixed = []
    for part in parts:
        if has_glob(part):
            break
        fixed.append(part)
    return "/".join(fixed)


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def common_folder(folders: Iterable[str]) -> str:
    """The longest folder that contains every one of FOLDERS (by whole components)."""
    common: list[str] | None = None
    for folder in folders:
        parts = folder.split("/") if folder else []
        if common is None:
            common = parts
            continue
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    return "/".join(common or [])


def relative_to(root: str, path: str) -> str:
    """PATH below ROOT, '/'-separated; ROOT '' is the datastore itself."""
    if not root:
        return path
    assert path.startswith(root + "/"), (root, path)
    return path[len(root) + 1 :]


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)
