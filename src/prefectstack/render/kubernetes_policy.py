"""NetworkPolicies: each backend component (PostgreSQL, Redis, the API and auth; only the
first two without the edge) accepts connections from exactly the components that connect
to it, as the plan says: its address in their environment or command, a readiness wait for
it (an init container in their pod), or the edge's Caddyfile upstreams. The clients of the
edge (workers, whose flows run arbitrary code, pools, examples) reach none of them. Needs a
network plugin that enforces NetworkPolicy.
"""

from __future__ import annotations

from typing import Any

from prefectstack.render.containers import Container, Plan
from prefectstack.render.kubernetes_pods import Context

COMPONENT = "app.kubernetes.io/component"


def _reaches(c: Container, target: Container) -> bool:
    if target.port is None:
        return False
    text = " ".join([*c.env.values(), *c.command])
    return f"{target.name}:{target.port}" in text or (
        target.name in c.depends_on and target.kind == "daemon")


def flows(the_plan: Plan) -> dict[str, set[str]]:
    """Component -> the components that open connections to it."""
    out: dict[str, set[str]] = {}
    for target in the_plan.containers:
        for c in the_plan.containers:
            if c is not target and _reaches(c, target):
                out.setdefault(target.role, set()).add(c.role)
    if the_plan.edge is not None:  # the Caddyfile's upstreams, not in the edge's env
        out.setdefault("api", set()).add("edge")
        out.setdefault("auth", set()).add("edge")
    return out


def network_policies(ctx: Context, *, monitoring: bool = False, backup: bool = False,
                     backup_auth: bool = False) -> list[dict[str, Any]]:
    """`monitoring`: Prometheus scrapes the API pods and only Grafana queries Prometheus;
    nothing connects to Grafana (`kubectl port-forward` does not pass through the network).
    `backup`: the backup CronJob's pods dump PostgreSQL; `backup_auth`: they also fetch the
    auth store from the auth service."""
    guarded: list[str] = ["postgres", "redis", "api", "auth"] if ctx.plan.edge else [
        "postgres", "redis"]
    needed: dict[str, set[str]] = {k: set(v) for k, v in flows(ctx.plan).items()}
    roles: set[str] = {c.role for c in ctx.plan.containers}
    if monitoring:
        needed.setdefault("api", set()).add("prometheus")
        needed["prometheus"] = {"grafana"}
        guarded += ["prometheus", "grafana"]
        roles |= {"prometheus", "grafana"}
    if backup:
        needed.setdefault("postgres", set()).add("backup")
    if backup_auth:
        needed.setdefault("auth", set()).add("backup")
    return [_policy(ctx, role, sorted(needed.get(role, set())))
            for role in guarded if role in roles]


def _policy(ctx: Context, role: str, sources: list[str]) -> dict[str, Any]:
    ingress = [{"from": [{"podSelector": {"matchExpressions": [
        {"key": COMPONENT, "operator": "In", "values": sources}]}}]}] if sources else []
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": ctx.meta(f"{ctx.namespace}-{role}"),
        "spec": {
            "podSelector": {"matchLabels": {COMPONENT: role,
                                            "app.kubernetes.io/instance": ctx.namespace}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
