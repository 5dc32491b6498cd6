"""The topology, translated once for container targets (compose and Kubernetes).

Every container comes from topology services, with the same program, arguments and
environment; the placeholders each target resolves its own way are resolved here:
- `${addr.S}` becomes `<container>:<port inside the container>`, `${port.S}` that port, and
  `${bind.host}` `0.0.0.0` (each process binds in its own network namespace);
- `${dir.NAME}`: stateful data (pgdata, redis, auth, edge) lives in volumes, Prefect homes in
  the container, and the edge's config dir is mounted read-only from the rendered project;
- `${url.edge}`: clients of the edge (workers, pools, examples) reach it by its service name
  on a plain-HTTP listener inside the private network, with the same API keys (see `Edge`);
- the service's role picks the image (`postgres`, `redis`, `caddy`, else our image), and
  PostgreSQL's and Redis's settings become their command-line flags;
- API processes 2..N share one `api-replicas` container spec (they differ only in address);
  compose keeps one service each (`build(fold_replicas=False)`).
`${secret.NAME}` stays: each renderer turns it into its own secret reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from prefectstack import topology
from prefectstack.render.common import AUTH_DIR, HOME_DIR
from prefectstack.stack.model import Stack
from prefectstack.topology import placeholders
from prefectstack.topology.caddyfile import edge_caddyfile
from prefectstack.topology.edge import EDGE_CONFIG
from prefectstack.topology.service import LOOPBACK, Probe, Role, Service
from prefectstack.topology.settings import SERVICES_DOCKET_NAME
from prefectstack.topology.stack_secrets import POSTGRES_SUPERUSER_PASSWORD

Image = Literal["prefect", "postgres", "redis", "caddy"]

CONTAINER_PORTS: dict[str, int] = {"postgres": 5432, "redis": 6379, "api": 4200,
                                   "worker": 8080}
EDGE_DIR = "/var/lib/caddy"
# PostgreSQL 18's image keeps its data in /var/lib/postgresql/18/docker (PGDATA) and refuses
# a volume at the old /var/lib/postgresql/data: the volume is the parent directory.
VOLUME_PATHS = {"pgdata": "/var/lib/postgresql", "redis": "/data", "auth": AUTH_DIR,
                "edge": EDGE_DIR}
# Config dirs are mounted read-only from the rendered project.
CONFIG_DIRS = {"edge": "/etc/caddy"}
_CONFIG_DIR_NAMES = {EDGE_CONFIG: CONFIG_DIRS["edge"]}
FLOWS_MOUNT = "/srv/flows"
EDGE_INTERNAL_PORTS = (8080, 8081, 8082)
# The API copies the UI's static files on start, by default into the prefect package, which
# the image's unprivileged user cannot write (and Kubernetes mounts the root read-only).
UI_STATIC_ENV = {"PREFECT_SERVER_UI_STATIC_DIRECTORY": f"{HOME_DIR}/ui-build"}
# Prefect's database timeout (10 s) is for API queries; a migration of a big database runs
# statements far longer.
MIGRATION_ENV = {"PREFECT_SERVER_DATABASE_TIMEOUT": "600"}
CONTAINER_ONLY_ENV = frozenset(UI_STATIC_ENV) | frozenset(MIGRATION_ENV)
ANY_ADDRESS = "0.0.0.0"


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
    role: Role = "api"
    settings: dict[str, str] = field(default_factory=dict)
    """the server's own settings (PostgreSQL, Redis), as the topology gives them"""
    stop_signal: str = "SIGTERM"

    @property
    def scalable(self) -> bool:
        """API processes: stateless, any number of them run behind the edge."""
        return self.role == "api"


