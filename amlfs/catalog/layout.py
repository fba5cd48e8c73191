"""The catalog's objects: their names below the catalog's path, and their bytes.

docs/registry.md ("The team catalog") describes the layout for people. Every name is made
of names amlfs has already checked (datastores, datasets, snapshots: letters, digits,
'.', '_', '-'; run ids), so no object name can leave its folder. Numbers are zero-padded
to ten digits, so that a listing, which is in name order, is in version order.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import NamedTuple

from amlfs.errors import UserError
from amlfs.registry import paths

FORMAT = 1
MARKER = "amlfs-catalog.json"  # says "this folder is an amlfs catalog, format N"

DATASTORES = "datastores"
VERSIONS = "versions"
SNAPSHOTS = "snapshots"
PRUNES = "prunes"
RUNS = "runs"
PIPELINES = "pipeline-runs"

# The order documents are applied in: each may name records of the kinds before it.
KINDS = (DATASTORES, VERSIONS, PRUNES, SNAPSHOTS, RUNS, PIPELINES)

_NAME = r"[^/]+"
_NUMBER = r"\d{10}"
_PATTERNS = {
    DATASTORES: re.compile(rf"{DATASTORES}/(?P<name>{_NAME})\.json"),
    VERSIONS: re.compile(rf"{VERSIONS}/(?P<dataset>{_NAME})/(?P<number>{_NUMBER})\.json\.gz"),
    SNAPSHOTS: re.compile(
        rf"{SNAPSHOTS}/(?P<dataset>{_NAME})/(?P<number>{_NUMBER})/(?P<name>{_NAME})\.json"
    ),
    PRUNES: re.compile(rf"{PRUNES}/(?P<dataset>{_NAME})/(?P<number>{_NUMBER})\.json"),
    RUNS: re.compile(rf"{RUNS}/(?P<id>{_NAME})\.json"),
    PIPELINES: re.compile(rf"{PIPELINES}/(?P<id>{_NAME})\.json"),
}


class Key(NamedTuple):
    """A catalog object's name, parsed: its KIND and the name's parts."""

    kind: str
    parts: dict[str, str]


def parse(key: str) -> Key | None:
    """What KEY names, or None for a name that is no catalog object (ignored)."""
    for kind, pattern in _PATTERNS.items():
        if match := pattern.fullmatch(key):
            return Key(kind, match.groupdict())
    return None


def mismatch(key: str, document: dict) -> str | None:
    """Why DOCUMENT cannot be what its name KEY says (another record's document, a name
    amlfs would refuse), or None. Names in documents come from other machines: each is
    checked as amlfs checks a name it is given."""
    parsed = parse(key)
    try:
        if parsed.kind == DATASTORES:
            ok = document["name"] == parsed.parts["name"]
            paths.check_name("datastore", document["name"])
        elif parsed.kind in (VERSIONS, SNAPSHOTS, PRUNES):
            ok = (document["dataset"], document["version"]) == (
                parsed.parts["dataset"], int(parsed.parts["number"]))  # fmt: skip
            if document["dataset"] != paths.COPIES_DATASET:
                paths.check_name("dataset", document["dataset"])
            if parsed.kind == SNAPSHOTS:
                ok = ok and document["name"] == parsed.parts["name"]
                paths.check_name("snapshot", document["name"])
        else:
            ok = document["id"] == parsed.parts["id"]
    except (KeyError, TypeError, ValueError, UserError) as exc:
        return f"{key}: not a document amlfs accepts ({exc})"
    return None if ok else f"{key}: holds another record's document"


def dataset_folders(dataset: str) -> list[str]:
    """The folders that hold one dataset's records."""
    return [f"{VERSIONS}/{dataset}", f"{SNAPSHOTS}/{dataset}", f"{PRUNES}/{dataset}"]


def needs(key: str, document: dict) -> list[str]:
    """The records document KEY names, by their objects' names: what must be applied
    before it (a version's datastore and the parent of a subset, a snapshot's version and
    copy, a prune's version, a run's inputs and outputs, and the snapshot that owns a
    copy a run read)."""
    kind, found = parse(key).kind, []
    try:
        if kind == VERSIONS:
            found.append(datastore_key(document["datastore"]))
            if made := document.get("derived_from"):
                found.append(version_key(made["dataset"], made["version"]))
        elif kind in (SNAPSHOTS, PRUNES):
            found.append(version_key(document["dataset"], document["version"]))
            for record in document.get("records", []):
                if record.get("copy") is not None:
                    found.append(version_key(paths.COPIES_DATASET, record["copy"]))
        elif kind == RUNS and not document.get("deleted"):
            refs = [i[1:3] for i in document["inputs"]] + [o[4:6] for o in document["outputs"]]
            found += [version_key(d, n) for d, n in refs if d is not None]
            owners = [i[4] for i in document["inputs"] if len(i) > 4 and i[4]]
            found += [snapshot_key(*owner) for owner in owners]
    except (KeyError, TypeError, ValueError, IndexError):
        return []  # a damaged document: applying it says so
    return found


def datastore_key(name: str) -> str:
    return f"{DATASTORES}/{name}.json"


def versions_folder(dataset: str) -> str:
    return f"{VERSIONS}/{dataset}"


def version_key(dataset: str, number: int) -> str:
    return f"{versions_folder(dataset)}/{number:010d}.json.gz"


def version_number(key: str) -> int:
    """The number of a version object's name (as listed in versions_folder)."""
    return int(key.rpartition("/")[2].partition(".")[0])


def snapshot_key(dataset: str, number: int, name: str) -> str:
    return f"{SNAPSHOTS}/{dataset}/{number:010d}/{name}.json"


def prune_key(dataset: str, number: int) -> str:
    return f"{PRUNES}/{dataset}/{number:010d}.json"


def run_key(run_id: str) -> str:
    return f"{RUNS}/{run_id}.json"


def pipeline_key(pipeline_run_id: str) -> str:
    return f"{PIPELINES}/{pipeline_run_id}.json"


def encode(key: str, document: dict) -> bytes:
    """A document's bytes: JSON; gzip-compressed for versions (a manifest of a million
    files is about 150 MB as JSON and a tenth of that compressed)."""
    data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return gzip.compress(data, compresslevel=6, mtime=0) if key.endswith(".gz") else data


def decode(key: str, data: bytes) -> dict:
    """The document of catalog object KEY; a UserError naming it when it is damaged."""
    try:
        text = gzip.decompress(data) if key.endswith(".gz") else data
        document = json.loads(text)
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"catalog object {key} is damaged: {exc}") from None
    if not isinstance(document, dict):
        raise UserError(f"catalog object {key} is damaged: not a JSON object")
    return document


def marker() -> bytes:
    return json.dumps({"amlfs-catalog": FORMAT}).encode()


def check_marker(data: bytes, where: str) -> None:
    """Refuse a folder that holds something else than a catalog this amlfs can read."""
    try:
        found = json.loads(data).get("amlfs-catalog")
    except (ValueError, AttributeError):
        found = None
    if not isinstance(found, int):
        raise UserError(f"{where}/{MARKER} is not an amlfs catalog marker")
    if found > FORMAT:
        raise UserError(f"the catalog at {where} has format {found}; this amlfs reads {FORMAT}")
