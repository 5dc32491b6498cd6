"""The stack-file reference (docs/stack-reference.md), rendered from the model itself so the
docs cannot drift from what the loader accepts.

Regenerate with `python -m prefectstack.stack.reference > docs/stack-reference.md`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from prefectstack.stack.model import Stack

REGENERATE = "python -m prefectstack.stack.reference > docs/stack-reference.md"


def sections(
    model: type[BaseModel] = Stack, path: str = ""
) -> Iterator[tuple[str, type[BaseModel]]]:
    """(YAML path, model) for `model` and every model nested in it, depth first."""
    yield path, model
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            suffix = "[]" if get_origin(field.annotation) is list else ""
            yield from sections(nested, _join(path, name) + suffix)


def render_markdown() -> str:
    out = [
        "# Stack file reference",
        "",
        "<!-- Generated from src/prefectstack/stack/model.py; do not edit by hand. -->",
        f"<!-- Regenerate: {REGENERATE} -->",
        "",
        "Every key `stack.yaml` accepts. Unknown keys are errors (with the closest valid key "
        "suggested). In any string value, `${VAR}` and `${VAR:-default}` are replaced from the "
        "environment and `$$` is a literal `$`.",
    ]
    for path, model in sections():
        out += ["", f"## {f'`{path}`' if path else 'Top level'}", ""]
        out += [f"`{model.__name__}`: {inspect.cleandoc(model.__doc__ or '')}", ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            cells = [
                f"`{_join(path, name)}`",
                _describe_type(field.annotation, field.metadata),
                _describe_default(field),
                field.description or "",
            ]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _describe_type(annotation: Any, metadata: list[Any]) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        inner = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return _describe_type(base, [*metadata, *inner])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        kinds = [_describe_type(a, metadata) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is Literal:
        values = [f"`{v}`" for v in get_args(annotation)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if origin is list:
        (item,) = get_args(annotation)
        if _nested_model(item):
            return "list of mappings (keys below)"
        return f"list of {_describe_type(item, [])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"mapping of {_describe_type(key, [])} to {_describe_type(value, [])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (keys below)"
    names = {int: "integer", str: "string", bool: "boolean", float: "number"}
    base = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return base + _constraints(metadata)


def _constraints(metadata: list[Any]) -> str:
    low = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in metadata if hasattr(m, "le")), None)
    pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
    if low is not None and high is not None:
        return f" ({low} to {high})"
    if low is not None:
        return f" (>= {low})"
    if high is not None:
        return f" (<= {high})"
    if pattern is not None:
        return f" matching `{pattern}`"
    return ""


def _describe_default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    return f"`{_yaml_inline(_plain(value))}`"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _yaml_inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


if __name__ == "__main__":
    print(render_markdown(), end="")
