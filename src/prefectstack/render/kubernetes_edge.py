"""The edge on Kubernetes: Caddy behind the Ingress, with the auth service beside it.

TLS terminates at the Ingress (the cluster's certificates, e.g. from cert-manager), so the
edge is stateless: a Deployment (`edge.ingress.edge_replicas` pods, 2 by default, with a
PodDisruptionBudget) serving the same routes as the local edge (`forward_auth` to `auth`,
load balancing over the `api` Service, `/flow-files/`) on one plain-HTTP port.
The Ingress and the stack's own clients (workers, pools, examples) both come in there, so
every request is checked the same way. Caddy trusts X-Forwarded-For only from the ranges in
`edge.ingress.trusted_proxies` (the Ingress controller's; by default none: flow code in a
worker pod must not be able to forge its address) and hands the auth service the client
address it worked out.

With `edge.ingress.tls: edge` there is no Ingress: Caddy serves its public HTTPS site itself
(an ACME certificate for a host name), keeps its certificates on a volume claim
(a StatefulSet) and is published by a LoadBalancer Service.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefectstack.render import containers
from prefectstack.render import kubernetes_pods as pods
from prefectstack.render.common import APP_DIR
from prefectstack.render.containers import Container, Edge
from prefectstack.render.kubernetes_ingress import Front
from prefectstack.render.kubernetes_pods import Context

CONFIG_MAP = "edge-caddyfile"


def caddyfile(edge: Edge, front: Front) -> str:
    # One upstream: the `api` Service spreads requests over every API pod.
    return edge.caddyfile(public=front.edge_tls,
                          upstreams=(f"api:{containers.CONTAINER_PORTS['api']}",),
                          trusted_proxies=front.trusted_proxies)


def config_map(ctx: Context, edge: Edge, front: Front) -> dict[str, Any]:
    # Spaces for tabs (indentation only): YAML dumps text with tabs as one quoted line.
    text = caddyfile(edge, front).replace("\t", "    ")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": ctx.meta(CONFIG_MAP),
            "data": {"Caddyfile": text}}


def objects(ctx: Context, c: Container, front: Front) -> list[dict[str, Any]]:
    """The edge's Deployment (StatefulSet when it keeps its own certificates) and Service."""
    stateless = replace(c, volumes={})  # TLS is the Ingress's: nothing to keep
    deployment = pods.workload(ctx, c if front.edge_tls else stateless)
    replicas = 1 if front.edge_tls else front.config.edge_replicas
    if not front.edge_tls:
        deployment["spec"]["replicas"] = replicas
        deployment["spec"]["strategy"] = {
            "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = deployment["spec"]["template"]["spec"]
    main = spec["containers"][0]
    # The image's caddy binary carries this file capability: exec fails without it in the
    # bounding set (allowPrivilegeEscalation: false still keeps it from taking effect).
    main["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    main["volumeMounts"] = [
        {"name": "caddyfile", "mountPath": containers.CONFIG_DIRS["edge"], "readOnly": True},
        *({"name": name, "mountPath": path} for name, path in c.volumes.items()),
        {"name": "flows", "mountPath": containers.FLOWS_MOUNT, "readOnly": True},
        *pods.scratch_mounts("caddy"),
    ]
    if front.edge_tls:
        edge = ctx.plan.edge
        assert edge is not None
        main["ports"] += [{"name": "https", "containerPort": edge.stack.edge.https_port},
                          {"name": "http", "containerPort": edge.stack.edge.http_port}]
        # Ports below 1024 without root (Caddy's file capability needs privilege escalation).
        spec["securityContext"]["sysctls"] = [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
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
        *([] if front.edge_tls else [{"name": name, "emptyDir": {}} for name in c.volumes]),
        {"name": "flows", "emptyDir": {}},
        *(pods.app_volumes(ctx)[2:] if ctx.app_files is not None else []),
    ])
    names = {v["name"] for v in spec["volumes"]}
    spec["volumes"] += [v for v in pods.scratch_volumes({"caddy"}) if v["name"] not in names]
    spec["affinity"] = pods.spread(ctx, "edge")
    out = [deployment, pods.service(ctx, stateless, ctx.selector(c), c.name),
           pods.budget(ctx, "edge", replicas)]
    if front.edge_tls:
        out.append(front.edge_service(ctx.selector(c)))
    return out


def _copy_flows(ctx: Context) -> dict[str, Any]:
    """The flows live in the app image (or its ConfigMap); `/flow-files/` serves a copy."""
    mounts = [{"name": "flows", "mountPath": containers.FLOWS_MOUNT}]
    if ctx.app_files is not None:
        mounts.append(pods.app_mounts()[2])
    return {
        "name": "copy-flows",
        "image": ctx.app_image,
        "command": ["cp", "-R", f"{APP_DIR}/flows/.", f"{containers.FLOWS_MOUNT}/"],
        "resources": pods.resources("wait"),
        "securityContext": pods.container_security(),
        "volumeMounts": mounts,
    }
