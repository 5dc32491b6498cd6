"""Server objects as plain, comparable data, on both sides of a plan.

`Obj` is one object (a work pool, a deployment, ...) reduced to the fields prefectstack
manages, in one canonical form; `from_server` builds the actual side from the JSON the API
returned, `prefectstack.deploy.desired` builds the desired side from the stack file. Pure.

Managed marker: deployments and variables carry the `prefectstack:managed` tag (visible and
filterable in the UI); pools, queues, global concurrency limits and secret blocks have no
tags, so their names are listed in one Prefect variable per kind,
`prefectstack_managed_<kind>` (see `REGISTRY_KINDS`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefectstack.stack.deployments import MANAGED_TAG

# Creation order; deletion runs in reverse.
KINDS = ("secret", "variable", "concurrency_limit", "work_pool", "work_queue", "deployment")
REGISTRY_KINDS = ("secret", "concurrency_limit", "work_pool", "work_queue")
REGISTRY_PREFIX = "prefectstack_managed_"
GIT_CLONE = "prefect.deployments.steps.git_clone"
SET_WORKDIR = "prefect.deployments.steps.set_working_directory"


def registry_variable(kind: str) -> str:
    return f"{REGISTRY_PREFIX}{kind}s"


@dataclass(frozen=True)
class Obj:
    """One server object. `fields` are compared; `extra` (ids, raw templates, a secret's
    value) is carried along for apply and never compared or printed."""

    kind: str
    name: str
    fields: dict[str, Any]
    managed: bool = True
    # Desired side only: create when missing, never update (a local worker's pool).
    ensure_only: bool = False
    # Fields where the desired side is not the whole truth: None = "leave as is", and a
    # mapping is compared only on its own keys.
    loose: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)


@dataclass(frozen=True)
class State:
    objects: dict[tuple[str, str], Obj]

    @classmethod
    def of(cls, objs: list[Obj]) -> State:
        return cls({o.key: o for o in objs})

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for k, o in sorted(self.objects.items()) if k[0] == kind]

    def get(self, kind: str, name: str) -> Obj | None:
        return self.objects.get((kind, name))


def secret_digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def utc_iso(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def canonical_schedule(schedule: dict[str, Any], active: bool, parameters: dict[str, Any]
                       ) -> dict[str, Any]:
    """One schedule as `{cron|interval|rrule, timezone, ..., active, parameters}`."""
    out: dict[str, Any]
    if schedule.get("cron") is not None:
        out = {"cron": schedule["cron"], "timezone": schedule.get("timezone") or "UTC",
               "day_or": schedule.get("day_or", True)}
    elif schedule.get("rrule") is not None:
        out = {"rrule": schedule["rrule"], "timezone": schedule.get("timezone") or "UTC"}
    else:
        anchor = schedule.get("anchor_date")
        out = {"interval": float(schedule["interval"]),
               "anchor_date": utc_iso(anchor) if anchor else None,
               "timezone": schedule.get("timezone")}
    return {**out, "active": active, "parameters": parameters}


def schedule_body(canonical: dict[str, Any]) -> dict[str, Any]:
    """The API's `{schedule, active, parameters}` for a canonical schedule."""
    inner = {k: v for k, v in canonical.items()
             if k not in ("active", "parameters") and v is not None}
    return {"schedule": inner, "active": canonical["active"],
            "parameters": canonical["parameters"]}


# -- the actual side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerData:
    """What the API returned, as JSON (see prefect_api.PrefectApi.read_*)."""

    work_pools: list[dict[str, Any]]
    work_queues: dict[str, list[dict[str, Any]]]
    deployments: list[dict[str, Any]]
    concurrency_limits: list[dict[str, Any]]
    variables: list[dict[str, Any]]
    secrets: list[dict[str, Any]]


def registry_of(data: ServerData) -> dict[str, set[str]]:
    values = {v["name"]: v.get("value") for v in data.variables}
    out: dict[str, set[str]] = {}
    for kind in REGISTRY_KINDS:
        value = values.get(registry_variable(kind))
        out[kind] = {str(n) for n in value} if isinstance(value, list) else set()
    return out


