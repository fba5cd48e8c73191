"""amlfs: pinned, versioned datasets from object storage under a local path.

From Python (docs/python.md): `amlfs.Dataset.get("weather", 2)`, `amlfs.register(...)`,
`amlfs.run_context()` inside `amlfs run`, and `amlfs://NAME:VERSION/PATH` through fsspec.
The errors raised are those of `amlfs.errors`, also reachable here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Loaded on first use: `import amlfs` stays as cheap as the command line needs (its
# launcher forks the mount daemon before importing anything heavy, see amlfs.warm).
_API = {"Dataset", "Verification", "RunContext", "NotInRun", "register", "run_context"}
_ERRORS = {"AmlfsError", "UserError", "NotFound", "Conflict", "ManifestError", "Pruned",
           "SourceChanged", "StorageError", "StorageUnreachable"}  # fmt: skip
__all__ = sorted(_API | _ERRORS)


def __getattr__(name: str) -> Any:
    if name in _API:
        from amlfs import api

        return getattr(api, name)
    if name in _ERRORS:
        from amlfs import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'amlfs' has no attribute {name!r}")
