"""The topology, translated once for container targets (compose and Kubernetes).

Every container comes from topology services, with the same program, arguments and
environment; only what depends on the target changes:
- addresses: `127.0.0.1:<port>` becomes `<container>:<port inside the container>`, and
  processes bind `0.0.0.0` in their own network namespace;
- `${dir.NAME}`: stateful data (pgdata, redis) lives in volumes, Prefect homes in the container;
- the logical program picks the image (`postgres`, `redis-server`, else our Prefect image);
- API processes 2..N share one `api-replicas` container spec (they differ only in address);
- credentials written literally in the stack file (an external database or Redis URL) become
  secrets too, so no rendered YAML carries them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Literal

from prefectstack import topology
from prefectstack.render.common import HOME_DIR
from prefectstack.stack.model import Stack
from prefectstack.topology import LOOPBACK, Probe, Service

Image = Literal["prefect", "postgres", "redis"]

CONTAINER_PORTS = {"postgres": 5432, "redis": 6379, "api": 4200, "worker": 8080}
VOLUME_PATHS = {"pgdata": "/var/lib/postgresql/data", "redis": "/data"}
# Values browsers use: an address there is public, never rewritten to an internal one.
PUBLIC_KEYS = frozenset({"PREFECT_SERVER_UI_API_URL"})
# Settings of a local server that a container image owns (its own data dir and listeners).
_POSTGRES_LOCAL_ONLY = ("listen_addresses", "port", "unix_socket_directories")
_REDIS_LOCAL_ONLY = ("bind", "port", "dir")
_LOCAL_ADDRESS = re.compile(re.escape(LOOPBACK) + r":(\d+)(?!\d)")
_LITERAL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@:]*:(?!\$\{secret\.)[^@]+@")


@dataclass(frozen=True)
class Container:
    name: str
    sources: tuple[str, ...]
    """the topology services this container runs"""
    kind: Literal["daemon", "oneshot"]
    image: Image
    command: tuple[str, ...]
    env: dict[str, str]
    port: int | None
    probe: Probe
    depends_on: tuple[str, ...]
    volumes: dict[str, str] = field(default_factory=dict)
    """named volume -> mount path"""
    replicas: int = 1
    role: str = "other"
    """postgres, redis, api, worker or other"""
    stop_signal: str = "SIGTERM"

    @property
    def scalable(self) -> bool:
        """API processes: stateless, any number of them run behind the edge."""
        return self.role == "api"


@dataclass(frozen=True)
class Plan:
    containers: list[Container]
    external: dict[str, str]
    """secret name -> value for credentials that came literally from the stack file"""

    def get(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)


def role(svc: Service) -> str:
    argv = svc.argv
    if argv[0] in ("postgres", "redis-server"):
        return "postgres" if argv[0] == "postgres" else "redis"
    if argv[:3] == ("prefect", "server", "start"):
        return "api"
    if argv[:2] == ("prefect", "worker"):
        return "worker"
    return "other"


def container_names(services: list[Service]) -> dict[str, str]:
    """Topology name -> container name: API processes 2..N fold into `api-replicas`."""
    names: dict[str, str] = {}
    apis = 0
    for svc in services:
        if role(svc) == "api":
            apis += 1
            names[svc.name] = "api" if apis == 1 else "api-replicas"
        else:
            names[svc.name] = svc.name
    return names


def build(stack: Stack) -> Plan:
    services = topology.build(stack)
    names = container_names(services)
    addresses = {
        port: f"{names[svc.name]}:{_container_port(svc)}" for svc in services for port in svc.ports
    }
    external: dict[str, str] = {}
    merged: dict[str, Container] = {}
    for svc in services:
        container = _container(svc, names, addresses, external)
        if container.name in merged:
            first = merged[container.name]
            if replace(container, sources=first.sources, replicas=first.replicas) != first:
                raise ValueError(f"{svc.name} differs from {first.sources[0]} beyond its address")
            container = replace(first, sources=(*first.sources, svc.name),
                                replicas=first.replicas + 1)
        merged[container.name] = container
    return Plan(list(merged.values()), external)


def _container_port(svc: Service) -> int | None:
    """Where the service listens inside its container: the image's usual port."""
    return CONTAINER_PORTS.get(role(svc), svc.ports[0]) if svc.ports else None


