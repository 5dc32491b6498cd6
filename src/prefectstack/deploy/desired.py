"""The stack file → the desired server objects (`State`), checked before anything changes.

This is where the outside world is read: secret values (environment, files), the flows'
source (local directories, fresh git clones) for their names and signatures, and the worker
types' default job templates. Every problem found is collected and raised as one StackError
(exit 2), so a bad file changes nothing on the server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefectstack import prefect_api
from prefectstack.deploy import signature, source
from prefectstack.deploy.state import (
    Obj,
    State,
    canonical_schedule,
    job_variable_defaults,
    schedule_body,
    secret_digest,
    utc_iso,
)
from prefectstack.errors import StackError
from prefectstack.stack.deployments import MANAGED_TAG, DeploymentConfig, ScheduleConfig
from prefectstack.stack.loader import LoadedStack
from prefectstack.stack.model import Stack


@dataclass(frozen=True)
class Desired:
    state: State
    warnings: tuple[str, ...]


def has_content(stack: Stack) -> bool:
    """Whether the stack file declares anything for `prefectstack deploy`."""
    return any((stack.work_pools, stack.deployments, stack.concurrency_limits,
                stack.variables, stack.secrets))


def build(loaded: LoadedStack, *, env: Mapping[str, str], server_secrets: Mapping[str, str],
          workdir: Path) -> Desired:
    builder = _Builder(loaded, env, server_secrets, workdir)
    objs = [
        *builder.secrets(), *builder.variables(), *builder.concurrency_limits(),
        *builder.work_pools(), *builder.deployments(),
    ]
    if builder.errors:
        raise StackError(
            f"{loaded.source}: nothing was changed:\n  " + "\n  ".join(builder.errors),
            exit_code=2,
        )
    return Desired(State.of(objs), tuple(builder.warnings))


class _Builder:
    def __init__(self, loaded: LoadedStack, env: Mapping[str, str],
                 server_secrets: Mapping[str, str], workdir: Path) -> None:
        self.stack = loaded.stack
        self.base_dir = loaded.base_dir
        self.env = env
        self.server_secrets = server_secrets
        self.workdir = workdir
        self.secret_values: dict[str, str] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def secrets(self) -> list[Obj]:
        out = []
        for i, secret in enumerate(self.stack.secrets):
            value = self._secret_value(i)
            if value is None:
                continue
            self.secret_values[secret.name] = value
            out.append(Obj("secret", secret.name, {"value": secret_digest(value)},
                           extra={"value": value}))
        return out

    def _secret_value(self, i: int) -> str | None:
        secret = self.stack.secrets[i]
        if secret.env is not None:
            if secret.env not in self.env:
                self.errors.append(f"secrets[{i}].env: environment variable {secret.env} is "
                                   "not set")
                return None
            return self.env[secret.env]
        assert secret.file is not None
        path = self.base_dir / secret.file
        try:
            return path.read_text().removesuffix("\n")
        except OSError as exc:
            self.errors.append(f"secrets[{i}].file: cannot read {path}: {exc.strerror}")
            return None

    def variables(self) -> list[Obj]:
        return [
            Obj("variable", v.name, {"value": v.value, "tags": sorted([*v.tags, MANAGED_TAG])})
            for v in self.stack.variables
        ]

    def concurrency_limits(self) -> list[Obj]:
        return [
            Obj("concurrency_limit", c.name, {
                "limit": c.limit, "active": c.active,
                "slot_decay_per_second": float(c.slot_decay_per_second),
            })
            for c in self.stack.concurrency_limits
        ]

    def work_pools(self) -> list[Obj]:
        out: list[Obj] = []
        for i, pool in enumerate(self.stack.work_pools):
            template, origin = prefect_api.default_job_template(pool.type)
            overrides = dict(pool.base_job_template)
            if template is None:
                if overrides:
                    self.warnings.append(
                        f"work_pools[{i}].base_job_template: type `{pool.type}` is unknown "
                        "here (no integration installed); the overrides are passed through "
                        "unchecked")
            else:
                self._check_overrides(template, overrides, f"work_pools[{i}]")
                if origin == "bundled" and overrides:
                    self.warnings.append(
                        f"work_pools[{i}]: the `{pool.type}` integration is not installed "
                        "here; base_job_template was checked against the template bundled "
                        "with prefect")
                template = with_defaults(template, overrides)
            exact = origin == "installed"
            out.append(Obj("work_pool", pool.name, {
                "type": pool.type,
                "description": pool.description or None,
                "concurrency_limit": pool.concurrency_limit,
                "paused": pool.paused,
                "base_job_template": job_variable_defaults(template) if exact else overrides,
            }, loose=frozenset() if exact else frozenset({"base_job_template"}),
                extra={"template": template, "overrides": overrides}))
            out += [
                Obj("work_queue", f"{pool.name}/{q.name}", {
                    "priority": q.priority, "concurrency_limit": q.concurrency_limit,
                    "description": q.description or None, "paused": q.paused,
                }, loose=frozenset({"priority"}))
                for q in pool.queues
            ]
        declared = {p.name for p in self.stack.work_pools}
        for pool_name in dict.fromkeys(w.pool for w in self.stack.workers):
            if pool_name not in declared:  # the local worker would create it; make sure
                template, _ = prefect_api.default_job_template("process")
                out.append(Obj("work_pool", pool_name, {"type": "process"}, managed=False,
                               ensure_only=True, extra={"template": template, "overrides": {}}))
        return out

    def _check_overrides(self, template: dict[str, Any], overrides: dict[str, Any],
                         where: str) -> None:
        from prefect.utilities.schema_tools import validate

        variables = template.get("variables") or {}
        properties = variables.get("properties") or {}
        for name, value in overrides.items():
            if name not in properties:
                self.errors.append(
                    f"{where}.base_job_template.{name}: not a job variable of this pool type "
                    f"(it has: {', '.join(sorted(properties))})")
                continue
            schema = {"type": "object", "properties": {name: properties[name]},
                      "definitions": variables.get("definitions", {})}
            self.errors += [f"{where}.base_job_template.{name}: {e.message}"
                            for e in validate({name: value}, schema, ignore_required=True)]

    def deployments(self) -> list[Obj]:
        out: dict[str, Obj] = {}
        for i, dep in enumerate(self.stack.deployments):
            where = f"deployments[{i}]"
            try:
                obj = self._deployment(dep, where, self.workdir / f"source-{i}")
            except StackError as exc:
                self.errors.append(exc.message)
                continue
            if obj is None:
                continue
            if obj.name in out:
                self.errors.append(f"{where}: deployment `{obj.name}` is declared twice")
            out[obj.name] = obj
        return list(out.values())

    def _deployment(self, dep: DeploymentConfig, where: str, clone_dir: Path) -> Obj | None:
        root = source.checkout(dep.source, self.base_dir, clone_dir, self._token,
                               f"{where}.source")
        flow = signature.inspect_flow(root, dep.entrypoint, where)
        problems = signature.parameter_errors(flow, dep.parameters, dep.schedules, where)
        schedules = []
        for j, schedule in enumerate(dep.schedules):
            canonical = _schedule(schedule)
            reason = prefect_api.schedule_error(schedule_body(canonical)["schedule"])
            if reason:
                problems.append(f"{where}.schedules[{j}]: {reason}")
            schedules.append(canonical)
        if problems:
            self.errors += problems
            return None
        limit = dep.concurrency_limit
        return Obj("deployment", f"{flow.name}/{dep.name}", {
            "entrypoint": dep.entrypoint,
            "pull_steps": source.pull_steps(dep.source, self.base_dir),
            "work_pool": dep.work_pool,
            "work_queue": dep.work_queue,
            "schedules": schedules,
            "parameters": dep.parameters,
            "tags": sorted({*dep.tags, MANAGED_TAG}),
            "description": dep.description or None,
            "version": dep.version,
            "concurrency_limit": limit,
            "collision_strategy": dep.collision_strategy if limit else None,
            "job_variables": dep.job_variables,
            "enforce_parameter_schema": dep.enforce_parameter_schema,
            "paused": dep.paused,
            "parameter_openapi_schema": flow.schema,
        }, extra={"flow_name": flow.name, "name": dep.name})

    def _token(self, block: str) -> str | None:
        return self.secret_values.get(block) or self.server_secrets.get(block)


def _schedule(schedule: ScheduleConfig) -> dict[str, Any]:
    spec: dict[str, Any]
    if schedule.cron is not None:
        spec = {"cron": schedule.cron, "timezone": schedule.timezone, "day_or": schedule.day_or}
    elif schedule.rrule is not None:
        spec = {"rrule": schedule.rrule, "timezone": schedule.timezone}
    else:
        anchor = schedule.anchor_date
        if anchor is not None and anchor.tzinfo is None:
            anchor = _localize(anchor, schedule.timezone)
        spec = {"interval": schedule.interval, "timezone": schedule.timezone,
                "anchor_date": utc_iso(anchor) if anchor else None}
    return canonical_schedule(spec, schedule.active, schedule.parameters)


def _localize(moment: Any, timezone: str | None) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return moment.replace(tzinfo=ZoneInfo(timezone or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return moment  # reported by schedule_error


def with_defaults(template: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`template` with each overridden job variable's default replaced."""
    out = copy.deepcopy(template)
    properties = out.setdefault("variables", {}).setdefault("properties", {})
    for name, value in overrides.items():
        properties.setdefault(name, {})["default"] = value
    return out

