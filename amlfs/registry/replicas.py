"""Registry records as plain documents, and documents back into rows: what the catalog
(amlfs.catalog) moves between machines.

Row ids are this registry's own; a document names everything by what is the same on
every machine: a datastore and a dataset by name, a version by its dataset and number, a
run by its id. Applying a document makes the local rows say what it says, and applying
it twice changes nothing. The SQL stays here, beside the tables it touches.
"""

from __future__ import annotations

import json
import sqlite3

from amlfs.errors import NotFound
from amlfs.registry import paths
from amlfs.registry.models import DerivedFrom, NewVersion, PinnedFile
from amlfs.registry.store import Registry, manifest_digest

# -- what a registry remembers of the catalog -----------------------------------------


def attachment(registry: Registry) -> tuple[str, str, str | None] | None:
    """(datastore, path, refreshed_at) of the catalog REGISTRY is attached to, or None."""
    return registry.connection.execute(
        "SELECT datastore, path, refreshed_at FROM catalog"
    ).fetchone()


def attach(registry: Registry, datastore: str, path: str, at: str) -> None:
    registry.connection.execute(
        "INSERT INTO catalog (id, datastore, path, attached_at, refreshed_at)"
        " VALUES (1, ?, ?, ?, ?)",
        (datastore, path, at, at),
    )


def detach(registry: Registry) -> None:
    registry.connection.execute("DELETE FROM catalog")
    registry.connection.execute("DELETE FROM catalog_objects")


def refreshed(registry: Registry, at: str) -> None:
    registry.connection.execute("UPDATE catalog SET refreshed_at = ?", (at,))


def known_etags(registry: Registry) -> dict[str, str]:
    return dict(registry.connection.execute("SELECT key, etag FROM catalog_objects"))


def known_etag(registry: Registry, key: str) -> str | None:
    row = registry.connection.execute(
        "SELECT etag FROM catalog_objects WHERE key = ?", (key,)
    ).fetchone()
    return row[0] if row else None


def remember(registry: Registry, key: str, etag: str) -> None:
    """The catalog object KEY is, as far as this registry knows, at ETAG."""
    registry.connection.execute(
        "INSERT INTO catalog_objects (key, etag) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET etag = excluded.etag",
        (key, etag),
    )


# -- documents of local records ---------------------------------------------------------