def _container(svc: Service, names: dict[str, str], addresses: dict[int, str],
               external: dict[str, str]) -> Container:
    kind = role(svc)
    port = _container_port(svc)
    own = {str(p): str(port) for p in svc.ports}

    def remote(match: re.Match[str]) -> str:
        return addresses.get(int(match.group(1)), match.group(0))

    def translate(value: str, key: str = "") -> str:
        if value == LOOPBACK:
            return "0.0.0.0"  # binds inside the container's own network namespace
        if value in own:
            return own[value]
        if key not in PUBLIC_KEYS:
            value = _LOCAL_ADDRESS.sub(remote, value)
        return re.sub(r"\$\{dir\.([A-Za-z0-9_-]+)\}",
                      lambda m: VOLUME_PATHS.get(m.group(1), HOME_DIR), value)

    env = {key: translate(value, key) for key, value in svc.env.items()}
    for key, value in env.items():
        if _LITERAL_PASSWORD.match(value):
            name = key.lower()
            if external.setdefault(name, value) != value:
                raise ValueError(f"{key} has two different literal values")
            env[key] = topology.secret(name)
    return Container(
        name=names[svc.name],
        sources=(svc.name,),
        kind=svc.kind,
        image="postgres" if kind == "postgres" else "redis" if kind == "redis" else "prefect",
        command=tuple(translate(a) for a in _command(svc, kind)),
        env=env,
        port=port,
        probe=Probe(svc.probe.kind, port=port or 0, path=svc.probe.path),
        depends_on=tuple(dict.fromkeys(names[d] for d in svc.depends_on)),
        volumes={v: VOLUME_PATHS[v] for v in svc.volumes if v in VOLUME_PATHS},
        role=kind,
        stop_signal=svc.stop_signal,
    )


def _command(svc: Service, kind: str) -> tuple[str, ...]:
    """The same program and settings, minus what the image owns (data dir, listeners)."""
    if kind == "postgres":
        out: list[str] = ["postgres"]
        args = list(svc.argv[1:])
        while args:
            flag = args.pop(0)
            value = args.pop(0) if args else ""
            if flag == "-c" and value.split("=", 1)[0] not in _POSTGRES_LOCAL_ONLY:
                out += ["-c", value]
        return tuple(out)
    if kind == "redis":
        # The local backend writes redis.conf; a container takes the same lines as flags.
        out = ["redis-server"]
        for text in svc.files.values():
            for line in text.splitlines():
                words = shlex.split(line)
                if words and words[0] not in _REDIS_LOCAL_ONLY:
                    out += [f"--{words[0]}", *words[1:]]
        return tuple(out)
    return svc.argv


SUPERUSER_SECRET = "postgres_superuser_password"


def image_env(c: Container) -> dict[str, str]:
    """Variables the image itself reads: what the local backend does with initdb (the
    superuser password) and redis.conf (the password the health check needs)."""
    if c.image == "postgres":
        return {"POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": topology.secret(SUPERUSER_SECRET)}
    if c.image == "redis" and "--requirepass" in c.command:
        return {"REDISCLI_AUTH": c.command[c.command.index("--requirepass") + 1]}
    return {}


def probe_command(probe: Probe) -> list[str] | None:
    """The topology's readiness probe as a command run inside the container."""
    if probe.kind == "pg":
        return ["pg_isready", "-h", LOOPBACK, "-p", str(probe.port), "-U", "postgres",
                "-d", "postgres"]
    if probe.kind == "redis":
        return ["sh", "-c", f"redis-cli -p {probe.port} ping | grep -q PONG"]
    if probe.kind == "http":
        url = f"http://{LOOPBACK}:{probe.port}{probe.path}"
        return ["python", "-c",
                f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"]
    if probe.kind == "alive":
        # No endpoint to ask: the check is that the main process still runs.
        return ["python", "-c", "import os; os.kill(1, 0)"]
    return None
