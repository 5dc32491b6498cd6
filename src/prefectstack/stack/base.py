"""The base of every stack-file model: unknown keys are errors, and values never change."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A stack-file section: `extra="forbid"` (a misspelt key fails) and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
