"""`prefectstack upgrade`: move a running local stack onto the installed Prefect without
stopping it (runtime/upgrade.py): plan, then apply with `--yes` or after a confirmation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.errors import StackError

if TYPE_CHECKING:
    from prefectstack.runtime.upgrade import Done, Plan


@click.command()
@stack_file
@click.option("-y", "--yes", is_flag=True,
              help="Apply the plan without asking (with --json and without it: the plan "
                   "alone).")
@json_flag
def upgrade(stack_path: str | None, yes: bool, as_json: bool) -> None:
    """Back up, migrate, and restart the API processes one at a time, then the services
    process and each worker after its runs in flight (a rolling upgrade of a running stack
    onto the installed Prefect; a database that a newer Prefect migrated is refused)."""
    from prefectstack.deploy.apply import target_for
    from prefectstack.runtime import upgrade as upgrading
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    plan = upgrading.plan(loaded)
    if not as_json:
        _show(plan)
    if not yes and as_json:  # the plan alone, as data
        console.json_out({"plan": plan.to_dict(), "applied": False, "steps": []})
        return
    if not yes and not console.confirm("Upgrade?"):
        raise StackError("nothing was changed", hint="pass --yes to apply without asking")
    target = target_for(loaded) if any(s.action == "drain" for s in plan.steps) else None
    report = (lambda _text: None) if as_json else console.event
    done = upgrading.apply(loaded, plan, target, on_step=report)
    if as_json:
        console.json_out({"plan": plan.to_dict(), "applied": True,
                          "steps": [_done_dict(d) for d in done]})
        return
    for item in done:
        what = f"{item.step.action} {item.step.unit}".rstrip()
        console.out(f"  {what}: {item.seconds:.1f}s" + (f"  {item.detail}" if item.detail
                                                       else ""))
    console.out("upgrade done")


def _show(plan: Plan) -> None:
    console.out(f"Upgrade of stack `{plan.stack}` onto Prefect {plan.prefect_version} "
                f"(database at migration {plan.database_revision}; the installed Prefect's "
                f"newest is {plan.head_revision}):")
    for i, step in enumerate(plan.steps, 1):
        console.out(f"  {i}. {step.action} {step.unit}".rstrip() + f"  - {step.note}")


def _done_dict(done: Done) -> dict[str, object]:
    return {"action": done.step.action, "unit": done.step.unit, "seconds": done.seconds,
            "detail": done.detail, **done.extra}


COMMANDS = [upgrade]
