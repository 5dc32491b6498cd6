"""The edge (Caddy) and the auth service behind it, as stack-file sections."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from prefectstack.stack.base import Port, StrictModel
from prefectstack.stack.values import check_host
from prefectstack.urls import LOOPBACK_HOSTS

# Old name, still imported by render/compose.py; new code imports prefectstack.urls.
LOCAL_HOSTS = LOOPBACK_HOSTS


# ACME CAs validate on these ports only (HTTP-01 on 80, TLS-ALPN-01 on 443).
ACME_HTTPS_PORT = 443
ACME_HTTP_PORT = 80


class IngressConfig(StrictModel):
    """How `render kubernetes` exposes the stack (ignored by the local and compose targets)."""

    class_name: str | None = Field(
        "nginx",
        description=(
            "The Ingress's `ingressClassName` (ingress-nginx's is `nginx`); null: the "
            "cluster's default class."
        ),
    )
    tls: Literal["cert-manager", "secret", "edge"] = Field(
        "cert-manager",
        description=(
            "Who terminates TLS for a host name: `cert-manager` (the Ingress, with a "
            "certificate cert-manager issues: from `issuer`, or from an ACME Issuer rendered "
            "with `edge.acme_email`), `secret` (the Ingress, with the certificate you put in "
            "the Secret `secret_name`) or `edge` (no Ingress: Caddy gets its own ACME "
            "certificate behind a LoadBalancer Service on ports 443/80)."
        ),
    )
    issuer: str | None = Field(
        None,
        description=(
            "A cert-manager ClusterIssuer to use (`tls: cert-manager`). Default: an ACME "
            "(Let's Encrypt) Issuer rendered in the namespace, which needs `edge.acme_email`."
        ),
    )
    secret_name: str | None = Field(
        None,
        description=(
            "The TLS Secret of the Ingress (`tls: secret`; default `<name>-tls`). You create "
            "it, e.g. `kubectl create secret tls`."
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Address ranges (CIDR) of the Ingress controller, whose X-Forwarded-For the edge "
            "believes (the sign-in throttle and the audit log then see the real client). "
            "Never include the range of the stack's own pods: flow code on the workers "
            "could forge its address. Default: none (the edge sees the controller's address)."
        ),
    )
    allow_unauthenticated: bool = Field(
        False,
        description=(
            "With `edge.enabled: false`: render an Ingress straight to the API, which has "
            "no users or keys (anyone who reaches it can run code on the workers). Off: no "
            "Ingress; reach the API with `kubectl port-forward`."
        ),
    )
    edge_replicas: int = Field(
        2, ge=1, le=20,
        description=(
            "Edge pods (Caddy) behind the Ingress, with a PodDisruptionBudget keeping one "
            "up; they keep no state. With `tls: edge` there is one (its certificates live "
            "on its volume claim)."
        ),
    )
    auth_replicas: int = Field(
        2, ge=1, le=20,
        description=(
            "Auth service pods. With 2 or more they share users, API keys, sessions, the "
            "sign-in throttle and the audit log in PostgreSQL (the `prefectstack_auth` schema "
            "of the stack's database, so the database's backup covers them), spread over "
            "nodes with a PodDisruptionBudget keeping one up; with 1, a SQLite store on the "
            "pod's volume claim."
        ),
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _ranges(cls, ranges: list[str]) -> list[str]:
        for text in ranges:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"`{text}` is not an address range, e.g. 10.0.0.0/24") from None
        return ranges


class EdgeConfig(StrictModel):
    """Caddy: the only listener reachable from other machines."""

    enabled: bool = Field(
        True,
        description=(
            "Put Caddy (HTTPS, auth, load balancing) in front of the API. Off: the API is "
            "reachable only on loopback, without users or keys."
        ),
    )
    host: str = Field(
        "localhost",
        description=(
            "Host name or IP address clients use. `localhost` or an IP address gets a "
            "certificate from the stack's own CA (`tls internal`); a domain name gets an "
            "ACME (Let's Encrypt) certificate, which needs ports 443 and 80."
        ),
    )
    https_port: Port = Field(
        4200, description="HTTPS port of the edge (default 443 when `host` is a domain name)."
    )
    http_port: Port = Field(
        4280,
        description=(
            "Plain-HTTP port; it only redirects to HTTPS (default 80 when `host` is a domain "
            "name)."
        ),
    )
    acme_email: str | None = Field(
        None, description="Contact address for ACME certificates (domain names only)."
    )
    bind: list[str] | None = Field(
        None,
        description=(
            "Addresses the edge listens on (on this host). Default: loopback only "
            "(`127.0.0.1`) when `host` is localhost or a loopback address, else every "
            "interface. Container targets always listen inside their own network."
        ),
    )
    flows_dir: str | None = Field(
        None,
        description=(
            "Directory served read-only at `/flow-files/` (signed-in users only). Default: "
            "the bundled flow library."
        ),
    )
    ingress: IngressConfig = Field(
        default_factory=IngressConfig,  # type: ignore[arg-type]
        description="Kubernetes only: the Ingress, its TLS and the proxies the edge trusts.",
    )

    @model_validator(mode="before")
    @classmethod
    def _acme_ports_by_default(cls, data: Any) -> Any:
        """A domain name gets an ACME certificate, which the CA validates on 443 and 80."""
        if isinstance(data, dict) and isinstance(data.get("host"), str):
            try:
                acme = not _internal_tls(check_host(data["host"]))
            except ValueError:
                return data  # the host's own error is reported
            if acme:
                data = {"https_port": ACME_HTTPS_PORT, "http_port": ACME_HTTP_PORT, **data}
        return data

    @model_validator(mode="after")
    def _acme_on_its_ports(self) -> EdgeConfig:
        if self.internal_tls:
            return self
        if (self.https_port, self.http_port) != (ACME_HTTPS_PORT, ACME_HTTP_PORT):
            raise ValueError(
                f"`{self.host}` gets an ACME (Let's Encrypt) certificate, and the CA checks "
                f"it on ports 443 and 80 only: https_port {self.https_port} and http_port "
                f"{self.http_port} could never get one; use 443 and 80 (the default for a "
                "domain name), or an IP address or localhost for the stack's own CA"
            )
        return self

    @field_validator("host")
    @classmethod
    def _plain_host(cls, host: str) -> str:
        return check_host(host)

    @field_validator("bind")
    @classmethod
    def _bind_addresses(cls, bind: list[str] | None) -> list[str] | None:
        for address in bind or []:
            try:
                check_host(address)
            except ValueError as exc:
                named = address in str(exc)  # most messages quote the address already
                raise ValueError(str(exc) if named else f"`{address}`: {exc}") from None
        return bind

    @field_validator("acme_email")
    @classmethod
    def _email(cls, email: str | None) -> str | None:
        if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise ValueError(f"`{email}` is not an email address, e.g. ops@example.com")
        return email

    @property
    def listen_addresses(self) -> list[str]:
        """Where the local edge binds; [] means every interface."""
        if self.bind is not None:
            return list(self.bind)
        return ["127.0.0.1"] if self.host in LOOPBACK_HOSTS else []

    @property
    def internal_tls(self) -> bool:
        return _internal_tls(self.host)

    @property
    def public_url(self) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        host = f"[{self.host}]" if ":" in self.host and "[" not in self.host else self.host
        return f"https://{host}{port}"


def _internal_tls(host: str) -> bool:
    """Loopback names and IP addresses get the stack's own CA; domain names ACME."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class AuthConfig(StrictModel):
    """The auth service Caddy asks before every request (users, roles, API keys, audit)."""

    port: Port = Field(14180, description="Loopback port of the auth service.")
    session_hours: float = Field(
        12, gt=0, le=720, description="How long a browser sign-in lasts, in hours."
    )
