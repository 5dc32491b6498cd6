"""How a Kubernetes stack is reached from outside: the Ingress and its TLS, or the edge
terminating TLS itself, as `edge.ingress` in the stack file says.

- `tls: cert-manager` (default): the Ingress terminates TLS with a certificate cert-manager
  issues, from the ClusterIssuer `issuer` or from an ACME Issuer rendered here with
  `edge.acme_email`;
- `tls: secret`: the Ingress terminates TLS with the certificate in a Secret the user made;
- `tls: edge`: no Ingress; Caddy gets its own ACME certificate (kept on a volume claim)
  behind a LoadBalancer Service on 443/80.
Without the edge (`edge.enabled: false`) the API has no users or keys: no Ingress unless
`edge.ingress.allow_unauthenticated` says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefectstack import topology
from prefectstack.render.containers import Plan
from prefectstack.render.kubernetes_pods import Context
from prefectstack.stack.model import Stack
from prefectstack.topology import caddyfile
from prefectstack.urls import LOOPBACK_HOSTS

ACME_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
# Prefect's client sends logs in batches of up to 4 MB; ingress-nginx refuses bodies over
# 1 MiB by default (413).
BODY_SIZE = "16m"
ISSUER_FILE = "cert-manager.yaml"


def public_url(stack: Stack) -> str:
    """Where browsers and outside clients reach the stack on Kubernetes: the Ingress serves
    443 (TLS) for a host name and plain port 80 for a host-less rule (a loopback host)."""
    if stack.api.public_url:
        return stack.api.public_url.rstrip("/")
    edge = stack.edge
    if edge.enabled and edge.ingress.tls == "edge":
        return edge.public_url
    host = f"[{edge.host}]" if ":" in edge.host and "[" not in edge.host else edge.host
    scheme = "http" if edge.host in LOOPBACK_HOSTS else "https"
    return f"{scheme}://{host}"


def with_public_url(the_plan: Plan, stack: Stack) -> Plan:
    """The plan with the Kubernetes public URL where the topology put the local one
    (`PREFECT_SERVER_UI_API_URL`, the auth service's `PREFECTSTACK_PUBLIC_URL`)."""
    local, here = topology.public_url(stack), public_url(stack)
    if local == here:
        return the_plan
    swap = {local: here, f"{local}/api": f"{here}/api"}
    return replace(the_plan, containers=[
        replace(c, env={k: swap.get(v, v) for k, v in c.env.items()})
        for c in the_plan.containers])


class Front:
    """The objects in front of the stack, from `edge.ingress`."""

    def __init__(self, stack: Stack, ctx: Context) -> None:
        self.stack = stack
        self.ctx = ctx
        self.config = stack.edge.ingress
        self.site = caddyfile.site(public_url(stack))
        has_edge = ctx.plan.edge is not None
        self.edge_tls = has_edge and self.config.tls == "edge"
        self.exposed = not self.edge_tls and (has_edge or self.config.allow_unauthenticated)
        self.host = None if self.site.loopback else self.site.host
        self.tls = bool(self.exposed and self.host and self.site.https)
        if self.tls and self.config.tls == "cert-manager" and not (
                self.config.issuer or stack.edge.acme_email):
            raise ValueError(
                "edge.ingress.tls is `cert-manager`: set edge.ingress.issuer (a ClusterIssuer "
                "of yours) or edge.acme_email (for the ACME Issuer rendered here), or use "
                "`tls: secret` with a certificate of yours")

    @property
    def trusted_proxies(self) -> str | None:
        """The Caddyfile's `trusted_proxies` source: the Ingress controller's ranges only."""
        if self.edge_tls or not self.config.trusted_proxies:
            return None
        return "static " + " ".join(self.config.trusted_proxies)

    @property
    def secret_name(self) -> str:
        if self.config.tls == "secret" and self.config.secret_name:
            return self.config.secret_name
        return f"{self.ctx.namespace}-tls"

    def files(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        if self.tls and self.config.tls == "cert-manager" and not self.config.issuer:
            out[ISSUER_FILE] = [self._issuer()]
        out["ingress.yaml"] = [self._ingress()] if self.exposed else []
        return out

    def _issuer_name(self) -> str:
        return f"{self.ctx.namespace}-acme"

    def _issuer(self) -> dict[str, Any]:
        solver: dict[str, Any] = {"ingress": {}}
        if self.config.class_name:
            solver["ingress"]["ingressClassName"] = self.config.class_name
        return {
            "apiVersion": "cert-manager.io/v1", "kind": "Issuer",
            "metadata": self.ctx.meta(self._issuer_name()),
            "spec": {"acme": {
                "server": ACME_SERVER,
                "email": self.stack.edge.acme_email,
                "privateKeySecretRef": {"name": f"{self.ctx.namespace}-acme-account"},
                "solvers": [{"http01": solver}],
            }},
        }

    def _ingress(self) -> dict[str, Any]:
        """TLS terminates here; the edge behind it checks every request (the API directly
        only when the stack has no edge and says so)."""
        backend = "edge" if self.ctx.plan.edge is not None else "api"
        rule: dict[str, Any] = {"http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": backend, "port": {"name": "main"}}},
        }]}}
        if self.host:
            rule = {"host": self.host, **rule}
        spec: dict[str, Any] = {}
        if self.config.class_name:
            spec["ingressClassName"] = self.config.class_name
        if self.tls:
            spec["tls"] = [{"hosts": [self.host], "secretName": self.secret_name}]
        spec["rules"] = [rule]
        meta = self.ctx.meta(self.ctx.namespace)
        # Websockets (/api/events/in, /api/logs/out) stay open far longer than nginx's 60s.
        annotations = {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
                       "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
                       "nginx.ingress.kubernetes.io/proxy-body-size": BODY_SIZE}
        if self.tls and self.config.tls == "cert-manager":
            if self.config.issuer:
                annotations["cert-manager.io/cluster-issuer"] = self.config.issuer
            else:
                annotations["cert-manager.io/issuer"] = self._issuer_name()
        meta["annotations"] = annotations
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
                "spec": spec}

    def edge_service(self, selector: dict[str, str]) -> dict[str, Any]:
        """`tls: edge`: the edge's own HTTPS and HTTP ports, from outside the cluster
        (`Local`: Caddy sees the client's address, so no proxy to trust)."""
        edge = self.stack.edge
        return {
            "apiVersion": "v1", "kind": "Service", "metadata": self.ctx.meta("edge-public"),
            "spec": {
                "type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": selector,
                "ports": [
                    {"name": "https", "port": edge.https_port, "targetPort": "https"},
                    {"name": "http", "port": edge.http_port, "targetPort": "http"},
                ],
            },
        }
