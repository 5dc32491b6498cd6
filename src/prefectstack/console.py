"""The one module that prints. Everything for a person goes through here."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

_COLORS = ["cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green"]
_assigned: dict[str, str] = {}


def out(text: str = "") -> None:
    click.echo(text)


def json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def event(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    click.echo(click.style(f"{stamp} prefectstack | ", bold=True) + text, err=True)


def service_line(service: str, line: str) -> None:
    color = _assigned.setdefault(service, _COLORS[len(_assigned) % len(_COLORS)])
    click.echo(click.style(f"{service:>12} | ", fg=color) + line)


def error(exc: BaseException) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + str(exc), err=True)


def warn(text: str) -> None:
    click.echo(click.style("warning: ", fg="yellow", bold=True) + text, err=True)


def failure(message: str, tail: Sequence[str]) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    if tail:
        click.echo("  last lines of its log:", err=True)
        for line in tail:
            click.echo(f"    {line}", err=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return click.confirm(question, default=False)
