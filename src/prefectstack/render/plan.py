"""The topology, translated once for container targets (compose and Kubernetes).

Every container comes from topology services, with the same program, arguments and
environment; only what depends on the target changes:
- addresses: `127.0.0.1:<port>` becomes `<container>:<port inside the container>`, and
  processes bind `0.0.0.0` in their own network namespace;
- `${dir.NAME}`: stateful data (pgdata, redis, auth, edge) lives in volumes, Prefect homes in
  the container; a config file the local backend writes into a data dir (the Caddyfile) is
  mounted read-only from the rendered project instead;
- the logical program picks the image (`postgres`, `redis-server`, `caddy`, else our image);
- clients of the edge (workers, pools, examples) reach it by its service name on a plain-HTTP
  listener inside the private network, with the same API keys (see `Edge`);
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
from prefectstack.render import caddy
from prefectstack.render.common import AUTH_DIR, HOME_DIR
from prefectstack.stack.model import Stack
from prefectstack.topology import LOOPBACK, Probe, Service

Image = Literal["prefect", "postgres", "redis", "caddy"]

CONTAINER_PORTS = {"postgres": 5432, "redis": 6379, "api": 4200, "worker": 8080}
EDGE_DIR = "/var/lib/caddy"
VOLUME_PATHS = {"pgdata": "/var/lib/postgresql/data", "redis": "/data", "auth": AUTH_DIR,
                "edge": EDGE_DIR}
# Config files the local backend writes into a data dir are mounted read-only here instead.
CONFIG_DIRS = {"edge": "/etc/caddy"}
FLOWS_MOUNT = "/srv/flows"
EDGE_INTERNAL_PORTS = (8080, 8081, 8082)
# Values browsers use: an address there is public, never rewritten to an internal one.
PUBLIC_KEYS = frozenset({"PREFECT_SERVER_UI_API_URL", "PREFECTSTACK_PUBLIC_URL"})
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
class Edge:
    """What the containerised edge's Caddyfile needs: the local edge's parameters with
    container addresses and paths (the same `caddy.edge_caddyfile` renders both)."""

    stack: Stack
    upstreams: tuple[str, ...]
    auth: str
    internal_port: int

    @property
    def internal_url(self) -> str:
        return f"http://edge:{self.internal_port}"

    def caddyfile(self, *, public: bool = True, upstreams: tuple[str, ...] | None = None,
                  trusted_proxies: str | None = None) -> str:
        return caddy.edge_caddyfile(
            self.stack.edge,
            upstreams=upstreams or self.upstreams,
            auth=self.auth,
            storage=f"{EDGE_DIR}/data",
            flows_dir=FLOWS_MOUNT,
            internal=f"http://:{self.internal_port}",
            public=public,
            trusted_proxies=trusted_proxies,
        )


@dataclass(frozen=True)
class Plan:
    containers: list[Container]
    external: dict[str, str]
    """secret name -> value for credentials that came literally from the stack file"""
    edge: Edge | None = None

    def get(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)


def role(svc: Service) -> str:
    argv = svc.argv
    if argv[0] in ("postgres", "redis-server"):
        return "postgres" if argv[0] == "postgres" else "redis"
    if argv[0] == "caddy":
        return "edge"
    if argv[:3] == ("prefect", "server", "start"):
        return "api"
    if argv[:2] == ("prefect", "worker"):
        return "worker"
    if argv[:3] == ("python", "-m", "prefectstack.auth"):
        return "auth"
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
    edge = _edge(stack, services, names, addresses)
    external: dict[str, str] = {}
    merged: dict[str, Container] = {}
    for svc in services:
        if edge is not None:
            svc = _via_edge(stack, edge, svc)
        container = _container(svc, names, addresses, external)
        if container.role == "edge" and edge is not None:
            # Other containers and the health check use the internal listener.
            port = edge.internal_port
            container = replace(container, port=port,
                                probe=Probe("http", port=port, path="/api/health"))
        if container.name in merged:
            first = merged[container.name]
            if replace(container, sources=first.sources, replicas=first.replicas) != first:
                raise ValueError(f"{svc.name} differs from {first.sources[0]} beyond its address")
            container = replace(first, sources=(*first.sources, svc.name),
                                replicas=first.replicas + 1)
        merged[container.name] = container
    return Plan(list(merged.values()), external, edge)


def _container_port(svc: Service) -> int | None:
    """Where the service listens inside its container: the image's usual port."""
    return CONTAINER_PORTS.get(role(svc), svc.ports[0]) if svc.ports else None


