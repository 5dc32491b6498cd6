"""Read the server, build the desired state, plan, and carry the plan out through
prefect_api.py. Applying twice is a no-op: the second plan is empty.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefectstack import console, prefect_api, topology
from prefectstack.deploy import desired as desired_mod
from prefectstack.deploy.plan import Change, Plan, make_plan
from prefectstack.deploy.state import (
    REGISTRY_KINDS,
    Obj,
    ServerData,
    State,
    from_server,
    registry_of,
    registry_variable,
    schedule_body,
)
from prefectstack.errors import StackError
from prefectstack.prefect_api import PrefectApi, Target
from prefectstack.runtime import handover, secret_store
from prefectstack.stack.deployments import MANAGED_TAG
from prefectstack.stack.loader import LoadedStack
from prefectstack.topology import stack_secrets
from prefectstack.urls import api_url


def target_for(loaded: LoadedStack, server: str | None = None, key: str | None = None,
               ca_file: str | None = None) -> Target:
    """`--server` (a server root or its /api URL), else this stack itself: through its edge
    with the stack's own `developer` key and CA (so the change is authenticated and audited
    like anyone else's), or its loopback API process when the edge is off."""
    auth = os.environ.get("PREFECTSTACK_API_AUTH_STRING") or None
    if server:
        if not server.startswith(("http://", "https://")):
            raise StackError(f"--server {server}: expected an http:// or https:// URL",
                             exit_code=2)
        return Target(api_url(server), api_key=key or None, auth_string=auth,
                      ca_file=ca_file or None)
    stack = loaded.stack
    if not stack.edge.enabled:
        # The API process itself, with its server auth string (the stack's own secret).
        url = f"http://{topology.LOOPBACK}:{stack.api.port}/api"
        password = secret_store.load(loaded.state_dir).get(stack_secrets.API_PASSWORD)
        if not auth and password:
            auth = f"{stack_secrets.API_USER}:{password}"
        return Target(url, api_key=key or None, auth_string=auth, ca_file=ca_file or None)
    own_key = key or secret_store.load(loaded.state_dir).get(stack_secrets.DEPLOYER_API_KEY)
    if not own_key:
        raise StackError(
            f"no key for this stack's edge in {loaded.state_dir}",
            hint="run `prefectstack up` once, or pass --key",
        )
    ca = ca_file
    if ca is None and stack.edge.internal_tls:
        ca = str(handover.export_ca(loaded.state_dir))
    return Target(f"{topology.public_url(stack)}/api", api_key=own_key, auth_string=auth,
                  ca_file=ca)


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    applied: bool


def run(loaded: LoadedStack, target: Target, *, prune: bool,
        decide: Callable[[Plan], bool]) -> Outcome:
    """Plan against `target`; apply when `decide(plan)` says so."""
    return asyncio.run(_run(loaded, target, prune, decide))


async def _run(loaded: LoadedStack, target: Target, prune: bool,
               decide: Callable[[Plan], bool]) -> Outcome:
    async with prefect_api.connect(target) as api:
        data = await read_server(api)
        actual = from_server(data)
        server_secrets = {o.name: o.extra["value"] for o in actual.of_kind("secret")
                          if isinstance(o.extra.get("value"), str)}
        with tempfile.TemporaryDirectory(prefix="prefectstack-deploy-") as workdir:
            want = desired_mod.build(loaded, env=os.environ, server_secrets=server_secrets,
                                     workdir=Path(workdir))
        plan = make_plan(want.state, actual, target=target.api_url, prune=prune,
                         warnings=want.warnings)
        if not decide(plan):
            return Outcome(plan, False)
        await _execute(api, plan, want.state, actual)
        await _update_registry(api, plan, want.state, actual, registry_of(data))
        return Outcome(plan, True)


async def read_server(api: PrefectApi) -> ServerData:
    pools = await api.read_work_pools()
    return ServerData(
        work_pools=pools,
        work_queues={p["name"]: await api.read_work_queues(p["name"]) for p in pools
                     if not p["name"].lower().startswith("prefect")},
        deployments=await api.read_deployments(),
        concurrency_limits=await api.read_concurrency_limits(),
        variables=await api.read_variables(),
        secrets=await api.read_secrets(),
    )


async def _execute(api: PrefectApi, plan: Plan, want: State, actual: State) -> None:
    for change in plan.changes:
        have = actual.get(change.kind, change.name)
        if change.action == "delete":
            assert have is not None
            await _delete(api, have)
            continue
        obj = want.get(change.kind, change.name)
        assert obj is not None
        if change.action == "update" and not change.fields:
            continue  # adopted, nothing differs: the registry update marks it managed
        await _write(api, change, obj, have)


async def _write(api: PrefectApi, change: Change, obj: Obj, have: Obj | None) -> None:
    f = obj.fields
    create = change.action == "create"
    if obj.kind == "secret":
        if have is None:
            await api.create_secret(obj.name, obj.extra["value"])
        else:
            await api.update_secret(have.extra["id"], obj.name, obj.extra["value"])
    elif obj.kind == "variable":
        body = {"value": f["value"], "tags": f["tags"]}
        await (api.create_variable({"name": obj.name, **body}) if create
               else api.update_variable(obj.name, body))
    elif obj.kind == "concurrency_limit":
        body = {k: f[k] for k in ("limit", "active", "slot_decay_per_second")}
        await (api.create_concurrency_limit({"name": obj.name, **body}) if create
               else api.update_concurrency_limit(obj.name, body))
    elif obj.kind == "work_pool":
        await _write_pool(api, change, obj, have)
    elif obj.kind == "work_queue":
        pool, _, name = obj.name.partition("/")
        # A queue's description column is NOT NULL: "" is how "none" is stored.
        body = {"description": f["description"] or "", "is_paused": f["paused"],
                "concurrency_limit": f["concurrency_limit"]}
        if f["priority"] is not None:
            body["priority"] = f["priority"]
        await (api.create_work_queue(pool, {"name": name, **body}) if create
               else api.update_work_queue(pool, name, body))
    else:
        await api.upsert_deployment(obj.extra["flow_name"], _deployment_body(obj))


