"""Versions made from another version's files: which parent, which operation, with which
parameters. Recorded with the derived version itself (NewVersion.derived_from)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from amlfs.registry import shared as scopes
from amlfs.registry.models import Version
from amlfs.registry.store import Registry


@dataclass(frozen=True)
class Derivation:
    """How VERSION was made from PARENT: OPERATION (sample, split, filter) given PARAMETERS."""

    version: Version
    parent: Version
    operation: str
    parameters: dict

    def public_dict(self) -> dict:
        return {"parent": self.parent.ref, "operation": self.operation,
                "parameters": self.parameters}  # fmt: skip

    def describe(self) -> str:
        return describe(self.operation, self.parent.ref, self.parameters)


def describe(operation: str, parent_ref: str, parameters: dict) -> str:
    """One line for people: `sample of weather:2 (fraction=0.1, seed=0)`."""
    given = ", ".join(f"{k}={_text(v)}" for k, v in parameters.items())
    return f"{operation} of {parent_ref} ({given})"


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class Derivations:
    """The derivations table of one registry."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._conn = registry.connection

    def of(self, version: Version) -> Derivation | None:
        """How VERSION was derived, or None if it was not (registered from storage)."""
        row = self._conn.execute(
            "SELECT parent_version_id, operation, parameters FROM derivations WHERE version_id = ?",
            (version.id,),
        ).fetchone()
        if row is None:
            return None
        parent_id, operation, parameters = row
        parent = self.registry.version_by_id(parent_id)
        return Derivation(version, parent, operation, json.loads(parameters))

    def children(self, version: Version) -> list[Derivation]:
        """The versions derived from VERSION, in the order they were registered."""
        self.registry.catch_up(scopes.VERSIONS)  # any dataset may hold one
        rows = self._conn.execute(
            "SELECT version_id, operation, parameters FROM derivations"
            " WHERE parent_version_id = ? ORDER BY version_id",
            (version.id,),
        ).fetchall()
        return [Derivation(self.registry.version_by_id(vid), version, op, json.loads(params))
                for vid, op, params in rows]  # fmt: skip