@dataclass(frozen=True)
class Edge:
    """What the containerised edge's Caddyfile needs: the local edge's parameters with
    container addresses and paths (the same `edge_caddyfile` renders both)."""

    stack: Stack
    upstreams: tuple[str, ...]
    auth: str
    internal_port: int

    @property
    def internal_url(self) -> str:
        return f"http://edge:{self.internal_port}"

    def caddyfile(self, *, public: bool = True, upstreams: tuple[str, ...] | None = None,
                  trusted_proxies: str | None = None) -> str:
        return edge_caddyfile(
            self.stack.edge,
            upstreams=upstreams or self.upstreams,
            auth=self.auth,
            storage=f"{EDGE_DIR}/data",
            flows_dir=FLOWS_MOUNT,
            internal=f"http://:{self.internal_port}",
            public=public,
            trusted_proxies=trusted_proxies,
            rendered_by="render",
        )


@dataclass(frozen=True)
class Plan:
    containers: list[Container]
    external: dict[str, str]
    """secret name -> value for credentials that came literally from the stack file"""
    edge: Edge | None = None

    def get(self, name: str) -> Container | None:
        return next((c for c in self.containers if c.name == name), None)


def container_names(services: list[Service], *, fold: bool = True) -> dict[str, str]:
    """Topology name -> container name: the first API process is `api`; processes 2..N
    fold into `api-replicas` (one Deployment), or with `fold=False` keep their topology
    names (`api-2`, ...: compose lists each replica, so that the edge's health checks and
    load balancing see every one, not one name that resolves to any of them)."""
    names: dict[str, str] = {}
    apis = 0
    for svc in services:
        if svc.role == "api":
            apis += 1
            names[svc.name] = "api" if apis == 1 else "api-replicas" if fold else svc.name
        else:
            names[svc.name] = svc.name
    return names


def container_port(svc: Service) -> int | None:
    """Where the service listens inside its container: the image's usual port."""
    return CONTAINER_PORTS.get(svc.role, svc.ports[0]) if svc.ports else None


@dataclass(frozen=True)
class _Network:
    """Where each service is, seen from inside the private network."""

    names: dict[str, str]
    ports: dict[str, int]
    edge_url: str | None

    def resolve(self, kind: str, name: str) -> str:
        if kind == "secret":
            return placeholders.secret(name)
        if kind == "addr":
            return f"{self.names[name]}:{self.ports[name]}"
        if kind == "port":
            return str(self.ports[name])
        if kind == "bind":
            return ANY_ADDRESS
        if kind == "dir":
            return VOLUME_PATHS.get(name) or _CONFIG_DIR_NAMES.get(name) or HOME_DIR
        if kind == "path" and name == "flows":
            return FLOWS_MOUNT
        if kind == "url" and name == "edge" and self.edge_url:
            return self.edge_url
        raise ValueError(f"no container value for ${{{kind}.{name}}}")

    def translate(self, text: str) -> str:
        return placeholders.substitute(text, self.resolve)


def build(stack: Stack, *, fold_replicas: bool = True) -> Plan:
    services = [svc for svc in topology.build(stack) if not svc.local_only]
    names = container_names(services, fold=fold_replicas)
    ports = {svc.name: port for svc in services if (port := container_port(svc)) is not None}
    edge = _edge(stack, services, names, ports)
    network = _Network(names, ports, edge.internal_url if edge else None)
    merged: dict[str, Container] = {}
    for svc in services:
        container = _container(svc, names[svc.name], network)
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
    return Plan(list(merged.values()), topology.external_values(stack), edge)


def _edge(stack: Stack, services: list[Service], names: dict[str, str],
          ports: dict[str, int]) -> Edge | None:
    if not any(svc.role == "edge" for svc in services):
        return None
    taken = {stack.edge.https_port, stack.edge.http_port}
    internal = next(p for p in EDGE_INTERNAL_PORTS if p not in taken)
    apis = dict.fromkeys(names[svc.name] for svc in services if svc.role == "api")
    auth = next(svc for svc in services if svc.role == "auth")
    return Edge(stack, tuple(f"{name}:{CONTAINER_PORTS['api']}" for name in apis),
                f"{names[auth.name]}:{ports[auth.name]}", internal)


