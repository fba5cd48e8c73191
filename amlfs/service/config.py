"""The mounts a service declares in YAML, each entry checked on its own: one bad entry is
reported and skipped, the others are served.

Each valid entry becomes the command line of the child that serves it (`amlfs mount …`
or `amlfs output mount …`). A dataset named without a version is resolved here, so two
readings of the file are equal exactly when their children would be the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from amlfs.errors import AmlfsError, UserError
from amlfs.metrics.exporter import parse_address
from amlfs.registry import paths, yamlio
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry

_Size = str  # "20GiB", checked by `amlfs mount` itself


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mountpoint: str
    allow_other: bool = False
    metrics_address: str | None = None  # the child's own endpoint (IP:PORT)


class ReadOnlyEntry(_Entry):
    """A read-only mount of a dataset version: the options of `amlfs mount`."""

    dataset: str
    cache_dir: str | None = None
    cache_size: _Size | None = None
    block_size: _Size | None = None
    memory_cache: _Size | None = None
    fetch_limit: int | None = Field(default=None, ge=1, le=256)
    io_timeout: float | None = Field(default=None, ge=0.5, le=3600)


class OutputEntry(_Entry):
    """An output mount: the options of `amlfs output mount`."""

    output: str  # DATASTORE:PATH
    register_as: str | None = Field(default=None, alias="register")  # BaseModel has register()
    staging_dir: str | None = None
    workers: int | None = Field(default=None, ge=1, le=64)
    patience: float | None = Field(default=None, ge=1, le=86400)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mounts: list[object] = Field(default_factory=list)
    metrics_address: str | None = None  # the service's endpoint (IP:PORT), read at start


@dataclass(frozen=True)
class Declared:
    """One valid entry: where it mounts, what (for people), the child's arguments, and
    the datastore whose credentials the child gets."""

    mountpoint: str
    what: str
    args: tuple[str, ...]
    datastore: str


@dataclass(frozen=True)
class Rejected:
    mountpoint: str | None
    reason: str


def read(path: Path, registry: Registry) -> tuple[list[Declared], list[Rejected]]:
    """The valid and the rejected entries of the file at PATH. A file that cannot be read
    or parsed as a whole raises (ManifestError or UserError)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    document = yamlio.load(text, _File, str(path))
    declared: list[Declared] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(document.mounts):
        where = f"{path}:{yamlio.line_at(text, ('mounts', index))}"
        try:
            entry = declared_entry(raw, registry)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            reason = first["msg"].removeprefix("Value error, ")
            line = yamlio.line_at(text, ("mounts", index, *first["loc"]))
            rejected.append(Rejected(_mountpoint_of(raw), f"{path}:{line}: {field}: {reason}"))
            continue
        except AmlfsError as error:
            rejected.append(Rejected(_mountpoint_of(raw), f"{where}: {error}"))
            continue
        if any(d.mountpoint == entry.mountpoint for d in declared):
            rejected.append(Rejected(entry.mountpoint, f"{where}: {entry.mountpoint} is"
                                     " declared twice; the first entry is served"))  # fmt: skip
            continue
        declared.append(entry)
    return declared, rejected


def metrics_address(path: Path) -> str | None:
    """The service's own metrics address in the file at PATH (None: no endpoint); a
    UserError if it is malformed (or the file cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    address = yamlio.load(text, _File, str(path)).metrics_address
    if address is not None:
        parse_address(address, f"{path}: metrics_address")
    return address


def declared_entry(raw: object, registry: Registry) -> Declared:
    """RAW as the child that serves it; raises ValidationError or AmlfsError."""
    if not isinstance(raw, dict):
        raise UserError("an entry must be a mapping (mountpoint:, dataset: or output:, …)")
    if "dataset" in raw and "output" in raw:
        raise UserError("an entry has either dataset: (read-only) or output:, not both")
    if "output" in raw:
        out = OutputEntry.model_validate(raw)
        mountpoint = _absolute(out.mountpoint)
        datastore, target = paths.parse_location(out.output)
        registry.get_datastore(datastore)
        if out.register_as is not None:
            paths.check_name("dataset", out.register_as)
        args = ["output", "mount", f"{datastore}:{target}", mountpoint]
        args += ["--register", out.register_as] if out.register_as else []
        args += _options(out, ("staging_dir", "workers", "patience", "metrics_address"))
        return Declared(mountpoint, f"output {datastore}:{target}", tuple(args), datastore)
    if "dataset" not in raw:
        raise UserError("an entry needs dataset: NAME[:VERSION] or output: DATASTORE:PATH")
    entry = ReadOnlyEntry.model_validate(raw)
    mountpoint = _absolute(entry.mountpoint)
    # NAME alone: the latest, as of this reading
    version = require_data(registry.resolve(entry.dataset))
    args = ["mount", version.ref, mountpoint]
    args += _options(entry, ("cache_dir", "cache_size", "block_size", "memory_cache",
                             "fetch_limit", "io_timeout", "metrics_address"))  # fmt: skip
    return Declared(mountpoint, version.ref, tuple(args), version.datastore)


def _options(entry: _Entry, names: tuple[str, ...]) -> list[str]:
    if entry.metrics_address is not None:  # a bad one is this entry's fault, not the child's
        parse_address(entry.metrics_address, "metrics_address")
    args = []
    for name in names:
        value = getattr(entry, name)
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args + (["--allow-other"] if entry.allow_other else [])


def _absolute(mountpoint: str) -> str:
    if not mountpoint.startswith("/"):
        raise UserError(f"mountpoint {mountpoint!r}: use an absolute path")
    return str(Path(mountpoint))


def _mountpoint_of(raw: object) -> str | None:
    value = raw.get("mountpoint") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None