def datastore_document(registry: Registry, name: str) -> dict:
    """The datastore's definition (its credential's source, never a secret), or a
    tombstone when it was removed."""
    row = registry.connection.execute(
        "SELECT name, url, credential, credential_env, account_name, created_at"
        " FROM datastores WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return {"name": name, "removed": True}
    keys = ("name", "url", "credential", "credential_env", "account_name", "created_at")
    return dict(zip(keys, row, strict=True))


def new_version_document(new: NewVersion, number: int, digest: str, created_at: str) -> dict:
    """A version about to be registered, whole: its facts and every pinned file."""
    made = new.derived_from
    return {
        "dataset": new.dataset, "version": number, "datastore": new.datastore,
        "root": new.root, "sources": new.sources, "description": new.description,
        "tags": new.tags, "file_count": len(new.files),
        "total_bytes": sum(f.size for f in new.files), "manifest_sha256": digest,
        "created_at": created_at,
        "derived_from": None if made is None else {
            "dataset": made.parent.dataset, "version": made.parent.version,
            "operation": made.operation, "parameters": made.parameters,
        },
        "files": [[f.path, f.size, f.etag, f.md5.hex() if f.md5 else None, f.last_modified]
                  for f in new.files],
    }  # fmt: skip


def version_document(registry: Registry, version_id: int) -> dict:
    """A version already in this registry, as new_version_document writes it."""
    version = registry.stored_version(version_id)
    conn = registry.connection
    has_files = conn.execute(
        "SELECT 1 FROM entries WHERE version_id = ? AND parent_id IS NULL", (version_id,)
    ).fetchone()
    parent = conn.execute(
        "SELECT parent_version_id, operation, parameters FROM derivations WHERE version_id = ?",
        (version_id,),
    ).fetchone()
    files = list(registry.iter_files(version)) if has_files else []
    document = new_version_document(
        NewVersion(version.dataset, version.datastore, version.root, version.sources, files,
                   version.description, version.tags),
        version.version, version.manifest_sha256, version.created_at,
    )  # fmt: skip
    document["file_count"], document["total_bytes"] = version.file_count, version.total_bytes
    if not has_files:
        document["files"] = None  # forgotten: a deleted snapshot's copy keeps only its row
    if parent is not None:
        of = registry.stored_version(parent[0])
        document["derived_from"] = {
            "dataset": of.dataset, "version": of.version, "operation": parent[1],
            "parameters": json.loads(parent[2]),
        }  # fmt: skip
    return document


def version_ids(registry: Registry) -> list[int]:
    """Every version row, in the order they were registered here (parents first)."""
    return [row[0] for row in registry.connection.execute("SELECT id FROM versions ORDER BY id")]


def snapshot_document(registry: Registry, version_id: int, name: str) -> dict:
    """Every snapshot NAME of the version has had, oldest first: a deleted one with a copy
    keeps its record, as it does here (runs that read it name it)."""
    version = registry.stored_version(version_id)
    rows = registry.connection.execute(
        "SELECT created_at, profile, copy_version_id, copy_location, deleted_at FROM snapshots"
        " WHERE version_id = ? AND name = ? ORDER BY id",
        (version_id, name),
    ).fetchall()
    records = []
    for created_at, profile, copy_id, location, deleted_at in rows:
        copy = registry.stored_version(copy_id).version if copy_id is not None else None
        records.append({
            "created_at": created_at, "profile": json.loads(profile), "copy": copy,
            "copy_location": location, "deleted_at": deleted_at,
        })  # fmt: skip
    return {"dataset": version.dataset, "version": version.version, "name": name,
            "records": records}  # fmt: skip


def snapshot_names(registry: Registry) -> list[tuple[int, str]]:
    return registry.connection.execute(
        "SELECT DISTINCT version_id, name FROM snapshots ORDER BY version_id, name"
    ).fetchall()


def prune_document(registry: Registry, version_id: int) -> dict:
    version = registry.stored_version(version_id)
    pruned_at, deleted_at = registry.connection.execute(
        "SELECT pruned_at, deleted_at FROM prunes WHERE version_id = ?", (version_id,)
    ).fetchone()
    return {"dataset": version.dataset, "version": version.version, "pruned_at": pruned_at,
            "deleted_at": deleted_at}  # fmt: skip


def pruned_ids(registry: Registry) -> list[int]:
    return [row[0] for row in registry.connection.execute("SELECT version_id FROM prunes")]


def run_document(registry: Registry, run_id: str) -> dict:
    """A run with the exact versions it read and wrote, or a tombstone once deleted."""
    conn = registry.connection
    row = conn.execute(
        "SELECT id, command, started_at, ended_at, exit_code, error, host, pid, user"
        " FROM runs WHERE id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return {"id": run_id, "deleted": True}
    keys = ("id", "command", "started_at", "ended_at", "exit_code", "error", "host", "pid",
            "user")  # fmt: skip
    document = dict(zip(keys, row, strict=True))
    document["command"] = json.loads(document["command"])
    # An input read from a snapshot's copy also names the snapshot (DATASET, NUMBER,
    # NAME), which a machine needs in order to show the input as NAME:VERSION@SNAP.
    document["inputs"] = [
        [name, *natural_version(registry, version_id), mode, _copy_owner(registry, version_id)]
        for name, version_id, mode in conn.execute(
            "SELECT name, version_id, mode FROM run_inputs WHERE run_id = ? ORDER BY name",
            (run_id,),
        ).fetchall()
    ]
    document["outputs"] = [
        [name, location, mode, register,
         *(natural_version(registry, version_id) if version_id is not None else (None, None))]
        for name, location, mode, register, version_id in conn.execute(
            "SELECT name, location, mode, register, version_id FROM run_outputs"
            " WHERE run_id = ? ORDER BY name",
            (run_id,),
        ).fetchall()
    ]  # fmt: skip
    return document


def run_ids(registry: Registry) -> list[str]:
    return [row[0] for row in registry.connection.execute("SELECT id FROM runs ORDER BY rowid")]


_PIPELINE_COLUMNS = ("id", "name", "file", "started_at", "host", "pid", "user", "ended_at",
                     "exit_code")  # fmt: skip
_STEP_COLUMNS = ("step", "position", "status", "reused", "run_id", "exit_code", "reason",
                 "reuse_key", "key_parts", "derived_outputs")  # fmt: skip


def pipeline_document(registry: Registry, pipeline_run_id: str) -> dict:
    conn = registry.connection
    row = conn.execute(
        f"SELECT {', '.join(_PIPELINE_COLUMNS)} FROM pipeline_runs WHERE id = ?",
        (pipeline_run_id,),
    ).fetchone()
    document = dict(zip(_PIPELINE_COLUMNS, row, strict=True))
    document["steps"] = [
        list(step) for step in conn.execute(
            f"SELECT {', '.join(_STEP_COLUMNS)} FROM pipeline_steps"
            " WHERE pipeline_run_id = ? ORDER BY position",
            (pipeline_run_id,),
        )
    ]  # fmt: skip
    return document


def pipeline_ids(registry: Registry) -> list[str]:
    return [row[0] for row in registry.connection.execute(
        "SELECT id FROM pipeline_runs ORDER BY rowid")]  # fmt: skip


def holds_version(registry: Registry, dataset: str, number: int) -> bool:
    return _version_row(registry, dataset, number) is not None


def holds_snapshot(registry: Registry, dataset: str, number: int, name: str) -> bool:
    return (
        registry.connection.execute(
            "SELECT 1 FROM snapshots s JOIN versions v ON v.id = s.version_id"
            " JOIN datasets d ON d.id = v.dataset_id"
            " WHERE d.name = ? AND v.version = ? AND s.name = ?",
            (dataset, number, name),
        ).fetchone()
        is not None
    )


def _copy_owner(registry: Registry, version_id: int) -> list | None:
    """[DATASET, NUMBER, NAME] of the snapshot whose copy VERSION_ID is, or None."""
    row = registry.connection.execute(
        "SELECT d.name, v.version, s.name FROM snapshots s"
        " JOIN versions v ON v.id = s.version_id JOIN datasets d ON d.id = v.dataset_id"
        " WHERE s.copy_version_id = ?",
        (version_id,),
    ).fetchone()
    return list(row) if row else None


def natural_version(registry: Registry, version_id: int) -> tuple[str, int]:
    """(dataset, number) of a version row: its name on every machine."""
    return registry.connection.execute(
        "SELECT d.name, v.version FROM versions v JOIN datasets d ON d.id = v.dataset_id"
        " WHERE v.id = ?",
        (version_id,),
    ).fetchone()


# -- documents applied to the local rows ------------------------------------------------
# Each runs inside the caller's transaction and returns a conflict (a sentence) when the
# local rows hold something the document contradicts, else None.


def apply_datastore(registry: Registry, document: dict, keep_local: set[str]) -> str | None:
    """A datastore as the catalog defines it. The URL is never changed (versions pin
    files below it); the credential's source follows the catalog except for the
    datastores in KEEP_LOCAL (the catalog's own: this machine reaches it its own way)."""
    conn, name = registry.connection, document["name"]
    current = conn.execute("SELECT url FROM datastores WHERE name = ?", (name,)).fetchone()
    if document.get("removed"):
        if current is not None and name not in keep_local:
            try:
                conn.execute("DELETE FROM datastores WHERE name = ?", (name,))
            except sqlite3.IntegrityError:
                return f"datastore {name!r} was removed in the catalog but is used here"
        return None
    if current is None:
        conn.execute(
            "INSERT INTO datastores (name, url, credential, credential_env, account_name,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (name, document["url"], document["credential"], document["credential_env"],
             document["account_name"], document["created_at"]),
        )  # fmt: skip
        return None
    if current[0] != document["url"]:
        return (f"datastore {name!r} is {current[0]!r} here and {document['url']!r}"
                " in the catalog")  # fmt: skip
    if name not in keep_local:
        conn.execute(
            "UPDATE datastores SET credential = ?, credential_env = ?, account_name = ?"
            " WHERE name = ?",
            (document["credential"], document["credential_env"], document["account_name"],
             name),
        )  # fmt: skip
    return None


def apply_version(registry: Registry, document: dict) -> str | None:
    """A version: inserted if this registry lacks its number; a conflict if it holds the
    number with other files."""
    dataset, number = document["dataset"], document["version"]
    if (held := _version_row(registry, dataset, number)) is not None:
        if registry.stored_version(held).manifest_sha256 == document["manifest_sha256"]:
            return None
        return f"{dataset}:{number} pins other files here than in the catalog"
    files = [PinnedFile(path, size, etag, bytes.fromhex(md5) if md5 else None, modified)
             for path, size, etag, md5, modified in document["files"] or []]  # fmt: skip
    # Paths from another machine are checked as a registration checks them: none leaves
    # the version's root, and they form a tree.
    if problem := next(filter(None, map(paths.path_problem, (f.path for f in files))), None):
        return f"{dataset}:{number} in the catalog: {problem}"
    if conflict := paths.tree_problem(f.path for f in files):
        return f"{dataset}:{number} in the catalog: {conflict[1]}"
    new = NewVersion(dataset, document["datastore"], document["root"], document["sources"],
                     files, document["description"], document["tags"])  # fmt: skip
    if (
        document["files"] is not None
        and manifest_digest(new.datastore, new.root, files) != document["manifest_sha256"]
    ):
        return f"{dataset}:{number} in the catalog does not match its own digest"
    if (made := document["derived_from"]) is not None:
        parent = registry.stored_version(_version_id(registry, made["dataset"], made["version"]))
        new.derived_from = DerivedFrom(parent, made["operation"], made["parameters"])
    forgotten = None
    if document["files"] is None:
        forgotten = (document["file_count"], document["total_bytes"])
    registry.store_version(new, number, document["manifest_sha256"], document["created_at"],
                           forgotten=forgotten)  # fmt: skip
    return None


def apply_snapshot(registry: Registry, document: dict) -> str | None:
    """The snapshots NAME of a version has had: local rows made to match them."""
    conn = registry.connection
    version = registry.stored_version(_version_id(registry, document["dataset"],
                                                  document["version"]))  # fmt: skip
    name = document["name"]
    wanted = {record["created_at"]: record for record in document["records"]}
    local = dict(conn.execute(
        "SELECT created_at, id FROM snapshots WHERE version_id = ? AND name = ?",
        (version.id, name),
    ).fetchall())  # fmt: skip
    for created_at, row_id in local.items():
        if created_at not in wanted:  # deleted without a copy elsewhere
            conn.execute("DELETE FROM snapshots WHERE id = ?", (row_id,))
    # Deleted records first: a name has one live snapshot at a time.
    for record in sorted(wanted.values(), key=lambda r: r["deleted_at"] is None):
        copy_id = None
        if record["copy"] is not None:
            copy_id = _version_id(registry, paths.COPIES_DATASET, record["copy"])
        if record["created_at"] in local:
            if record["deleted_at"] is not None:
                conn.execute(
                    "UPDATE snapshots SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                    (record["deleted_at"], local[record["created_at"]]),
                )
        else:
            conn.execute(
                "INSERT INTO snapshots (version_id, name, created_at, profile, copy_version_id,"
                " copy_location, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version.id, name, record["created_at"], json.dumps(record["profile"]),
                 copy_id, record["copy_location"], record["deleted_at"]),
            )  # fmt: skip
        if record["deleted_at"] is not None and copy_id is not None:
            conn.execute("DELETE FROM entries WHERE version_id = ? AND parent_id IS NULL",
                         (copy_id,))  # fmt: skip
    return None


