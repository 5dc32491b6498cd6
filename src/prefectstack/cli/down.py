"""`prefectstack down`: stop everything in reverse dependency order; optionally delete data."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from prefectstack import console
from prefectstack.cli.options import stack_file
from prefectstack.errors import StackError
from prefectstack.layout import Layout


@click.command()
@stack_file
@click.option("--volumes", is_flag=True,
              help="Also delete the stack's data and logs (with Docker Compose: its volumes).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting data.")
def down(stack_path: str | None, volumes: bool, yes: bool) -> None:
    """Stop the stack (SIGTERM, then SIGKILL after a grace period); leave no process behind."""
    from prefectstack.runtime import backend
    from prefectstack.stack.loader import locate_state_dir

    state_dir = locate_state_dir(stack_path)
    if backend.read(state_dir).backend == backend.COMPOSE:
        _down_compose(state_dir, volumes, yes)
    else:
        _down_local(state_dir, volumes, yes)
    backend.clear(state_dir)


def _down_local(state_dir: Path, volumes: bool, yes: bool) -> None:
    from prefectstack.runtime import state, stopping

    current = state.read(state_dir)
    stopped, cleaned = stopping.stop(state_dir)
    if stopped:
        console.out("stack stopped")
    elif cleaned:
        console.warn("the supervisor had died; stopped leftover " + ", ".join(cleaned))
    elif current is not None and current.phase == "failed":
        console.out(f"the stack had failed and was stopped ({current.message}); "
                    "removed its state")
    elif current is not None:
        console.warn("the supervisor had died and its services with it; "
                     "removed its leftover state")
    else:
        console.out("stack is not running")
    if volumes:
        _delete_data(state_dir, yes)


def _down_compose(state_dir: Path, volumes: bool, yes: bool) -> None:
    """`docker compose down` in the project `up --backend compose` rendered; with
    `--volumes`, its named volumes too, after saying which."""
    from prefectstack.runtime import compose

    if volumes:
        names = compose.volumes(state_dir)
        if names:
            console.out("This deletes, permanently, the Docker volumes of the Compose project "
                        f"in {Layout(state_dir).compose_dir}:")
            for name in names:
                console.out(f"  {name}")
            if not yes and not console.confirm("Delete them?"):
                raise StackError("nothing was stopped or deleted",
                                 hint="pass --yes to delete without asking")
    if compose.down(state_dir, volumes=volumes):
        console.out("stack stopped (Docker Compose)" + (", volumes deleted" if volumes else ""))
    else:
        console.out("stack is not running")


def _delete_data(state_dir: Path, yes: bool) -> None:
    layout = Layout(state_dir)
    targets = [p for p in (layout.data, layout.logs) if p.exists()]
    if not targets:
        console.out("no data to delete")
        return
    console.out("This deletes, permanently:")
    for path in targets:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        console.out(f"  {path}  ({size / 1e6:.1f} MB)")
    console.out(f"(secrets in {layout.secrets_file} are kept and reused)")
    if not yes and not console.confirm("Delete them?"):
        raise StackError("nothing deleted", hint="pass --yes to delete without asking")
    for path in targets:
        shutil.rmtree(path)
    console.out("deleted")


COMMANDS = [down]
