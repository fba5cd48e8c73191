"""A pipeline file: its schema (docs/pipelines.md), and every check made before anything
starts. Each mistake is one ManifestError naming the file's line (exit 2)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from amlfs.errors import ManifestError, UserError
from amlfs.jobs.spec import InputSpec, OutputSpec, parse_input, parse_output, substitute
from amlfs.registry import paths, yamlio
from amlfs.registry.models import Version
from amlfs.registry.pipelines import derived_name
from amlfs.registry.prunes import require_data
from amlfs.registry.store import Registry

PIPELINE_SCHEMA = "amlfs/pipeline/v1"
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# An input read from an earlier step: steps.STEP.outputs.OUTPUT[,mode=mount|download].
_UPSTREAM = re.compile(r"steps\.([^.,]*)\.outputs\.([^.,]*)((?:,.*)?)")


# The error for a message at a place in the file (keys and indexes), with its line.
Fail = Callable[..., ManifestError]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StepModel(_Strict):
    command: list[str] = Field(min_length=1)
    code: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    reuse: bool = True


class PipelineModel(_Strict):
    schema_: Literal["amlfs/pipeline/v1"] = Field(default=PIPELINE_SCHEMA, alias="schema")
    name: str
    steps: dict[str, StepModel] = Field(min_length=1)


@dataclass(frozen=True)
class Upstream:
    """An input that reads the version an earlier step registered for one of its outputs."""

    step: str
    output: str


@dataclass
class StepInput:
    name: str
    mode: str
    version: Version | None = None  # a dataset input, resolved once when the file is read
    upstream: Upstream | None = None


@dataclass
class Step:
    name: str
    command: list[str]
    code: list[str]
    env: dict[str, str]
    inputs: list[StepInput]
    outputs: list[OutputSpec]  # each read by a later step has `register` set
    reuse: bool
    needs: set[str] = field(default_factory=set)  # the steps whose outputs it reads
    read_later: set[str] = field(default_factory=set)  # its outputs that later steps read
    derived: set[str] = field(default_factory=set)  # those registered under derived_name


@dataclass
class Pipeline:
    name: str
    file: Path
    folder: Path  # steps run here; `code:` paths are relative to it
    steps: dict[str, Step]  # in an order that runs every step after those it needs


def load_pipeline(text: str, file: Path, registry: Registry) -> Pipeline:
    """FILE's pipeline, checked whole: schema, names, references, cycles, datasets,
    datastores, placeholders, commands and code paths."""
    source = str(file)
    model = yamlio.load(text, PipelineModel, source)

    def fail(message: str, *loc: str | int) -> ManifestError:
        return ManifestError(message, source=source, line=yamlio.line_at(text, loc))

    try:
        paths.check_name("pipeline", model.name)
    except UserError as error:
        raise fail(str(error), "name") from None
    folder = file.absolute().parent
    steps: dict[str, Step] = {}
    for name, declared in model.steps.items():
        if not _STEP_NAME.fullmatch(name):
            raise fail(f"step name {name!r}: use letters, digits, '_' and '-'", "steps", name)
        steps[name] = _step(name, declared, folder, registry, fail)
    _check_upstream(model.name, steps, fail)
    order = _order(steps, fail)
    return Pipeline(model.name, file, folder, {name: steps[name] for name in order})


def _step(name: str, declared: StepModel, folder: Path, registry: Registry,
          fail: Fail) -> Step:  # fmt: skip
    inputs = []
    for input_name, value in declared.inputs.items():
        where = ("steps", name, "inputs", input_name)
        try:
            inputs.append(_input(input_name, value, registry))
        except UserError as error:
            raise fail(str(error), *where) from None
    outputs = []
    for output_name, value in declared.outputs.items():
        try:
            spec = parse_output(f"{output_name}={value}")
            registry.get_datastore(spec.datastore)
        except UserError as error:
            raise fail(str(error), "steps", name, "outputs", output_name) from None
        outputs.append(spec)
    for var in declared.env:
        if not var.isidentifier():
            raise fail(f"{var!r} is not an environment variable name", "steps", name, "env", var)
    local = {i.name: "" for i in inputs}, {o.name: "" for o in outputs}
    for index, argument in enumerate(declared.command):
        try:
            substitute(argument, *local, "")
        except UserError as error:
            raise fail(str(error), "steps", name, "command", index) from None
    if problem := _command_problem(declared.command[0], folder):
        raise fail(problem, "steps", name, "command", 0)
    for index, code in enumerate(declared.code):
        if not (folder / code).exists():
            raise fail(f"code {code!r}: no such file or folder in {folder}",
                       "steps", name, "code", index)  # fmt: skip
    needs = {i.upstream.step for i in inputs if i.upstream is not None}
    return Step(name, declared.command, declared.code, declared.env, inputs, outputs,
                declared.reuse, needs)  # fmt: skip


def _input(name: str, value: str, registry: Registry) -> StepInput:
    """`DATASET[:VERSION][@SNAP][,mode=…]` or `steps.S.outputs.O[,mode=…]`."""
    if match := _UPSTREAM.fullmatch(value):
        step, output, options = match.groups()
        spec = parse_input(f"{name}=upstream:1{options}")  # checks the name and options
        return StepInput(name, spec.mode, upstream=Upstream(step, output))
    spec: InputSpec = parse_input(f"{name}={value}")
    return StepInput(name, spec.mode, version=require_data(registry.resolve(spec.ref)))


def _command_problem(program: str, folder: Path) -> str | None:
    """Why PROGRAM cannot be run from FOLDER, or None."""
    if "/" in program:
        path = folder / program
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"cannot run {program}: not an executable file"
    elif shutil.which(program) is None:
        return f"command not found: {program}"
    return None


def _check_upstream(pipeline: str, steps: dict[str, Step], fail: Fail) -> None:
    """Every `steps.S.outputs.O` names a step and one of its outputs; what a later step
    reads is registered (under a derived name when the file names none)."""
    for step in steps.values():
        for item in step.inputs:
            if item.upstream is None:
                continue
            where = ("steps", step.name, "inputs", item.name)
            source = steps.get(item.upstream.step)
            if source is None:
                raise fail(f"input {item.name}: no step named {item.upstream.step!r}", *where)
            if source is step:
                raise fail(f"input {item.name}: a step cannot read its own output", *where)
            outputs = {o.name: o for o in source.outputs}
            spec = outputs.get(item.upstream.output)
            if spec is None:
                raise fail(f"input {item.name}: step {source.name!r} has no output"
                           f" {item.upstream.output!r}", *where)  # fmt: skip
            source.read_later.add(spec.name)
            if spec.register is None:
                registered = derived_name(pipeline, source.name, spec.name)
                try:
                    paths.check_name("dataset", registered)
                except UserError as error:
                    raise fail(str(error), *where) from None
                source.derived.add(spec.name)
                index = source.outputs.index(spec)
                source.outputs[index] = OutputSpec(spec.name, spec.datastore, spec.path,
                                                   spec.mode, registered)  # fmt: skip


def _order(steps: dict[str, Step], fail: Fail) -> list[str]:
    """The steps in the file's order, each moved after the steps it needs; a cycle fails."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            raise fail("steps form a cycle: " + " -> ".join(cycle), "steps", name)
        state[name] = "visiting"
        for need in sorted(steps[name].needs):
            visit(need, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in steps:
        visit(name, [])
    return order
