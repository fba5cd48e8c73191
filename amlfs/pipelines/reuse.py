"""A step's reuse key: digests of everything a step's result is taken to depend on.

The parts: the command line as written (its placeholders, not the run's paths), the
outputs it declares (where they go and what they are registered as), its `env:`, the
contents of each file or folder under `code:`, and the manifest digest of each input's
exact version. Kept part by part, so that a rerun can say which part changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from amlfs.jobs.spec import OutputSpec
from amlfs.pipelines.spec import Step
from amlfs.registry.models import Version

CHUNK = 1 << 20


def key_parts(step: Step, folder: Path, inputs: dict[str, Version]) -> dict[str, str]:
    """STEP's key, part by part; INPUTS are the exact versions its inputs read."""
    parts = {
        "command": _digest(step.command),
        "outputs": _digest([_output(o) for o in step.outputs]),
        "env": _digest(sorted(step.env.items())),
    }
    for code in step.code:
        parts[f"code {code}"] = code_digest(folder / code)
    for name, version in inputs.items():
        parts[f"input {name}"] = version.manifest_sha256
    return parts


def reuse_key(parts: dict[str, str]) -> str:
    return _digest(sorted(parts.items()))


def changed(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The parts of the key that differ (added, removed or changed), in a stable order."""
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


def code_digest(path: Path) -> str:
    """The contents of a file, or of every file below a folder with its relative path."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = "" if file == path else file.relative_to(path).as_posix()
        # Each file's name and size go first: no two trees hash the same stream.
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _output(spec: OutputSpec) -> list[str | None]:
    return [spec.name, spec.datastore, spec.path, spec.mode, spec.register]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
