"""The two YAML documents amlfs reads: version manifests and declarations.

Their schemas are documented in docs/manifests.md; a change to either is a new `schema`
value, and the loaders keep accepting the old ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from amlfs import units
from amlfs.errors import ManifestError, UserError
from amlfs.globs import compile_glob
from amlfs.registry import paths, pins, yamlio
from amlfs.registry.models import NewVersion, PinnedFile, Version

MANIFEST_SCHEMA = "amlfs/manifest/v1"
DECLARATION_SCHEMA = "amlfs/declaration/v2"  # v2: datasets derived `from` another version


def _name(kind: str):
    def check(value: str) -> str:
        try:
            return paths.check_name(kind, value)
        except UserError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(check)


def _relative_path(value: str) -> str:
    if problem := paths.path_problem(value):
        raise ValueError(problem)
    return value


def _source(value: str) -> str:
    try:
        return paths.normalise_source(value)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def _root(value: str) -> str:
    return value if value == "" else _relative_path(value)


def _env_name(value: str) -> str:
    if not value.isidentifier():
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def _user_input(check: Callable[[Any], Any]) -> AfterValidator:
    """A validator from a check that raises UserError (pydantic wants ValueError)."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(validate)


def _time_text(value: object) -> object:
    # YAML reads an unquoted 2026-11-20 as a date and 2026-11-20T10:00:00Z as a datetime.
    return value.isoformat() if isinstance(value, date) else value


def _glob(value: str) -> str:
    compile_glob(value)
    return value


def _size(value: int | str) -> int:
    return value if isinstance(value, int) else units.parse_size(value, "size")


def _time(value: str) -> str:
    return units.parse_time(value, "time").isoformat()


def _version_ref(value: str) -> str:
    paths.parse_version_ref(value)
    return value


