"""`amlfs pipeline prune`: delete the stored data of intermediate outputs nobody needs.

An intermediate is a version a step of a pipeline run registered under a name amlfs
derived (registry/pipelines.derived_name), because a later step read it and the file
named none. One is pruned when its pipeline run ended before the cutoff and nothing that
stays needs its bytes:
- no run that read it started after the cutoff or is still running;
- no pipeline run that reused its step started after the cutoff or is still running;
- no live snapshot without a copy of its own reads it;
- no other version that stays pins one of its files as they are (a subset of it, or the
  same folder registered by hand);
- no mount of it is alive in this state folder.
A user-named version made *from* it (a model trained on it) keeps its own data and its
lineage, which names the pruned version: that does not keep it.

The order makes a crash harmless: the versions are marked pruned first, in one
transaction that checks the uses above again (a run or subset recording a new use checks
the mark in its own transaction), so from then on nothing starts reading them; then their
files are deleted, each only if it still has the pinned etag (a file written there since
is someone else's); then each version is recorded as deleted. A prune that dies between
the steps leaves versions marked and not deleted: the next prune finishes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from amlfs import mounts
from amlfs.errors import StorageError
from amlfs.jobs.lineage import is_lost
from amlfs.pipelines.state import alive
from amlfs.registry import paths
from amlfs.registry.models import Version
from amlfs.registry.prunes import Dependant, Intermediate, Prunes
from amlfs.registry.store import Registry, now
from amlfs.storage import Store

DELETE_WORKERS = 16  # deletes in flight per version: each is one round trip


@dataclass
class Kept:
    intermediate: Intermediate
    reason: str


@dataclass
class PrunePlan:
    cutoff: str  # pipeline runs that ended before this (ISO 8601, UTC)
    prune: list[Intermediate] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    unfinished: list[Version] = field(default_factory=list)  # marked by an earlier prune


@dataclass
class Deleted:
    """What deleting one version's files did."""

    version: Version
    files: int = 0  # deleted now
    bytes: int = 0
    gone: int = 0  # not there any more
    changed: int = 0  # holding other bytes now (not ours to delete): left alone
    error: str | None = None  # the storage failed: the version stays marked, not deleted


def cutoff_of(older_than_days: float, at: datetime | None = None) -> str:
    moment = (at or datetime.now(UTC)) - timedelta(days=older_than_days)
    return moment.isoformat(timespec="seconds")


def plan(registry: Registry, home: Path, cutoff: str) -> PrunePlan:
    """What a prune with CUTOFF would delete and what it keeps (and why); changes nothing."""
    prunes = Prunes(registry)
    result = PrunePlan(cutoff, unfinished=prunes.unfinished())
    marked = {version.id for version in result.unfinished}
    mounted = _mounted(home)
    leaving: list[Intermediate] = []
    for item in prunes.intermediates(cutoff):
        if item.version.id in marked:
            continue  # an earlier prune decided: it only needs finishing
        reason = _needed(prunes, home, item, cutoff, mounted)
        if reason is None:
            leaving.append(item)
        else:
            result.kept.append(Kept(item, reason))
    # A version that shares files with one that stays stays too; keeping it may make
    # another one share with a version that stays: repeat until nothing changes.
    for _round in range(len(leaving) + 1):
        ids = {item.version.id for item in leaving} | marked
        sharing = [(item, other) for item in leaving
                   if (other := prunes.sharing(item.version, ids)) is not None]  # fmt: skip
        if not sharing:
            break
        for item, other in sharing:
            leaving.remove(item)
            result.kept.append(Kept(item, f"{other.ref} pins some of its files too"))
    result.prune = leaving
    return result


def mark(registry: Registry, home: Path, cutoff: str) -> PrunePlan:
    """Plan and mark in one write transaction: a run or subset that starts using a version
    meanwhile either commits first (and the plan sees it) or finds the version marked."""
    with registry.transaction():
        result = plan(registry, home, cutoff)
        Prunes(registry).mark([item.version.id for item in result.prune], now())
    return result


def delete(registry: Registry, versions: list[Version],
           env: Mapping[str, str] = os.environ) -> list[Deleted]:  # fmt: skip
    """Delete the stored files of VERSIONS (marked already), each only as pinned, and
    record each version whose files are all gone."""
    prunes, stores = Prunes(registry), {}
    results = []
    for version in versions:
        if version.datastore not in stores:
            stores[version.datastore] = Store(registry.get_datastore(version.datastore), env)
        result = _delete_files(registry, stores[version.datastore], version)
        if result.error is None:
            prunes.deleted(version.id, now())
        results.append(result)
    return results


def _delete_files(registry: Registry, store: Store, version: Version) -> Deleted:
    result = Deleted(version)
    files = list(registry.iter_files(version))

    def one(path: str, etag: str) -> bool | None:
        """True: deleted; False: gone already or holding other bytes; None: changed."""
        if store.delete(path, if_match=etag):
            return True
        return None if store.stat(path) is not None else False

    try:
        with ThreadPoolExecutor(DELETE_WORKERS, thread_name_prefix="prune") as pool:
            outcomes = list(pool.map(lambda f: one(paths.join(version.root, f.path), f.etag),
                                     files))  # fmt: skip
    except StorageError as error:
        result.error = str(error)
        return result
    for file, outcome in zip(files, outcomes, strict=True):
        if outcome is True:
            result.files, result.bytes = result.files + 1, result.bytes + file.size
        elif outcome is None:
            result.changed += 1
        else:
            result.gone += 1
    store.remove_empty_folders(version.root)
    return result


def _needed(prunes: Prunes, home: Path, item: Intermediate, cutoff: str,
            mounted: dict[str, str]) -> str | None:  # fmt: skip
    """Why ITEM's data must stay, or None."""
    if where := mounted.get(item.version.ref):
        return f"mounted at {where}"
    for run in prunes.readers(item.version):
        if _in_use(run, cutoff, home):
            return f"read by run {run.id} (started {run.started_at})"
    for pipeline_run in prunes.reusers(item.run_id):
        if _in_use(pipeline_run, cutoff, home):
            return f"reused by pipeline run {pipeline_run.id} (started {pipeline_run.started_at})"
    if snapshots := prunes.snapshots_reading(item.version):
        return f"snapshot {snapshots[0]} (without a copy) reads it"
    return None


def _in_use(user: Dependant, cutoff: str, home: Path) -> bool:
    """A run or pipeline run that started after CUTOFF, or has not ended and is not known
    to be dead (on another host, amlfs cannot tell)."""
    if user.started_at >= cutoff:
        return True
    if user.ended_at is not None:
        return False
    if user.kind == "run":  # `amlfs run` holds its lock while it runs
        return not is_lost(home, user.host, user.id)
    return alive(user.host, user.pid)  # a pipeline run has no lock: its pid, if alive


def _mounted(home: Path) -> dict[str, str]:
    """Version ref -> mountpoint, for every live read-only mount of this state folder
    (a snapshot's mount counts as its version's, whether or not it reads a copy)."""
    found = {}
    for record in mounts.records(home):
        if record.kind == "read-only" and record.alive:
            found.setdefault(record.what.split("@")[0], record.mountpoint)
    return found