def apply_prune(registry: Registry, document: dict) -> str | None:
    version_id = _version_id(registry, document["dataset"], document["version"])
    registry.connection.execute(
        "INSERT INTO prunes (version_id, pruned_at, deleted_at) VALUES (?, ?, ?)"
        " ON CONFLICT (version_id) DO UPDATE SET"
        " deleted_at = COALESCE(prunes.deleted_at, excluded.deleted_at)",
        (version_id, document["pruned_at"], document["deleted_at"]),
    )
    return None


def apply_run(registry: Registry, document: dict) -> str | None:
    conn, run_id = registry.connection, document["id"]
    if document.get("deleted"):
        try:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        except sqlite3.IntegrityError:
            return f"run {run_id} was deleted in the catalog but lineage here needs it"
        return None
    conn.execute(
        "INSERT INTO runs (id, command, started_at, ended_at, exit_code, error, host, pid, user)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " ended_at = excluded.ended_at, exit_code = excluded.exit_code,"
        " error = excluded.error",
        (run_id, json.dumps(document["command"]), document["started_at"], document["ended_at"],
         document["exit_code"], document["error"], document["host"], document["pid"],
         document["user"]),
    )  # fmt: skip
    conn.execute("DELETE FROM run_inputs WHERE run_id = ?", (run_id,))
    conn.executemany(
        "INSERT INTO run_inputs (run_id, name, version_id, mode) VALUES (?, ?, ?, ?)",
        [(run_id, name, _version_id(registry, dataset, number), mode)
         for name, dataset, number, mode, *_owner in document["inputs"]],
    )  # fmt: skip
    conn.execute("DELETE FROM run_outputs WHERE run_id = ?", (run_id,))
    conn.executemany(
        "INSERT INTO run_outputs (run_id, name, location, mode, register, version_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(run_id, name, location, mode, register,
          _version_id(registry, dataset, number) if dataset is not None else None)
         for name, location, mode, register, dataset, number in document["outputs"]],
    )  # fmt: skip
    return None