DatasetName = Annotated[str, _name("dataset")]
DatastoreName = Annotated[str, _name("datastore")]
RelativePath = Annotated[str, AfterValidator(_relative_path)]
SourcePath = Annotated[str, AfterValidator(_source)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Timestamp = Annotated[str, BeforeValidator(_iso)]
Md5Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Tags = dict[str, str]
VersionRef = Annotated[str, _user_input(_version_ref)]
Glob = Annotated[str, _user_input(_glob)]
Size = Annotated[int | str, _user_input(_size)]  # a string with a unit, or bytes
Time = Annotated[str, BeforeValidator(_time_text), _user_input(_time)]  # ISO 8601


class _Strict(BaseModel):
    # Unknown keys are errors and no type is coerced: "3" is not a size.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ManifestFile(_Strict):
    path: RelativePath
    size: int = Field(ge=0)
    etag: str = Field(min_length=1)
    md5: Md5Hex | None = None
    last_modified: Timestamp | None = None

    @model_validator(mode="after")
    def _content_pin(self) -> ManifestFile:
        if problem := pins.problem(self.etag, bytes.fromhex(self.md5) if self.md5 else None):
            raise ValueError(problem)
        return self


class Manifest(_Strict):
    """One version, pinned file by file: what `dataset export` writes and `import` reads."""

    schema_: Literal["amlfs/manifest/v1"] = Field(alias="schema")
    dataset: DatasetName
    version: int | None = Field(default=None, ge=1)
    datastore: DatastoreName
    datastore_url: str | None = None
    root: Annotated[str, AfterValidator(_root)]
    sources: list[SourcePath] = Field(min_length=1)
    description: str = ""
    tags: Tags = Field(default_factory=dict)
    created_at: Timestamp | None = None
    file_count: int | None = Field(default=None, ge=1)
    total_bytes: int | None = Field(default=None, ge=0)
    files: list[ManifestFile] = Field(min_length=1)

    @model_validator(mode="after")
    def _totals_match(self) -> Manifest:
        if self.file_count is not None and self.file_count != len(self.files):
            raise ValueError(f"file_count is {self.file_count} but {len(self.files)} files")
        total = sum(f.size for f in self.files)
        if self.total_bytes is not None and self.total_bytes != total:
            raise ValueError(f"total_bytes is {self.total_bytes} but the files add up to {total}")
        return self


class DeclaredDatastore(_Strict):
    name: DatastoreName
    url: str
    connection_string_env: EnvName | None = None
    account_key_env: EnvName | None = None
    sas_token_env: EnvName | None = None
    anonymous: bool = False
    account_name: str | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> DeclaredDatastore:
        given = [self.connection_string_env, self.account_key_env, self.sas_token_env]
        if sum(x is not None for x in given) + self.anonymous > 1:
            raise ValueError(
                "give at most one of connection_string_env, account_key_env, "
                "sas_token_env, anonymous"
            )
        return self


class DeclaredSample(_Strict):
    fraction: float = Field(gt=0, lt=1)
    seed: int = Field(default=0, ge=0, le=2**64 - 1)


class DeclaredSplit(DeclaredSample):
    part: Literal["first", "second"]


class DeclaredFilter(_Strict):
    include: list[Glob] = Field(default_factory=list)
    exclude: list[Glob] = Field(default_factory=list)
    min_size: Size | None = None
    max_size: Size | None = None
    modified_after: Time | None = None
    modified_before: Time | None = None
    skip: int = Field(default=0, ge=0)
    take: int | None = Field(default=None, ge=1)


class DerivedFrom(_Strict):
    """A subset of another version: exactly one of sample, split (one part) and filter."""

    dataset: VersionRef  # NAME[:VERSION]; without a version, the latest when applied
    sample: DeclaredSample | None = None
    split: DeclaredSplit | None = None
    filter: DeclaredFilter | None = None

    @model_validator(mode="after")
    def _one_operation(self) -> DerivedFrom:
        if sum(x is not None for x in (self.sample, self.split, self.filter)) != 1:
            raise ValueError("give exactly one of sample, split, filter")
        return self


class DeclaredDataset(_Strict):
    name: DatasetName
    datastore: DatastoreName | None = None
    paths: list[SourcePath] | None = Field(default=None, min_length=1)
    derived_from: DerivedFrom | None = Field(default=None, alias="from")
    description: str = ""
    tags: Tags = Field(default_factory=dict)

    @model_validator(mode="after")
    def _registered_or_derived(self) -> DeclaredDataset:
        registered = self.datastore is not None and self.paths is not None
        if self.derived_from is not None and (self.datastore or self.paths):
            raise ValueError("give either `from`, or `datastore` and `paths`, not both")
        if self.derived_from is None and not registered:
            raise ValueError("give `datastore` and `paths` (or `from`)")
        return self


class Declaration(_Strict):
    """Datastores and datasets as they should be: what `amlfs apply` reads."""

    schema_: Literal["amlfs/declaration/v1", "amlfs/declaration/v2"] = Field(alias="schema")
    datastores: list[DeclaredDatastore] = Field(default_factory=list)
    datasets: list[DeclaredDataset] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parents_first(self) -> Declaration:
        names = [d.name for d in self.datasets]
        for index, declared in enumerate(self.datasets):
            if declared.derived_from is None:
                continue
            if self.schema_ == "amlfs/declaration/v1":
                raise ValueError(f"{declared.name}: `from` needs schema: {DECLARATION_SCHEMA}")
            parent, _ = paths.parse_version_ref(declared.derived_from.dataset)
            if parent in names[index:]:
                raise ValueError(f"{declared.name}: declare {parent!r} before what is made from it")
        return self

    @field_validator("datastores", "datasets")
    @classmethod
    def _unique_names(cls, items: list) -> list:
        names = [item.name for item in items]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{duplicates[0]!r} is declared more than once")
        return items


def load_manifest(text: str, source: str) -> Manifest:
    manifest = yamlio.load(text, Manifest, source)
    if conflict := paths.tree_problem(f.path for f in manifest.files):
        index, problem = conflict
        raise ManifestError(problem, source=source, line=yamlio.line_at(text, ("files", index)))
    return manifest


def load_declaration(text: str, source: str) -> Declaration:
    return yamlio.load(text, Declaration, source)


def manifest_to_new_version(manifest: Manifest, dataset: str | None = None) -> NewVersion:
    files = [
        PinnedFile(f.path, f.size, f.etag, bytes.fromhex(f.md5) if f.md5 else None, f.last_modified)
        for f in manifest.files
    ]
    return NewVersion(
        dataset=dataset or manifest.dataset,
        datastore=manifest.datastore,
        root=manifest.root,
        sources=list(manifest.sources),
        files=files,
        description=manifest.description,
        tags=dict(manifest.tags),
    )


def export_manifest(version: Version, datastore_url: str, files: Iterable[PinnedFile]) -> str:
    """The YAML manifest of VERSION; `load_manifest` reads it back to the same pins."""
    document = {
        "schema": MANIFEST_SCHEMA,
        "dataset": version.dataset,
        "version": version.version,
        "datastore": version.datastore,
        "datastore_url": datastore_url,
        "root": version.root,
        "sources": version.sources,
        "description": version.description,
        "tags": version.tags,
        "created_at": version.created_at,
        "file_count": version.file_count,
        "total_bytes": version.total_bytes,
        "files": [_file_document(f) for f in files],
    }
    return yamlio.dump(document)


def _file_document(f: PinnedFile) -> dict:
    document: dict = {"path": f.path, "size": f.size, "etag": f.etag}
    if f.md5:
        document["md5"] = f.md5.hex()
    if f.last_modified:
        document["last_modified"] = f.last_modified
    return document
