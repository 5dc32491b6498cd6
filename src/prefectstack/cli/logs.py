"""`prefectstack logs [SERVICE] [-f]`: read the per-service log files (or, for a stack
started with Docker Compose, `docker compose logs`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from prefectstack import console
from prefectstack.cli.options import stack_file_long
from prefectstack.errors import StackError
from prefectstack.layout import Layout


@click.command()
@stack_file_long
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines of history per log.")
def logs(stack_path: str | None, service: str | None, follow: bool, lines: int) -> None:
    """Show the logs of one service, or of all of them."""
    from prefectstack.runtime import backend
    from prefectstack.stack.loader import locate_state_dir

    state_dir = locate_state_dir(stack_path)
    if backend.read(state_dir).backend == backend.COMPOSE:
        from prefectstack.runtime import compose

        code = compose.logs(state_dir, service, lines, follow)
        if code:
            sys.exit(code)
        return
    _local_logs(state_dir, service, follow, lines)


def _local_logs(state_dir: Path, service: str | None, follow: bool, lines: int) -> None:
    from prefectstack.runtime.logfiles import LogFollower, tail_lines

    layout = Layout(state_dir)
    available = sorted(p.stem for p in layout.logs.glob("*.log")) if layout.logs.exists() else []
    if service and service not in available:
        raise StackError(
            f"no log for service `{service}`",
            hint="available: " + (", ".join(available) or "(none yet; run prefectstack up)"),
            exit_code=2,
        )
    names = [service] if service else available
    for name in names:
        for line in tail_lines(layout.log(name), lines):
            console.service_line(name, line)
    if not follow:
        return
    follower = LogFollower(layout.logs)
    only = set(names)
    try:
        while True:
            follower.pump(only)
            time.sleep(0.3)
    except KeyboardInterrupt:
        return


COMMANDS = [logs]
