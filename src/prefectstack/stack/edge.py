"""The edge (Caddy) and the auth service behind it, as stack-file sections."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator

from prefectstack.stack.base import Port, StrictModel
from prefectstack.stack.values import check_host
from prefectstack.urls import LOOPBACK_HOSTS

# Old name, still imported by render/compose.py; new code imports prefectstack.urls.
LOCAL_HOSTS = LOOPBACK_HOSTS


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
            "ACME (Let's Encrypt) certificate."
        ),
    )
    https_port: Port = Field(4200, description="HTTPS port of the edge.")
    http_port: Port = Field(4280, description="Plain-HTTP port; it only redirects to HTTPS.")
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
        if self.host in LOOPBACK_HOSTS:
            return True
        try:
            ipaddress.ip_address(self.host.strip("[]"))
            return True
        except ValueError:
            return False

    @property
    def public_url(self) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        host = f"[{self.host}]" if ":" in self.host and "[" not in self.host else self.host
        return f"https://{host}{port}"


class AuthConfig(StrictModel):
    """The auth service Caddy asks before every request (users, roles, API keys, audit)."""

    port: Port = Field(14180, description="Loopback port of the auth service.")
    session_hours: float = Field(
        12, gt=0, le=720, description="How long a browser sign-in lasts, in hours."
    )
