"""What a service is, how it is probed and restarted, and the order services start in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefectstack.topology import placeholders

LOOPBACK = "127.0.0.1"

ProbeKind = Literal["pg", "redis", "http", "tcp", "alive", "exit"]
Role = Literal["postgres", "redis", "db-init", "migrate", "api", "services", "auth", "edge",
               "pools", "worker", "examples", "reconcile", "backup"]


@dataclass(frozen=True)
class Probe:
    """How the supervisor knows a service is ready (and still healthy)."""

    kind: ProbeKind
    host: str = LOOPBACK
    port: int = 0
    path: str = ""

    def describe(self) -> str:
        if self.kind == "http":
            return f"GET http://{self.host}:{self.port}{self.path}"
        if self.kind in ("pg", "redis", "tcp"):
            return f"{self.kind} ping {self.host}:{self.port}"
        return {"alive": "process stays up", "exit": "exits 0"}[self.kind]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart on unexpected exit with exponential backoff; give up after `max_restarts`
    failures inside `window_seconds`. A ready daemon whose probe fails for
    `liveness_seconds` (0: never) is killed and restarted, like a Kubernetes liveness probe."""

    enabled: bool = True
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    max_restarts: int = 5
    window_seconds: float = 120.0
    liveness_seconds: float = 30.0


@dataclass(frozen=True)
class Service:
    name: str
    role: Role
    kind: Literal["daemon", "oneshot"]
    argv: tuple[str, ...]
    """argv[0] is a logical program (`postgres`, `redis-server`, `prefect`, `python`,
    `caddy`) that each backend resolves to a binary or an image"""
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    """the server's own configuration, for `postgres` (`-c` settings) and `redis` (config
    directives); each backend adds where the server listens and keeps its data"""
    public_edge_env: dict[str, str] = field(default_factory=dict)
    """more env for a client that reaches the edge at its public address (the CA to trust);
    a backend that gives clients a private address to the edge leaves it out"""
    ports: tuple[int, ...] = ()
    volumes: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    probe: Probe = Probe("alive")
    restart: RestartPolicy = RestartPolicy()
    stop_signal: Literal["SIGTERM", "SIGINT"] = "SIGTERM"
    run_as: str | None = None
    """runs as this OS user when the supervisor is root (PostgreSQL refuses root)"""
    prepare: str | None = None
    """backend-specific preparation before the first start (`pgdata`: initdb)"""
    files: dict[str, str] = field(default_factory=dict)
    """files (path under the data dir -> content, placeholders allowed) written 0600 before
    the start"""
    ready_timeout_seconds: float = 120.0
    essential: bool = True
    """False for a service the rest of the stack does not need (a worker): when it crash-
    loops the supervisor gives up on it alone and keeps everything else running"""
    inherit_env: bool = False
    """True for a job that loads the stack file as `up` did (`${VAR}`s included): it gets the
    supervisor's environment (less Prefect's settings) instead of a clean one"""
    local_only: bool = False
    """True for a service that only makes sense beside the local backend's processes (the
    run reconciler looks at this host's processes): the container renderers leave it out"""

    @property
    def texts(self) -> tuple[str, ...]:
        """Every text that may hold placeholders."""
        return (*self.argv, *self.env.values(), *self.settings.values(),
                *self.public_edge_env.values(), *self.files.values())


def order(services: list[Service]) -> list[Service]:
    """Topological order (stable); raises ValueError on unknown or cyclic dependencies."""
    by_name = {s.name: s for s in services}
    done: dict[str, Service] = {}
    visiting: set[str] = set()

    def visit(svc: Service) -> None:
        if svc.name in done:
            return
        if svc.name in visiting:
            raise ValueError(f"dependency cycle through {svc.name}")
        visiting.add(svc.name)
        for dep in svc.depends_on:
            if dep not in by_name:
                raise ValueError(f"{svc.name} depends on unknown service {dep}")
            visit(by_name[dep])
        visiting.discard(svc.name)
        done[svc.name] = svc

    for svc in services:
        visit(svc)
    return list(done.values())


def secret_names(services: list[Service]) -> set[str]:
    """Every `${secret.NAME}` the services refer to."""
    return placeholders.secret_names(text for svc in services for text in svc.texts)