def apply_pipeline(registry: Registry, document: dict) -> str | None:
    conn, run_id = registry.connection, document["id"]
    conn.execute(
        f"INSERT INTO pipeline_runs ({', '.join(_PIPELINE_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(_PIPELINE_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET"
        " ended_at = excluded.ended_at, exit_code = excluded.exit_code",
        [document[column] for column in _PIPELINE_COLUMNS],
    )
    conn.execute("DELETE FROM pipeline_steps WHERE pipeline_run_id = ?", (run_id,))
    conn.executemany(
        f"INSERT INTO pipeline_steps (pipeline_run_id, {', '.join(_STEP_COLUMNS)})"
        f" VALUES (?, {', '.join('?' * len(_STEP_COLUMNS))})",
        [(run_id, *step) for step in document["steps"]],
    )
    return None


def _version_id(registry: Registry, dataset: str, number: int) -> int:
    found = _version_row(registry, dataset, number)
    if found is None:
        raise NotFound(f"{dataset}:{number} is not in this registry")
    return found


def _version_row(registry: Registry, dataset: str, number: int) -> int | None:
    row = registry.connection.execute(
        "SELECT v.id FROM versions v JOIN datasets d ON d.id = v.dataset_id"
        " WHERE d.name = ? AND v.version = ?",
        (dataset, number),
    ).fetchone()
    return row[0] if row else None
