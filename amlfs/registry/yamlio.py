"""Safe YAML in, with line numbers for errors; plain YAML out.

Loading uses PyYAML's safe loader (the C one where available) and additionally rejects
aliases (a billion-laughs document expands exponentially in whatever walks it) and
duplicate keys (PyYAML would silently keep the last). Validation is a pydantic model;
its first error is reported with the line of the offending node.
"""

from __future__ import annotations

from typing import TypeVar

import pydantic
import yaml

from amlfs.errors import ManifestError

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

Model = TypeVar("Model", bound=pydantic.BaseModel)


class _StrictLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    def construct_object(self, node, deep=False):
        if node in self.constructed_objects:
            raise ManifestError(
                "YAML anchors and aliases are not allowed", line=node.start_mark.line + 1
            )
        return super().construct_object(node, deep)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key in seen:
                raise ManifestError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load(text: str, model: type[Model], source: str) -> Model:
    """Parse TEXT safely and validate it as MODEL; ManifestError names the line."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError("the document is empty", source=source)
        data = loader.construct_document(node)
    except ManifestError as exc:
        raise ManifestError(str(exc).partition(": ")[2], source=source, line=exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark else None
        raise ManifestError(f"not valid YAML: {problem}", source=source, line=line) from None
    finally:
        loader.dispose()
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        where = _format_loc(loc)
        raise ManifestError(
            f"{where}: {message}" if where else message, source=source, line=line_of(node, loc)
        ) from None


def dump(data: dict) -> str:
    """YAML for DATA; leaf mappings (such as one file of a manifest) go on one line."""
    return yaml.dump(
        data, Dumper=_SafeDumper, sort_keys=False, allow_unicode=True, width=200,
        default_flow_style=None,
    )  # fmt: skip


def line_at(text: str, loc: tuple) -> int | None:
    """The line of LOC in TEXT, a document that has already loaded once."""
    return line_of(yaml.compose(text, Loader=_SafeLoader), loc)


def line_of(node: yaml.Node, loc: tuple) -> int | None:
    """The 1-based line of the node at LOC (keys and indexes), or of its nearest parent."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("function-", "union[")):
            text += f".{part}" if text else part
    return text
