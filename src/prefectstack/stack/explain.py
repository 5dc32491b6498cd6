"""Turn pydantic's validation errors into messages that name the YAML path and the fix."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from prefectstack.stack.interpolate import yaml_path


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (its parent), if one can be found."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        field = fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic adds the literal/union branch or validator name to some locations
    return tuple(
        p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
    )


def _yaml_scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def explain_one(root: type[BaseModel], err: ErrorDetails) -> str:
    loc = _clean_loc(tuple(err["loc"]))
    path = yaml_path(loc)
    kind = err["type"]
    # YAML reads unquoted yes/no/on/off/true/false/null and numbers as values, not text
    if kind == "invalid_key" or (kind == "string_type" and err["loc"][-1:] == ("[key]",)):
        key = _yaml_scalar(err["input"])
        return (f"{yaml_path(loc[:-1])}: key `{key}` is not text (YAML reads unquoted yes, no, "
                f"on, off, true, false, null and numbers as values); quote it: \"{key}\"")
    if kind == "string_type" and isinstance(err["input"], bool | int | float):
        return f"{path}: expected a string, got {_yaml_scalar(err['input'])}; quote it"
    if kind == "extra_forbidden":
        parent = _model_at(root, loc)
        key = str(loc[-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        msg = f"{path}: unknown key `{key}`"
        if close:
            return f"{msg}; did you mean `{close[0]}`?"
        return f"{msg}; valid keys here: {', '.join(valid)}" if valid else msg
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{path}: got {err['input']!r}, expected one of {expected}"
    if kind == "value_error":
        return f"{path}: {err['msg'].removeprefix('Value error, ')}"
    return f"{path}: {err['msg']} (got {err['input']!r})"


def explain(root: type[BaseModel], error: ValidationError) -> list[str]:
    errors = error.errors(include_url=False)
    # A typo (`poool`) is reported twice by pydantic: the unknown key and the missing field
    # it was meant to be. Keep the unknown key, which carries the "did you mean".
    typos: set[tuple[str | int, ...]] = set()
    for err in errors:
        loc = _clean_loc(tuple(err["loc"]))
        if err["type"] == "extra_forbidden" and (parent := _model_at(root, loc)):
            close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), 1, 0.6)
            typos.update((*loc[:-1], c) for c in close)
    return [
        explain_one(root, e)
        for e in errors
        if not (e["type"] == "missing" and _clean_loc(tuple(e["loc"])) in typos)
    ]
