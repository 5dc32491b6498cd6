"""Docs that cannot drift: the stack-file reference is generated from the model, and every
field of every model is described."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from prefectstack.stack.model import Stack
from prefectstack.stack.reference import REGENERATE, render_markdown, sections

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "stack-reference.md"


def _all_models(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Walk the model independently of reference.py, so a model it skips is still caught."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found += _all_models(arg, f"{path}.{name}" if path else name)
    return found


MODELS = _all_models(Stack)
FIELDS = [(f"{p}.{n}" if p else n, m, n) for p, m in MODELS for n in m.model_fields]


def test_reference_is_up_to_date() -> None:
    assert REFERENCE.exists(), f"docs/stack-reference.md is missing; run: {REGENERATE}"
    assert REFERENCE.read_text() == render_markdown(), (
        f"docs/stack-reference.md is out of date with the stack model; run: {REGENERATE}"
    )


def test_walk_finds_the_nested_models() -> None:
    names = {m.__name__ for _, m in MODELS}
    assert {"Stack", "PostgresConfig", "RedisConfig", "WorkerConfig", "ExamplesConfig"} <= names


@pytest.mark.parametrize(("path", "model", "name"), FIELDS, ids=[f[0] for f in FIELDS])
def test_every_field_has_a_description(path: str, model: type[BaseModel], name: str) -> None:
    description = model.model_fields[name].description
    assert description and description.strip(), f"{model.__name__}.{name} ({path})"


@pytest.mark.parametrize(("path", "model"), MODELS, ids=[p or "Stack" for p, _ in MODELS])
def test_every_model_has_a_docstring(path: str, model: type[BaseModel]) -> None:
    assert model.__doc__ and model.__doc__.strip(), model.__name__


def test_reference_covers_every_model_and_field() -> None:
    rendered = render_markdown()
    covered = {model for _, model in sections()}
    assert covered == {model for _, model in MODELS}
    for path, model in sections():
        for name in model.model_fields:
            key = f"{path}.{name}" if path else name
            assert f"| `{key}` |" in rendered, key


def test_reference_rows_are_well_formed() -> None:
    rows = [line for line in render_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) == len(FIELDS)
    for row in rows:
        cells = row.replace("\\|", "").strip("|").split("|")
        assert len(cells) == 4 and all(c.strip() for c in cells), row


def test_reference_shows_types_defaults_and_requirements() -> None:
    rendered = render_markdown()
    assert "| `version` | `1` | required |" in rendered
    assert "| `api.replicas` | integer (1 to 16) | `1` |" in rendered
    assert "| `workers[].pool` | string matching `^[a-z][a-z0-9-]{0,39}$` | required |" in rendered
    assert "| `postgres.mode` | one of `embedded`, `system`, `external` | `embedded` |" in rendered
    assert "`[{name: worker-1, pool: default}]`" in rendered
