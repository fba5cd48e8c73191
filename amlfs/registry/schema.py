"""The registry's SQLite schema and its migrations.

The schema version is SQLite's `user_version`. MIGRATIONS[i] takes a database from
version i to i + 1; a new schema change is a new entry at the end, never an edit of an
old one. Every opener runs the missing migrations inside one write transaction, so two
processes opening a fresh registry at once cannot both apply them.
"""

from __future__ import annotations

import sqlite3

# Version 0 -> 1: the first schema.
_V1 = """
CREATE TABLE datastores (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,      -- the user's name for it
    url            TEXT NOT NULL,             -- fsspec URL of the root, e.g. az://container/prefix
    credential     TEXT NOT NULL              -- where credentials come from, never the secret:
                   CHECK (credential IN ('connection-string-env', 'account-key-env',
                                         'sas-token-env', 'default', 'anonymous', 'none')),
    credential_env TEXT,                      -- the environment variable holding the secret
    account_name   TEXT,                      -- Azure storage account (non-secret), if known
    created_at     TEXT NOT NULL,             -- ISO 8601, UTC
    CHECK ((credential LIKE '%-env') = (credential_env IS NOT NULL))
);

CREATE TABLE datasets (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- A version is immutable once its transaction commits: nothing updates these rows.
CREATE TABLE versions (
    id              INTEGER PRIMARY KEY,
    dataset_id      INTEGER NOT NULL REFERENCES datasets(id) ON DELETE RESTRICT,
    version         INTEGER NOT NULL CHECK (version >= 1),  -- 1, 2, 3... per dataset
    datastore_id    INTEGER NOT NULL REFERENCES datastores(id) ON DELETE RESTRICT,
    root            TEXT NOT NULL,    -- folder (relative to the datastore URL) that file paths
                                      -- are relative to: a file's source is root/path
    sources         TEXT NOT NULL,    -- JSON list of the paths/globs as given at registration
    description     TEXT NOT NULL DEFAULT '',
    tags            TEXT NOT NULL DEFAULT '{}',  -- JSON object of string tags
    file_count      INTEGER NOT NULL, -- kept because versions never change and a
    total_bytes     INTEGER NOT NULL, -- mount's statfs and `dataset list` need them at once
    manifest_sha256 TEXT NOT NULL,    -- digest of root + every file's pinned fields, to
                                      -- recognise an identical manifest without reading it
    created_at      TEXT NOT NULL,
    UNIQUE (dataset_id, version)
);

-- The pinned tree of a version: one row per folder and per file. The row id is the
-- entry's permanent identity (a mount derives stable inode numbers from it). Rows are
-- inserted parents first, siblings in name order, so id order is a stable listing order.
CREATE TABLE entries (
    id            INTEGER PRIMARY KEY,
    version_id    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    parent_id     INTEGER REFERENCES entries(id) ON DELETE CASCADE,  -- NULL for the root
    name          TEXT NOT NULL,      -- one path component; '' for the root
    is_dir        INTEGER NOT NULL CHECK (is_dir IN (0, 1)),
    size          INTEGER,            -- bytes; files only
    etag          TEXT,               -- the store's etag when pinned (quotes kept); files only
    md5           BLOB,               -- 16-byte content MD5 where the store keeps one
    last_modified TEXT,               -- ISO 8601 as the store reported it; files only
    CHECK (is_dir = 1 OR (size IS NOT NULL AND etag IS NOT NULL))
);
-- "look up NAME in folder P" and "list folder P after NAME" are one index probe each.
CREATE UNIQUE INDEX entries_by_parent ON entries (parent_id, name);
CREATE UNIQUE INDEX entries_root ON entries (version_id) WHERE parent_id IS NULL;
"""

# Version 1 -> 2: runs and what they read and wrote (lineage).
_V2 = """
CREATE TABLE runs (
    id         TEXT PRIMARY KEY,   -- the run id: UTC start time and a random suffix
    command    TEXT NOT NULL,      -- JSON list: the command line as given, before substitution
    started_at TEXT NOT NULL,      -- ISO 8601, UTC
    ended_at   TEXT,               -- NULL while it runs (or if `amlfs run` itself was killed)
    exit_code  INTEGER,            -- the command's (128 + N if signal N ended it); NULL while
                                   -- it runs, or if it never started
    error      TEXT,               -- what amlfs itself failed at (an input, an upload), or NULL
    host       TEXT NOT NULL,      -- where it ran, and the pid of `amlfs run` there: a run
    pid        INTEGER NOT NULL,   -- without an end whose process is gone was lost
    user       TEXT NOT NULL
);

-- The exact version each input read: resolved numbers, never "latest".
CREATE TABLE run_inputs (
    run_id     TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,      -- the input's name in the run ({inputs.NAME})
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE RESTRICT,
    mode       TEXT NOT NULL CHECK (mode IN ('mount', 'download')),
    PRIMARY KEY (run_id, name)
);
CREATE INDEX run_inputs_by_version ON run_inputs (version_id);

CREATE TABLE run_outputs (
    run_id     TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,      -- the output's name in the run ({outputs.NAME})
    location   TEXT NOT NULL,      -- DATASTORE:PATH with {run-id} and {output-name} substituted
    mode       TEXT NOT NULL CHECK (mode IN ('mount', 'upload')),
    register   TEXT,               -- the dataset it was to be registered as, if any
    version_id INTEGER REFERENCES versions(id) ON DELETE RESTRICT,  -- the version registered
    PRIMARY KEY (run_id, name)
);
-- A version is produced by at most one run.
CREATE UNIQUE INDEX run_outputs_by_version ON run_outputs (version_id)
    WHERE version_id IS NOT NULL;
"""

