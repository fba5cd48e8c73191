"""`amlfs apply`: make the registry hold what a declaration file says, idempotently.

Everything that can fail on storage is done before the first write: the file is
validated, every datastore is checked and every changed dataset is listed. Then one
transaction writes it all, in the file's order (a dataset derived `from` another reads
it there, after its own declaration was applied), so a failing apply leaves the
registry as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from amlfs import subsets
from amlfs.datasets import collect
from amlfs.datastores import make_datastore
from amlfs.registry import paths
from amlfs.registry.manifest import Declaration, DeclaredDataset, DerivedFrom
from amlfs.registry.models import Datastore, NewVersion, Version
from amlfs.registry.store import Registry
from amlfs.storage import Store
from amlfs.units import parse_time


@dataclass
class Outcome:
    kind: str  # "datastore" or "dataset"
    name: str
    result: str  # created / updated / unchanged / registered
    ref: str | None = None  # NAME:VERSION for datasets

    def __str__(self) -> str:
        detail = f" ({self.ref})" if self.ref else ""
        return f"{self.kind} {self.name}: {self.result}{detail}"


def apply(
    registry: Registry, declaration: Declaration, env: Mapping[str, str] = os.environ
) -> list[Outcome]:
    datastores = {
        d.name: make_datastore(
            d.name, d.url, connection_string_env=d.connection_string_env,
            account_key_env=d.account_key_env, sas_token_env=d.sas_token_env,
            anonymous=d.anonymous, account_name=d.account_name,
        )
        for d in declaration.datastores
    }  # fmt: skip
    pending = {
        d.name: _listing_if_changed(registry, d, datastores, env)
        for d in declaration.datasets
        if d.derived_from is None
    }
    outcomes: list[Outcome] = []
    with registry.transaction():
        for ds in datastores.values():
            outcomes.append(Outcome("datastore", ds.name, registry.put_datastore(ds)))
        for declared in declaration.datasets:
            if declared.derived_from is not None:
                outcomes.append(_derive(registry, declared, declared.derived_from))
                continue
            new = pending[declared.name]
            # Checked again under the write lock: a concurrent apply may have registered it.
            latest = registry.latest(declared.name)
            if new is None or _same_sources(latest, declared):
                outcomes.append(Outcome("dataset", declared.name, "unchanged", latest.ref))
                continue
            version = registry.register(new)
            outcomes.append(Outcome("dataset", declared.name, "registered", version.ref))
    return outcomes


def _derive(registry: Registry, declared: DeclaredDataset, source: DerivedFrom) -> Outcome:
    """A new version of DECLARED unless its latest already is this subset of this parent
    version (the parent named without a version is its latest, maybe registered just now)."""
    parent = registry.resolve(source.dataset)
    version, created = subsets.derive_once(
        registry, parent, selection(source), declared.name,
        description=declared.description, tags=declared.tags,
    )  # fmt: skip
    return Outcome("dataset", declared.name, "registered" if created else "unchanged", version.ref)


def selection(source: DerivedFrom) -> subsets.Selection:
    """The rule a declared `from` names (its values were checked when the file was read)."""
    if source.sample is not None:
        return subsets.Sample(source.sample.fraction, source.sample.seed)
    if source.split is not None:
        split = source.split
        return subsets.SplitPart(split.fraction, split.seed, split.part)
    assert source.filter is not None
    rule = source.filter
    return subsets.FileFilter(
        include=tuple(rule.include), exclude=tuple(rule.exclude),
        min_size=rule.min_size, max_size=rule.max_size,
        modified_after=_time(rule.modified_after), modified_before=_time(rule.modified_before),
        skip=rule.skip, take=rule.take,
    )  # fmt: skip


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text, "time")


def _listing_if_changed(
    registry: Registry,
    declared: DeclaredDataset,
    datastores: dict[str, Datastore],
    env: Mapping[str, str],
) -> NewVersion | None:
    """The new version DECLARED asks for, or None if its latest version already matches."""
    if _same_sources(registry.latest(declared.name), declared):
        return None
    datastore = datastores.get(declared.datastore) or registry.get_datastore(declared.datastore)
    store = Store(datastore, env)
    return collect(
        store, declared.name, declared.paths, description=declared.description,
        tags=declared.tags,
    )  # fmt: skip


def _same_sources(latest: Version | None, declared: DeclaredDataset) -> bool:
    return (
        latest is not None
        and latest.datastore == declared.datastore
        and latest.sources == paths.normalise_sources(declared.paths)
    )