def _container(svc: Service, name: str, network: _Network) -> Container:
    port = network.ports.get(svc.name)
    return Container(
        name=name,
        sources=(svc.name,),
        kind=svc.kind,
        image=_image(svc.role),
        command=tuple(network.translate(a) for a in _command(svc)),
        # Clients reach the edge privately over plain HTTP: no public-edge env (its CA).
        env={key: network.translate(value) for key, value in svc.env.items()}
        | (UI_STATIC_ENV if svc.role == "api" else {})
        | (MIGRATION_ENV if svc.role == "migrate" else {}),
        port=port,
        probe=Probe(svc.probe.kind, port=port or 0, path=svc.probe.path),
        depends_on=tuple(dict.fromkeys(network.names[d] for d in svc.depends_on)),
        volumes={v: VOLUME_PATHS[v] for v in svc.volumes if v in VOLUME_PATHS},
        role=svc.role,
        settings=svc.settings,
        stop_signal=svc.stop_signal,
    )


def _image(role: Role) -> Image:
    if role == "postgres" or role == "redis":
        return role
    return "caddy" if role == "edge" else "prefect"


def _command(svc: Service) -> tuple[str, ...]:
    """The same program and settings; the image owns where it listens and keeps data."""
    if svc.role == "postgres":
        return ("postgres", *[a for k, v in svc.settings.items() for a in ("-c", f"{k}={v}")])
    if svc.role == "redis":
        return ("redis-server", *[a for k, v in svc.settings.items() for a in (f"--{k}", v)])
    return svc.argv


SUPERUSER_SECRET = POSTGRES_SUPERUSER_PASSWORD


def image_env(c: Container) -> dict[str, str]:
    """Variables the image itself reads: what the local backend does with initdb (the
    superuser password) and redis.conf (the password the health check needs)."""
    if c.image == "postgres":
        return {"POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": placeholders.secret(SUPERUSER_SECRET)}
    if c.image == "redis" and "requirepass" in c.settings:
        return {"REDISCLI_AUTH": c.settings["requirepass"]}
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
    # "alive": no endpoint to ask, and PID 1 is tini, which exits with its child: the
    # restart policy covers a process that exits (see `services_check` for `services`).
    return None


# docket's key of the workers' heartbeats: `<docket name>:workers`, a sorted set of worker
# name -> last heartbeat (epoch seconds), written every 2 s (pydocket 0.27).
SERVICES_HEARTBEAT_MAX_AGE = 30


def services_check(docket: str = SERVICES_DOCKET_NAME) -> list[str]:
    """The `services` process runs its loops (scheduler, late runs, vacuum, ...) as tasks of
    one docket worker, which heartbeats into Redis while its event loop runs. Healthy while
    a heartbeat of that docket is younger than SERVICES_HEARTBEAT_MAX_AGE seconds: a hung or
    disconnected process turns unhealthy, which a check of PID 1 (tini) never did."""
    script = (
        "import os, time, redis; "
        "r = redis.Redis.from_url(os.environ['PREFECT_SERVER_DOCKET_URL'], socket_timeout=3); "
        f"n = r.zcount({docket + ':workers'!r}, time.time() - {SERVICES_HEARTBEAT_MAX_AGE}, "
        "'+inf'); raise SystemExit(0 if n else 'no docket heartbeat for "
        f"{SERVICES_HEARTBEAT_MAX_AGE}s')"
    )
    return ["python", "-c", script]


def health_command(c: Container) -> list[str] | None:
    """The container's health check, as a command (None: none to run)."""
    if c.role == "services":
        return services_check()
    if c.probe.kind == "alive" and c.image == "prefect":
        return process_check(c.command)
    return probe_command(c.probe, c.image)


def process_check(command: tuple[str, ...]) -> list[str]:
    """Healthy while a process runs this command line (PID 1 is tini, not the command)."""
    wanted = "\0".join(command) + "\0"
    script = (
        "import glob, pathlib\n"
        "def line(p):\n"
        "    try:\n"
        "        return pathlib.Path(p).read_bytes()\n"
        "    except OSError:  # exited meanwhile\n"
        "        return b''\n"
        f"raise SystemExit(0 if any(line(p) == {wanted.encode()!r} "
        "for p in glob.glob('/proc/[0-9]*/cmdline')) else 'not running')"
    )
    return ["python", "-c", script]