# Version 2 -> 3: versions made from another version's files (sample, split, filter).
_V3 = """
-- A derived version pins a subset of its parent's files, exactly as the parent pinned
-- them. Written in the transaction that registers the version, never changed after.
CREATE TABLE derivations (
    version_id        INTEGER PRIMARY KEY REFERENCES versions(id) ON DELETE RESTRICT,
    parent_version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE RESTRICT,
    operation         TEXT NOT NULL CHECK (operation IN ('sample', 'split', 'filter')),
    parameters        TEXT NOT NULL  -- JSON object: what the operation was given
);
CREATE INDEX derivations_by_parent ON derivations (parent_version_id);
"""

# Version 3 -> 4: snapshots of versions, and the versions that pin their copies.
_V4 = """
-- A snapshot names a version at a moment, with the version's profile as it was then.
-- With a copy of the data, copy_version_id is a version of its own (of a dataset whose
-- name no user can give, see registry/paths.py) pinning the copied blobs: reading the
-- snapshot reads that version. Without one, the snapshot reads like its version.
CREATE TABLE snapshots (
    id              INTEGER PRIMARY KEY,
    version_id      INTEGER NOT NULL REFERENCES versions(id) ON DELETE RESTRICT,
    name            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    profile         TEXT NOT NULL,    -- JSON: amlfs.profile.Profile.to_json() at creation
    copy_version_id INTEGER UNIQUE REFERENCES versions(id) ON DELETE RESTRICT,
    copy_location   TEXT,             -- DATASTORE:PATH the copy's files are below
    deleted_at      TEXT,             -- a deleted snapshot with a copy keeps its row (and
                                      -- the copy's version row, without entries): runs
                                      -- that read it still name it in their lineage
    CHECK ((copy_version_id IS NULL) = (copy_location IS NULL))
);
CREATE UNIQUE INDEX snapshots_by_name ON snapshots (version_id, name) WHERE deleted_at IS NULL;
"""

# Version 4 -> 5: pipeline runs and what each of their steps did.
_V5 = """
CREATE TABLE pipeline_runs (
    id         TEXT PRIMARY KEY,   -- like a run id: UTC start time and a random suffix
    name       TEXT NOT NULL,      -- the pipeline's `name`
    file       TEXT NOT NULL,      -- the pipeline file, as an absolute path
    started_at TEXT NOT NULL,
    ended_at   TEXT,               -- NULL while it runs (or if it was killed outright)
    exit_code  INTEGER,            -- 0, or the first failing step's exit status
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    user       TEXT NOT NULL
);

-- One row per step of a pipeline run, written when the step is decided and updated when
-- it ends. A reused step names the earlier run whose outputs it passed on.
CREATE TABLE pipeline_steps (
    pipeline_run_id TEXT NOT NULL REFERENCES pipeline_runs(id) ON DELETE CASCADE,
    step            TEXT NOT NULL,
    position        INTEGER NOT NULL,  -- in the order the steps were decided
    status          TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed',
                                                    'not-started')),
    reused          INTEGER NOT NULL CHECK (reused IN (0, 1)),
    run_id          TEXT REFERENCES runs(id) ON DELETE RESTRICT,  -- NULL if never started
    exit_code       INTEGER,
    reason          TEXT NOT NULL,     -- why it ran, was reused, or never started
    reuse_key       TEXT,              -- digest of key_parts; NULL if its inputs never existed
    key_parts       TEXT,              -- JSON object: part of the key -> its digest
    PRIMARY KEY (pipeline_run_id, step)
);
CREATE INDEX pipeline_steps_by_key ON pipeline_steps (reuse_key);
CREATE INDEX pipeline_steps_by_run ON pipeline_steps (run_id);
"""

# Version 5 -> 6: pruned pipeline intermediates (amlfs/pipelines/prune.py).
_V6 = """
-- The outputs of a step that were registered under a name amlfs derived (JSON list of
-- output names): the intermediates `pipeline prune` may delete. NULL in rows written
-- before version 6, where the derived name itself tells (see pipelines/prune.py).
ALTER TABLE pipeline_steps ADD COLUMN derived_outputs TEXT;

-- A version whose stored data `pipeline prune` deleted. The version row, its entries and
-- its lineage stay; from pruned_at on nothing reads its data.
CREATE TABLE prunes (
    version_id INTEGER PRIMARY KEY REFERENCES versions(id) ON DELETE RESTRICT,
    pruned_at  TEXT NOT NULL,   -- marked: no mount, download or reuse from now on
    deleted_at TEXT             -- when the last of its files was deleted; NULL while a
                                -- prune is deleting them (or died doing so: the next
                                -- prune finishes)
);
"""

# Version 6 -> 7: the team catalog this registry is shared through (amlfs/catalog).
_V7 = """
-- Where this registry is shared, if it is: objects below DATASTORE:PATH (docs/registry.md).
CREATE TABLE catalog (
    id           INTEGER PRIMARY KEY CHECK (id = 1),  -- one catalog at most
    datastore    TEXT NOT NULL,
    path         TEXT NOT NULL,
    attached_at  TEXT NOT NULL,
    refreshed_at TEXT             -- when this registry last caught up with the catalog whole
);

-- Each catalog object as this registry last read or wrote it: a refresh reads only the
-- objects whose etag in a listing differs, and a change is written only over this etag.
CREATE TABLE catalog_objects (
    key  TEXT PRIMARY KEY,        -- the object's name below the catalog's path
    etag TEXT NOT NULL
);
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to SCHEMA_VERSION. The caller holds a write transaction."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"registry schema version {current} is newer than this amlfs ({SCHEMA_VERSION})"
        )
    for version in range(current, SCHEMA_VERSION):
        for statement in _statements(MIGRATIONS[version]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version + 1}")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    assert not pending.strip(), "migration script ends in an incomplete statement"
    return statements