def _edge(stack: Stack, services: list[Service], names: dict[str, str],
          addresses: dict[int, str]) -> Edge | None:
    if not any(role(svc) == "edge" for svc in services):
        return None
    taken = {stack.edge.https_port, stack.edge.http_port}
    internal = next(p for p in EDGE_INTERNAL_PORTS if p not in taken)
    apis = dict.fromkeys(names[svc.name] for svc in services if role(svc) == "api")
    auth = next(svc for svc in services if role(svc) == "auth")
    return Edge(stack, tuple(f"{name}:{CONTAINER_PORTS['api']}" for name in apis),
                addresses[auth.ports[0]], internal)


def _via_edge(stack: Stack, edge: Edge, svc: Service) -> Service:
    """Clients inside the private network use the edge's plain-HTTP listener: the same
    routes and auth as the public HTTPS site, without a CA certificate to hand them (the
    local edge's CA lives in the edge's volume, next to its private key)."""
    public = topology.public_url(stack) + "/"
    env: dict[str, str] = {}
    for key, value in svc.env.items():
        if value == topology.edge_ca_file():
            continue  # plain HTTP inside: no CA to trust (and no file at that path)
        if key not in PUBLIC_KEYS and value.startswith(public):
            value = f"{edge.internal_url}/{value[len(public):]}"
        env[key] = value
    return replace(svc, env=env)


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
        for file in svc.files:
            folder, _, rest = file.partition("/")
            if folder in CONFIG_DIRS:
                value = value.replace(topology.directory(folder) + "/" + rest,
                                      f"{CONFIG_DIRS[folder]}/{rest}")
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
        image=_image(kind),
        command=tuple(translate(a) for a in _command(svc, kind)),
        env=env,
        port=port,
        probe=Probe(svc.probe.kind, port=port or 0, path=svc.probe.path),
        depends_on=tuple(dict.fromkeys(names[d] for d in svc.depends_on)),
        volumes={v: VOLUME_PATHS[v] for v in svc.volumes if v in VOLUME_PATHS},
        role=kind,
        stop_signal=svc.stop_signal,
    )


def _image(kind: str) -> Image:
    if kind in ("postgres", "redis"):
        return "postgres" if kind == "postgres" else "redis"
    return "caddy" if kind == "edge" else "prefect"


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


def probe_command(probe: Probe, image: Image = "prefect") -> list[str] | None:
    """The topology's readiness probe as a command run inside the container (with the
    tools that image has: Python in ours, busybox wget in Caddy's)."""
    if probe.kind == "pg":
        return ["pg_isready", "-h", LOOPBACK, "-p", str(probe.port), "-U", "postgres",
                "-d", "postgres"]
    if probe.kind == "redis":
        return ["sh", "-c", f"redis-cli -p {probe.port} ping | grep -q PONG"]
    if probe.kind == "http":
        url = f"http://{LOOPBACK}:{probe.port}{probe.path}"
        if image == "caddy":
            return ["wget", "-q", "-O", "/dev/null", url]
        return ["python", "-c",
                f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"]
    if probe.kind == "alive":
        # No endpoint to ask: the check is that the main process still runs.
        return ["python", "-c", "import os; os.kill(1, 0)"]
    return None
