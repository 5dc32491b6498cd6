"""`prefectstack schema` and `prefectstack validate`."""

from __future__ import annotations

import click

from prefectstack import console, topology
from prefectstack.cli.options import json_flag
from prefectstack.stack.loader import load_stack
from prefectstack.stack.model import Stack


@click.command()
def schema() -> None:
    """Print the stack file's JSON Schema."""
    console.json_out(Stack.model_json_schema())


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@json_flag
def validate(file: str | None, as_json: bool) -> None:
    """Check a stack file (default: ./stack.yaml or the built-in default)."""
    loaded = load_stack(file)
    services = topology.build(loaded.stack)
    if as_json:
        console.json_out({"valid": True, "source": loaded.source,
                          "services": [s.name for s in services]})
        return
    console.out(f"{loaded.source}: valid; services: {', '.join(s.name for s in services)}")


COMMANDS = [schema, validate]
