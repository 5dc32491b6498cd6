"""`prefectstack schema` and `prefectstack validate`."""

from __future__ import annotations

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.errors import StackError


@click.command()
def schema() -> None:
    """Print the stack file's JSON Schema."""
    from prefectstack.stack.model import Stack

    console.json_out(Stack.model_json_schema())


@click.command()
@stack_file
@click.argument("file", required=False, type=click.Path(dir_okay=False), metavar="[FILE]")
@json_flag
def validate(stack_path: str | None, file: str | None, as_json: bool) -> None:
    """Check a stack file (default: ./stack.yaml or the built-in default).

    `validate FILE` still works but is deprecated: use `-f FILE`, as every other command.
    """
    from prefectstack import topology
    from prefectstack.stack.loader import load_stack

    if file is not None:
        if stack_path is not None:
            raise StackError("two stack files given", hint="pass only -f FILE", exit_code=2)
        console.warn("`prefectstack validate FILE` is deprecated; use `prefectstack validate "
                     "-f FILE`")
        stack_path = file
    loaded = load_stack(stack_path)
    services = topology.build(loaded.stack)
    if as_json:
        console.json_out({"valid": True, "source": loaded.source,
                          "services": [s.name for s in services]})
        return
    console.out(f"{loaded.source}: valid; services: {', '.join(s.name for s in services)}")


COMMANDS = [schema, validate]