async def _write_pool(api: PrefectApi, change: Change, obj: Obj, have: Obj | None) -> None:
    f = obj.fields
    body: dict[str, Any] = {k: f[k] for k in ("description", "concurrency_limit") if k in f}
    if "paused" in f:
        body["is_paused"] = f["paused"]
    template = obj.extra.get("template")
    if have is None:
        await api.create_work_pool({"name": obj.name, "type": f["type"], **body,
                                    "base_job_template": template or {}})
        if template is None and obj.extra.get("overrides"):
            console.warn(f"work pool {obj.name}: created without its base_job_template "
                         "overrides (unknown type); apply again once a worker has set the "
                         "template")
        return
    if any(c.field == "base_job_template" for c in change.fields):
        if "base_job_template" not in obj.loose:
            body["base_job_template"] = template
        elif have.extra.get("template"):
            body["base_job_template"] = desired_mod.with_defaults(
                have.extra["template"], obj.extra["overrides"])
    await api.update_work_pool(obj.name, body)


def _deployment_body(obj: Obj) -> dict[str, Any]:
    f = obj.fields
    limit = f["concurrency_limit"]
    return {
        "name": obj.extra["name"],
        "entrypoint": f["entrypoint"],
        "pull_steps": f["pull_steps"],
        "work_pool_name": f["work_pool"],
        "work_queue_name": f["work_queue"],
        "schedules": [schedule_body(s) for s in f["schedules"]],
        "parameters": f["parameters"],
        "tags": f["tags"],
        "description": f["description"],
        "version": f["version"],
        "concurrency_limit": limit,
        "concurrency_options": {"collision_strategy": f["collision_strategy"]} if limit else None,
        "job_variables": f["job_variables"],
        "enforce_parameter_schema": f["enforce_parameter_schema"],
        "paused": f["paused"],
        "parameter_openapi_schema": f["parameter_openapi_schema"],
    }


async def _delete(api: PrefectApi, have: Obj) -> None:
    if have.kind == "deployment":
        await api.delete_deployment(have.extra["id"], have.name)
    elif have.kind == "work_queue":
        pool, _, name = have.name.partition("/")
        await api.delete_work_queue(pool, name)
    elif have.kind == "work_pool":
        await api.delete_work_pool(have.name)
    elif have.kind == "concurrency_limit":
        await api.delete_concurrency_limit(have.name)
    elif have.kind == "variable":
        await api.delete_variable(have.name)
    else:
        await api.delete_secret(have.extra["id"], have.name)


async def _update_registry(api: PrefectApi, plan: Plan, want: State, actual: State,
                           registry: dict[str, set[str]]) -> None:
    """Record the managed pools, queues, limits and secrets (they have no tags)."""
    deleted = {(c.kind, c.name) for c in plan.changes if c.action == "delete"}
    created = {(c.kind, c.name) for c in plan.changes if c.action == "create"}
    gone_pools = {name for kind, name in deleted if kind == "work_pool"}
    existing_variables: set[str] | None = None
    for kind in REGISTRY_KINDS:
        exists = {o.name for o in actual.of_kind(kind)} | {n for k, n in created if k == kind}
        exists -= {n for k, n in deleted if k == kind}
        if kind == "work_queue":  # deleting a pool deletes its queues
            exists = {n for n in exists if n.partition("/")[0] not in gone_pools}
        mine = {o.name for o in want.of_kind(kind) if o.managed}
        new = (registry[kind] | mine) & exists
        if new == registry[kind]:
            continue
        if existing_variables is None:
            existing_variables = {v["name"] for v in await api.read_variables()}
        name = registry_variable(kind)
        body = {"value": sorted(new), "tags": [MANAGED_TAG]}
        if name in existing_variables:
            await api.update_variable(name, body)
        else:
            await api.create_variable({"name": name, **body})


# -- `prefectstack up` ---------------------------------------------------------------------


def apply_on_up(loaded: LoadedStack, *, background: bool) -> None:
    """Apply the stack file's deployments once the platform is ready (never prunes), to
    the stack's own API on loopback.

    `background` (the foreground supervisor calls this from its loop): on a thread, so
    supervision goes on meanwhile, and failures are reported, not raised.
    """
    if not desired_mod.has_content(loaded.stack):
        return
    if not background:
        _apply(loaded)
        return
    threading.Thread(target=_apply_reporting, args=(loaded,), daemon=True,
                     name="prefectstack-deploy").start()


def _apply(loaded: LoadedStack) -> None:
    try:
        outcome = run(loaded, target_for(loaded), prune=False, decide=lambda _plan: True)
    except StackError as exc:
        raise StackError(
            f"the platform is up, but applying the stack file's deployments failed: "
            f"{exc.message}",
            hint="fix the stack file, then run: prefectstack deploy apply",
        ) from None
    n = outcome.plan.counts()
    console.event(f"deployments applied: {n['create']} created, {n['update']} updated"
                  if outcome.plan.has_changes else "deployments: no changes")
    for warning in outcome.plan.warnings:
        console.warn(warning)
    if outcome.plan.orphans:
        console.warn("no longer in the stack file (prefectstack deploy apply --prune): "
                     + ", ".join(outcome.plan.orphans))


def _apply_reporting(loaded: LoadedStack) -> None:
    try:
        _apply(loaded)
    except StackError as exc:
        console.error(exc)
