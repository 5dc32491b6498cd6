"""Desired (the stack file) vs actual (the server) → a `Plan` of creates, field-by-field
updates and deletes. Pure: plain data in, plain data out.

Rules:
- an object in the file is created when missing, updated when any managed field differs
  (including drift made by hand in the UI), and adopted (marked managed) when it existed
  unmanaged;
- a managed object that left the file is deleted only with `prune`, otherwise reported as
  an orphan; unmanaged objects are never touched;
- a pool's `default` queue is Prefect's and never deleted; the queues of a pool being
  deleted go with it; a pool still used by a deployment that stays is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from prefectstack.deploy.state import GIT_CLONE, KINDS, SET_WORKDIR, Obj, State
from prefectstack.errors import StackError

Action = Literal["create", "update", "delete"]
HIDDEN = "(hidden)"
SYMBOL = {"create": "+", "update": "~", "delete": "-"}


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    adopt: bool = False  # the object existed unmanaged; apply marks it managed


@dataclass(frozen=True)
class Plan:
    target: str
    changes: tuple[Change, ...]
    orphans: tuple[str, ...] = ()  # managed objects no longer in the file (kept without prune)
    warnings: tuple[str, ...] = ()

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        return {a: sum(c.action == a for c in self.changes) for a in ("create", "update", "delete")}

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "changes": [
                {"action": c.action, "kind": c.kind, "name": c.name, "adopt": c.adopt,
                 "fields": [{"field": f.field, "before": f.before, "after": f.after}
                            for f in c.fields]}
                for c in self.changes
            ],
            "summary": self.counts(),
            "orphans": list(self.orphans),
            "warnings": list(self.warnings),
        }

    def lines(self) -> list[str]:
        """The plan for a person, one line per object and per changed field."""
        if not self.changes:
            out = [f"No changes: {self.target} matches the stack file."]
        else:
            out = [f"Plan for {self.target}:"]
            for c in self.changes:
                note = " (adopt: mark as managed)" if c.adopt else ""
                out.append(f"  {SYMBOL[c.action]} {c.kind} {c.name}{note}")
                for f in c.fields:
                    if c.action == "create":
                        out.append(f"      {f.field}: {show(f.field, f.after)}")
                    else:
                        out.append(
                            f"      {f.field}: {show(f.field, f.before)} → {show(f.field, f.after)}"
                        )
            n = self.counts()
            out.append(f"{n['create']} to create, {n['update']} to update, "
                       f"{n['delete']} to delete.")
        if self.orphans:
            out.append("Managed objects no longer in the stack file (`--prune` deletes them): "
                       + ", ".join(self.orphans))
        out += [f"warning: {w}" for w in self.warnings]
        return out


def make_plan(desired: State, actual: State, *, target: str, prune: bool,
              warnings: tuple[str, ...] = ()) -> Plan:
    _check_references(desired, actual)
    changes: list[Change] = []
    for kind in KINDS:
        for want in desired.of_kind(kind):
            change = _compare(want, actual.get(kind, want.name))
            if change is not None:
                changes.append(change)
    gone = [o for o in actual.objects.values() if o.managed and o.key not in desired.objects]
    deletes, kept = _deletions(gone, desired, actual)
    if prune:
        return Plan(target, tuple(changes + deletes), (), (*warnings, *kept))
    orphans = tuple(f"{c.kind} {c.name}" for c in deletes)
    return Plan(target, tuple(changes), orphans, warnings)


def _compare(want: Obj, have: Obj | None) -> Change | None:
    if have is None:
        fields = tuple(FieldChange(k, None, _masked(want, k, v)) for k, v in want.fields.items()
                       if _worth_showing(v))
        return Change("create", want.kind, want.name, fields)
    if want.ensure_only:
        return None
    if want.kind == "work_pool" and want.fields.get("type") != have.fields.get("type"):
        raise StackError(
            f"work pool `{want.name}` is of type `{have.fields.get('type')}` on the server but "
            f"`{want.fields.get('type')}` in the stack file; a pool's type cannot change",
            hint="delete the pool on the server first, or give the new pool another name",
            exit_code=2,
        )
    diffs = []
    for key, value in want.fields.items():
        before = have.fields.get(key)
        if not _same(key, value, before, key in want.loose):
            diffs.append(FieldChange(key, _masked(want, key, before), _masked(want, key, value)))
    if have.managed and not diffs:
        return None
    return Change("update", want.kind, want.name, tuple(diffs), adopt=not have.managed)


def _same(key: str, want: Any, have: Any, loose: bool) -> bool:
    if loose and want is None:
        return True
    if loose and isinstance(want, dict) and isinstance(have, dict):
        return all(_same(k, v, have.get(k), False) for k, v in want.items())
    if key == "schedules":
        return _same_schedules(want, have or [])
    return bool(want == have)


def _same_schedules(want: list[dict[str, Any]], have: list[dict[str, Any]]) -> bool:
    if len(want) != len(have):
        return False
    order = sorted(want, key=_schedule_sort), sorted(have, key=_schedule_sort)
    for w, h in zip(*order, strict=True):
        for key, value in w.items():
            # An interval schedule without anchor/timezone leaves them to the server.
            if value is None and key in ("anchor_date", "timezone"):
                continue
            if h.get(key) != value:
                return False
    return True


def _worth_showing(value: Any) -> bool:
    return value is not None and value is not False and value != {} and value != []


def _schedule_sort(s: dict[str, Any]) -> str:
    return json.dumps([s.get("cron"), s.get("interval"), s.get("rrule")], default=str)


def _masked(obj: Obj, key: str, value: Any) -> Any:
    return HIDDEN if obj.kind == "secret" and key == "value" and value is not None else value


def _check_references(desired: State, actual: State) -> None:
    pools = {o.name for o in desired.of_kind("work_pool")} | {
        o.name for o in actual.of_kind("work_pool")}
    for dep in desired.of_kind("deployment"):
        pool = dep.fields["work_pool"]
        if pool not in pools:
            raise StackError(
                f"deployment `{dep.name}`: work pool `{pool}` does not exist",
                hint="declare it under `work_pools`, give a worker that pool, or create it",
                exit_code=2,
            )


def _deletions(gone: list[Obj], desired: State, actual: State) -> tuple[list[Change], list[str]]:
    gone_keys = {o.key for o in gone}
    staying = [d for d in [*actual.of_kind("deployment"), *desired.of_kind("deployment")]
               if d.key not in gone_keys]
    kept: list[str] = []
    deleted_pools: set[str] = set()
    for obj in (o for o in gone if o.kind == "work_pool"):
        users = sorted({d.name for d in staying if d.fields.get("work_pool") == obj.name})
        if users:
            kept.append(f"work pool {obj.name} is no longer in the stack file but "
                        f"deployments still use it: {', '.join(users)}")
        else:
            deleted_pools.add(obj.name)
    deletes: list[Change] = []
    for kind in reversed(KINDS):
        for obj in sorted((o for o in gone if o.kind == kind), key=lambda o: o.name):
            if kind == "work_pool" and obj.name not in deleted_pools:
                continue
            if kind == "work_queue":
                pool, _, queue = obj.name.partition("/")
                if queue == "default" or pool in deleted_pools:
                    continue  # Prefect's own queue; or it goes with its pool
            deletes.append(Change("delete", kind, obj.name))
    return deletes, kept


def show(field: str, value: Any) -> str:
    """A short, readable rendering of one field value."""
    if value is None:
        return "(none)"
    if field == "schedules":
        return "[" + ", ".join(_show_schedule(s) for s in value) + "]" if value else "(none)"
    if field == "pull_steps":
        return ", ".join(_show_step(s) for s in value) if value else "(none)"
    if field == "parameter_openapi_schema":
        names = sorted((value.get("properties") or {}).keys())
        return f"(flow signature: {', '.join(names) or 'no parameters'})"
    if isinstance(value, str):
        return value if value == HIDDEN else json.dumps(value)
    return json.dumps(value, sort_keys=True, default=str)


def _show_schedule(s: dict[str, Any]) -> str:
    if s.get("cron") is not None:
        text = f"cron '{s['cron']}' {s.get('timezone')}"
    elif s.get("rrule") is not None:
        text = f"rrule '{s['rrule']}' {s.get('timezone')}"
    else:
        text = f"every {s['interval']:g}s"
        if s.get("anchor_date"):
            text += f" from {s['anchor_date']}"
        if s.get("timezone"):
            text += f" {s['timezone']}"
    if not s.get("active", True):
        text += " (paused)"
    if s.get("parameters"):
        text += f" with {json.dumps(s['parameters'], sort_keys=True)}"
    return text


def _show_step(step: dict[str, Any]) -> str:
    if GIT_CLONE in step:
        args = step[GIT_CLONE]
        ref = args.get("branch")
        return f"git {args.get('repository')}" + (f" @ {ref}" if ref else "")
    if SET_WORKDIR in step:
        return f"directory {step[SET_WORKDIR].get('directory')}"
    return json.dumps(step, sort_keys=True)
