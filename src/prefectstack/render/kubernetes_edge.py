"""The edge on Kubernetes: Caddy behind the Ingress, with the auth service beside it.

TLS terminates at the Ingress (the cluster's certificates, e.g. from cert-manager), so the
edge is stateless: a Deployment serving the same routes as the local edge (`forward_auth`
to `auth`, load balancing over the `api` Service, `/flow-files/`) on one plain-HTTP port.
The Ingress and the stack's own clients (workers, pools, examples) both come in there, so
every request is checked the same way. Caddy trusts X-Forwarded-For from private addresses
(the Ingress controller) and hands the auth service the real client address.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefectstack.render import containers
from prefectstack.render import kubernetes_pods as pods
from prefectstack.render.common import APP_DIR
from prefectstack.render.containers import Container, Edge
from prefectstack.render.kubernetes_pods import Context

CONFIG_MAP = "edge-caddyfile"
TRUSTED_PROXIES = "static private_ranges"


def caddyfile(edge: Edge) -> str:
    # One upstream: the `api` Service spreads requests over every API pod.
    return edge.caddyfile(public=False, upstreams=(f"api:{containers.CONTAINER_PORTS['api']}",),
                          trusted_proxies=TRUSTED_PROXIES)


def config_map(ctx: Context, edge: Edge) -> dict[str, Any]:
    # Spaces for tabs (indentation only): YAML dumps text with tabs as one quoted line.
    text = caddyfile(edge).replace("\t", "    ")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": ctx.meta(CONFIG_MAP),
            "data": {"Caddyfile": text}}


def objects(ctx: Context, c: Container) -> list[dict[str, Any]]:
    """The edge's Deployment and Service."""
    stateless = replace(c, volumes={})  # TLS is the Ingress's: nothing to keep
    deployment = pods.workload(ctx, stateless)
    deployment["spec"]["strategy"] = {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = deployment["spec"]["template"]["spec"]
    main = spec["containers"][0]
    # The image's caddy binary carries this file capability: exec fails without it in the
    # bounding set (allowPrivilegeEscalation: false still keeps it from taking effect).
    main["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    main["volumeMounts"] = [
        {"name": "caddyfile", "mountPath": containers.CONFIG_DIRS["edge"], "readOnly": True},
        *({"name": name, "mountPath": path} for name, path in c.volumes.items()),
        {"name": "flows", "mountPath": containers.FLOWS_MOUNT, "readOnly": True},
    ]
    # Probing through to the API says whether the edge can serve; whether Caddy itself is
    # alive must not depend on the API (a restart would not help it).
    alive = {"tcpSocket": {"port": "main"}, "periodSeconds": 10, "timeoutSeconds": 5,
             "failureThreshold": 6}
    main["startupProbe"] = {"tcpSocket": {"port": "main"}, "periodSeconds": 2,
                            "failureThreshold": 30}
    main["livenessProbe"] = alive
    spec.setdefault("initContainers", []).append(_copy_flows(ctx))
    spec.setdefault("volumes", []).extend([
        {"name": "caddyfile", "configMap": {"name": CONFIG_MAP}},
        *({"name": name, "emptyDir": {}} for name in c.volumes),
        {"name": "flows", "emptyDir": {}},
    ])
    return [deployment, pods.service(ctx, stateless, ctx.selector(c), c.name)]


def _copy_flows(ctx: Context) -> dict[str, Any]:
    """The flows live in the app image; `/flow-files/` serves a copy of them."""
    return {
        "name": "copy-flows",
        "image": ctx.app_image,
        "command": ["cp", "-R", f"{APP_DIR}/flows/.", f"{containers.FLOWS_MOUNT}/"],
        "resources": pods.resources("wait"),
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": "flows", "mountPath": containers.FLOWS_MOUNT}],
    }


def network_policy(ctx: Context, edge: Edge) -> dict[str, Any]:
    """What compose does with its two networks: the clients of the edge (workers, whose
    flows run arbitrary code, pools, examples) cannot reach the database, Redis, the API or
    auth directly, only through the edge. Needs a CNI that enforces NetworkPolicy."""
    key = "app.kubernetes.io/component"

    def components(containers: list[Container]) -> list[str]:
        return sorted({ctx.labels(c)[key] for c in containers})

    containers = ctx.plan.containers
    clients = [c for c in containers
               if c.env.get("PREFECT_API_URL", "").startswith(edge.internal_url + "/")]
    backend = [c for c in containers if c.role in ("postgres", "redis", "api", "auth")]
    allowed = [c for c in containers if c not in clients]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": ctx.meta(f"{ctx.namespace}-backend"),
        "spec": {
            "podSelector": {"matchExpressions": [
                {"key": key, "operator": "In", "values": components(backend)}]},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": key, "operator": "In", "values": components(allowed)}]}}]}],
        },
    }
