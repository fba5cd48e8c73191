"""What `amlfs run` is asked for: its `--input` and `--output` specs and the placeholders
of its command line. Pure logic: every mistake is a UserError before anything starts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from amlfs.errors import UserError
from amlfs.registry import paths

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # also a valid environment variable suffix
# {inputs.NAME}, {outputs.NAME} and {run-id} in arguments; any other braces are the
# command's own (a Python dict literal, a shell ${VAR}) and are left alone.
_ARGUMENT_PLACEHOLDER = re.compile(r"\{(?:(inputs|outputs)\.([A-Za-z0-9_]+)|(run-id))\}")
_PATH_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PATH_PLACEHOLDERS = ("run-id", "output-name")

INPUT_MODES = ("mount", "download")
OUTPUT_MODES = ("upload", "mount")


@dataclass(frozen=True)
class InputSpec:
    name: str
    ref: str  # DATASET[:VERSION], resolved when the run starts
    mode: str = "mount"

    @property
    def env_var(self) -> str:
        return f"AMLFS_INPUT_{self.name}"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datastore: str
    path: str  # may hold {run-id} and {output-name}
    mode: str = "upload"
    register: str | None = None  # a dataset to register the output as, on success

    @property
    def env_var(self) -> str:
        return f"AMLFS_OUTPUT_{self.name}"

    def target(self, run_id: str) -> str:
        """PATH with its placeholders substituted."""
        values = {"run-id": run_id, "output-name": self.name}
        return _PATH_PLACEHOLDER.sub(lambda m: values[m.group(1)], self.path)


def parse_input(text: str) -> InputSpec:
    """`NAME=DATASET[:VERSION][,mode=mount|download]` (or DATASET:VERSION@SNAPSHOT)."""
    name, value, options = _split(text, "--input", "NAME=DATASET[:VERSION][,mode=…]", {"mode"})
    paths.parse_snapshot_ref(value) if "@" in value else paths.parse_version_ref(value)
    mode = options.get("mode", "mount")
    if mode not in INPUT_MODES:
        raise UserError(f"--input {text}: mode must be mount or download, not {mode!r}")
    return InputSpec(name, value, mode)


def parse_output(text: str) -> OutputSpec:
    """`NAME=DATASTORE:PATH[,mode=upload|mount][,register=DATASET]`."""
    name, value, options = _split(text, "--output", "NAME=DATASTORE:PATH[,mode=…][,register=…]",
                                  {"mode", "register"})  # fmt: skip
    if ":" not in value:
        raise UserError(f"--output {text}: expected NAME=DATASTORE:PATH")
    datastore, path = paths.parse_location(value)
    for placeholder in _PATH_PLACEHOLDER.findall(path):
        if placeholder not in PATH_PLACEHOLDERS:
            raise UserError(f"--output {text}: unknown placeholder {{{placeholder}}} in the path"
                            " (known: {run-id}, {output-name})")  # fmt: skip
    mode = options.get("mode", "upload")
    if mode not in OUTPUT_MODES:
        raise UserError(f"--output {text}: mode must be upload or mount, not {mode!r}")
    register = options.get("register")
    if register is not None:
        paths.check_name("dataset", register)
    return OutputSpec(name, datastore, path, mode, register)


def check_names(inputs: list[InputSpec], outputs: list[OutputSpec]) -> None:
    for kind, specs in (("input", inputs), ("output", outputs)):
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise UserError(f"two {kind}s named {spec.name!r}")
            seen.add(spec.name)


def substitute(argument: str, inputs: Mapping[str, str], outputs: Mapping[str, str],
               run_id: str) -> str:  # fmt: skip
    """ARGUMENT with {inputs.NAME}, {outputs.NAME} and {run-id} replaced by local paths
    and the run id; a name that is not an input or output of the run is a UserError."""

    def value(match: re.Match) -> str:
        kind, name, is_run_id = match.groups()
        if is_run_id:
            return run_id
        known = inputs if kind == "inputs" else outputs
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise UserError(f"{match.group(0)} in the command: no {kind[:-1]} named {name!r}"
                            f" (the run's {kind}: {names})")  # fmt: skip
        return known[name]

    return _ARGUMENT_PLACEHOLDER.sub(value, argument)


def _split(text: str, option: str, form: str, keys: set[str]) -> tuple[str, str, dict[str, str]]:
    """NAME=VALUE[,key=value…] into its parts, each checked."""
    head, *rest = text.split(",")
    name, sep, value = head.partition("=")
    if not sep or not value:
        raise UserError(f"{option} {text}: expected {form}")
    if not _NAME.fullmatch(name):
        raise UserError(f"{option} {text}: the name {name!r} must be letters, digits and '_',"
                        " not starting with a digit")  # fmt: skip
    options: dict[str, str] = {}
    for item in rest:
        key, sep, setting = item.partition("=")
        if not sep or key not in keys or not setting:
            raise UserError(f"{option} {text}: {item!r} is not one of "
                            + ", ".join(f"{k}=…" for k in sorted(keys)))  # fmt: skip
        if key in options:
            raise UserError(f"{option} {text}: {key} given twice")
        options[key] = setting
    return name, value, options