def from_server(data: ServerData) -> State:
    registry = registry_of(data)
    objs: list[Obj] = []
    for pool in data.work_pools:
        if pool["name"].lower().startswith("prefect"):
            continue
        objs.append(_pool(pool, registry))
        for queue in data.work_queues.get(pool["name"], []):
            name = f"{pool['name']}/{queue['name']}"
            objs.append(Obj("work_queue", name, {
                "priority": queue.get("priority"),
                "concurrency_limit": queue.get("concurrency_limit"),
                "description": queue.get("description") or None,
                "paused": bool(queue.get("is_paused")),
            }, managed=name in registry["work_queue"]))
    objs += [_deployment(d) for d in data.deployments]
    for limit in data.concurrency_limits:
        if limit["name"].startswith("deployment:"):  # Prefect's own, one per deployment limit
            continue
        objs.append(Obj("concurrency_limit", limit["name"], {
            "limit": limit["limit"], "active": limit.get("active", True),
            "slot_decay_per_second": float(limit.get("slot_decay_per_second") or 0.0),
        }, managed=limit["name"] in registry["concurrency_limit"]))
    for var in data.variables:
        if var["name"].startswith(REGISTRY_PREFIX):
            continue
        tags = sorted(var.get("tags") or [])
        objs.append(Obj("variable", var["name"], {"value": var.get("value"), "tags": tags},
                        managed=MANAGED_TAG in tags))
    for secret in data.secrets:
        value = secret.get("value")
        text = value if isinstance(value, str) else repr(value)
        objs.append(Obj("secret", secret["name"], {"value": secret_digest(text)},
                        managed=secret["name"] in registry["secret"],
                        extra={"id": secret["id"], "value": value}))
    return State.of(objs)


def job_variable_defaults(template: dict[str, Any] | None) -> dict[str, Any]:
    properties = ((template or {}).get("variables") or {}).get("properties") or {}
    return {name: prop.get("default") for name, prop in sorted(properties.items())}


def _pool(pool: dict[str, Any], registry: dict[str, set[str]]) -> Obj:
    template = pool.get("base_job_template") or {}
    return Obj("work_pool", pool["name"], {
        "type": pool.get("type"),
        "description": pool.get("description") or None,
        "concurrency_limit": pool.get("concurrency_limit"),
        "paused": bool(pool.get("is_paused")),
        "base_job_template": job_variable_defaults(template),
    }, managed=pool["name"] in registry["work_pool"], extra={"template": template})


def _deployment(raw: dict[str, Any]) -> Obj:
    limit = (raw.get("global_concurrency_limit") or {}).get("limit")
    options = raw.get("concurrency_options") or {}
    tags = sorted(raw.get("tags") or [])
    schedules = [
        canonical_schedule(s["schedule"], bool(s.get("active", True)), s.get("parameters") or {})
        for s in raw.get("schedules") or []
    ]
    return Obj("deployment", f"{raw['flow_name']}/{raw['name']}", {
        "entrypoint": raw.get("entrypoint"),
        "pull_steps": raw.get("pull_steps") or [],
        "work_pool": raw.get("work_pool_name"),
        "work_queue": raw.get("work_queue_name"),
        "schedules": schedules,
        "parameters": raw.get("parameters") or {},
        "tags": tags,
        "description": raw.get("description") or None,
        "version": raw.get("version"),
        "concurrency_limit": limit,
        "collision_strategy": options.get("collision_strategy") if limit else None,
        "job_variables": raw.get("job_variables") or {},
        "enforce_parameter_schema": bool(raw.get("enforce_parameter_schema")),
        "paused": bool(raw.get("paused")),
        "parameter_openapi_schema": raw.get("parameter_openapi_schema") or {},
    }, managed=MANAGED_TAG in tags, extra={"id": raw["id"]})
