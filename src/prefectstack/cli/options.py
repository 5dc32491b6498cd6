"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def stack_file(func: F) -> F:
    return _stack_file("-f", "--file")(func)


def stack_file_long(func: F) -> F:
    """For commands where `-f` means follow, as in `docker logs -f`."""
    return _stack_file("--file")(func)


def _stack_file(*flags: str) -> Callable[[F], F]:
    return click.option(
        *flags,
        "stack_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Stack file (default: ./stack.yaml, else the built-in default stack).",
    )


def json_flag(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(
        func
    )
