"""`prefectstack deploy plan|apply`: deployments as code, reviewed before they change."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.errors import StackError

if TYPE_CHECKING:
    from prefectstack.deploy.apply import Outcome
    from prefectstack.deploy.plan import Plan

F = TypeVar("F", bound=Callable[..., Any])


def _target_options(func: F) -> F:
    options = [
        click.option("--server", envvar="PREFECTSTACK_SERVER", metavar="URL",
                     help="Prefect server to target, e.g. https://prefect.example.com "
                          "[env PREFECTSTACK_SERVER; default: this stack's API]"),
        click.option("--key", envvar="PREFECTSTACK_API_KEY", metavar="KEY",
                     help="API key for the server [env PREFECTSTACK_API_KEY]"),
        click.option("--ca", "ca_file", envvar="PREFECTSTACK_CA_FILE",
                     type=click.Path(exists=True, dir_okay=False),
                     help="CA certificate that signed the server's TLS certificate "
                          "[env PREFECTSTACK_CA_FILE; default: the system's CAs]"),
        click.option("--prune", is_flag=True,
                     help="Also delete managed objects that are no longer in the stack file."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def deploy() -> None:
    """Deployments as code: work pools, deployments, concurrency limits, variables and
    secrets from the stack file, planned and applied to a Prefect server."""


@deploy.command()
@stack_file
@_target_options
@json_flag
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there is nothing to change, 2 when changes are pending, "
                   "1 on any error (as terraform plan does).")
def plan(stack_path: str | None, server: str | None, key: str | None, ca_file: str | None,
         prune: bool, as_json: bool, detailed_exitcode: bool) -> None:
    """Show what `deploy apply` would create, update (field by field) or delete."""
    try:
        outcome = _run(stack_path, server, key, ca_file, prune, lambda _plan: False)
    except StackError as exc:
        if detailed_exitcode:  # 2 means "changes pending" here, so every error is 1
            raise StackError(exc.message, hint=exc.hint, exit_code=1) from None
        raise
    _show(outcome.plan, as_json)
    if detailed_exitcode and outcome.plan.has_changes:
        sys.exit(2)


@deploy.command()
@stack_file
@_target_options
@click.option("-y", "--yes", is_flag=True, help="Apply without asking.")
def apply(stack_path: str | None, server: str | None, key: str | None, ca_file: str | None,
          prune: bool, yes: bool) -> None:
    """Make the server match the stack file (run `deploy plan` to review first)."""

    def decide(plan: Plan) -> bool:
        _show(plan, False)
        if not plan.has_changes:
            return False
        if yes or console.confirm("Apply these changes?"):
            return True
        raise StackError("nothing was changed", hint="pass --yes to apply without asking")

    outcome = _run(stack_path, server, key, ca_file, prune, decide)
    if outcome.applied:
        n = outcome.plan.counts()
        console.out(f"Applied: {n['create']} created, {n['update']} updated, "
                    f"{n['delete']} deleted.")


def _run(stack_path: str | None, server: str | None, key: str | None, ca_file: str | None,
         prune: bool, decide: Callable[[Plan], bool]) -> Outcome:
    from prefectstack.deploy.apply import run, target_for
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    return run(loaded, target_for(loaded, server, key, ca_file), prune=prune,
               decide=decide)


def _show(plan: Plan, as_json: bool) -> None:
    if as_json:
        console.json_out(plan.to_json())
        return
    for line in plan.lines():
        if line.startswith("warning: "):
            console.warn(line.removeprefix("warning: "))
        else:
            console.out(line)


COMMANDS = [deploy]
