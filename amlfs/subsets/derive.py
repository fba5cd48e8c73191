"""Registering a selection of a version's files as a version of another dataset.

The new version pins exactly the parent's entries (same datastore, root, sources, and
per file the same size, etag, MD5 and time): no data is read or copied. Its parent and
the selection are recorded with it, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from amlfs.errors import Conflict, UserError
from amlfs.registry import paths
from amlfs.registry.derivations import Derivation, Derivations, describe
from amlfs.registry.models import DerivedFrom, NewVersion, PinnedFile, Version
from amlfs.registry.prunes import require_data_now
from amlfs.registry.store import Registry

log = logging.getLogger(__name__)


class Selection(Protocol):
    """A rule that keeps some of a version's files: Sample, SplitPart, FileFilter."""

    operation: str

    def parameters(self) -> dict: ...

    def select(self, files: list[PinnedFile]) -> list[PinnedFile]: ...


def derive(
    registry: Registry, parent: Version, selection: Selection, name: str,
    *, description: str = "", tags: Mapping[str, str] | None = None,
) -> Version:  # fmt: skip
    """Register the files SELECTION keeps of PARENT as the next version of NAME
    (DESCRIPTION by default: what it was made of, and how)."""
    paths.check_name("dataset", name)
    new = _new_version(registry, parent, selection, name)
    new.description = description or new.description
    new.tags = dict(tags or {})
    with registry.transaction():
        return _register(registry, parent, selection, new)


def derive_once(
    registry: Registry, parent: Version, selection: Selection, name: str,
    *, description: str = "", tags: Mapping[str, str] | None = None,
) -> tuple[Version, bool]:  # fmt: skip
    """As derive, unless NAME's latest version already is this very derivation:
    (the version, whether it was registered now)."""
    paths.check_name("dataset", name)
    with registry.transaction():
        latest = registry.latest(name)
        if latest is not None and _same(Derivations(registry).of(latest), parent, selection):
            return latest, False
        version = derive(registry, parent, selection, name, description=description, tags=tags)
        return version, True


def derive_pair(
    registry: Registry, parent: Version, pair: tuple[Selection, Selection], names: tuple[str, str]
) -> tuple[Version, Version]:
    """Both derivations in one transaction: both are registered, or neither."""
    for name in names:
        paths.check_name("dataset", name)
    if names[0] == names[1]:
        raise UserError(f"both parts would be registered as {names[0]!r}: give two names")
    news = [_new_version(registry, parent, s, n) for s, n in zip(pair, names, strict=True)]
    with registry.transaction():
        first = _register(registry, parent, pair[0], news[0])
        second = _register(registry, parent, pair[1], news[1])
    return first, second


def _new_version(
    registry: Registry, parent: Version, selection: Selection, name: str
) -> NewVersion:
    kept = selection.select(list(registry.iter_files(parent)))
    if not kept:
        raise UserError(f"{_describe(parent, selection)} keeps no files; nothing registered")
    return NewVersion(
        dataset=name, datastore=parent.datastore, root=parent.root, sources=parent.sources,
        files=kept, description=_describe(parent, selection),
        derived_from=DerivedFrom(parent, selection.operation, selection.parameters()),
    )  # fmt: skip


def _register(
    registry: Registry, parent: Version, selection: Selection, new: NewVersion
) -> Version:
    """Under the write lock: refuse a NAME that holds other data, then register."""
    require_data_now(registry, parent)  # a subset of deleted data could not be read
    derivations = Derivations(registry)
    _check_name_is_free(registry, derivations, parent, selection, new.dataset)
    version = registry.register(new)
    log.info("%s: %s", version.ref, new.description)
    return version


def _check_name_is_free(
    registry: Registry,
    derivations: Derivations,
    parent: Version,
    selection: Selection,
    name: str,
) -> None:
    """A derived version goes to a new dataset, or to one whose latest version was derived
    from the same dataset the same way (a sample of its next version, say): never into the
    parent itself, nor among versions of other data."""
    what = _kind(selection.operation, selection.parameters())
    if name == parent.dataset:
        raise Conflict(f"cannot register {what} of {parent.ref} as a version of {name!r} itself")
    latest = registry.latest(name)
    if latest is None:
        return
    derivation = derivations.of(latest)
    if derivation is None:
        held = "registered from storage"
    else:
        kind = _kind(derivation.operation, derivation.parameters)
        if derivation.parent.dataset == parent.dataset and kind == what:
            return
        held = f"{kind} of {derivation.parent.ref}"
    raise Conflict(
        f"dataset {name!r} exists and its latest version {latest.ref} is {held}, not {what} "
        f"of {parent.dataset}: give another name"
    )


def _kind(operation: str, parameters: dict) -> str:
    if operation == "split":
        return f"the {parameters.get('part')} part of a split"
    return f"a {operation}"


def _same(derivation: Derivation | None, parent: Version, selection: Selection) -> bool:
    return (
        derivation is not None
        and derivation.parent.id == parent.id
        and derivation.operation == selection.operation
        and derivation.parameters == selection.parameters()
    )


def _describe(parent: Version, selection: Selection) -> str:
    return describe(selection.operation, parent.ref, selection.parameters())
