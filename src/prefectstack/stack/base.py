"""The base of every stack-file model: unknown keys are errors, values never change, and a
number is never a boolean."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Ports are integers in 1..65535; `true` is refused by StrictModel (pydantic reads it as 1).
Port = Annotated[int, Field(ge=1, le=65535)]


def _number_kind(annotation: Any) -> str | None:
    """What number a field of this annotation takes ("an integer", "a number"), if any."""
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_kind(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        if bool in args:
            return None
        return next((k for a in args if (k := _number_kind(a)) is not None), None)
    return None


class StrictModel(BaseModel):
    """A stack-file section: `extra="forbid"` (a misspelt key fails) and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # pydantic's lax mode turns `true` into 1 for an int field, so `port: true` would become
    # port 1. Strict mode would also refuse "8080", which is what `${PORT:-8080}` gives.
    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            kind = _number_kind(cls.model_fields[info.field_name].annotation)
            if kind is not None:
                raise ValueError(f"expected {kind}, got the boolean `{str(value).lower()}`")
        return value
