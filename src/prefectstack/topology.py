"""Stack → list[Service]: the target-neutral description of what runs.

Pure: no disk, network or processes. Values that differ per target stay symbolic:
- `${secret.NAME}`  a generated secret (the local backend reads the 0600 store, compose
  renders it into `.env`), never a literal value;
- `${dir.NAME}`     a data directory (local: under the state dir; compose: a volume path);
- argv[0] is a logical program name (`postgres`, `redis-server`, `prefect`, `python`) that
  each backend resolves to a binary or an image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from prefectstack.stack.model import WORKER_HEALTH_BASE_PORT, Stack

LOOPBACK = "127.0.0.1"
# Every Prefect server process runs a docket worker, and a docket worker DROPS any task it did
# not register ("Unknown task ... dropping"). `prefect server services start` hard-codes the
# name `prefect` and registers the perpetual services (scheduler, late runs, ...); `prefect
# server start --no-services` registers only the API's own background tasks, under
# PREFECT_SERVER_DOCKET_NAME. Sharing one name let the API processes take and drop the
# services' periodic tasks, so the two kinds of process get separate names.
SERVICES_DOCKET_NAME = "prefect"
API_DOCKET_NAME = "prefect-api"

ProbeKind = Literal["pg", "redis", "http", "tcp", "alive", "exit"]


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
    failures inside `window_seconds`."""

    enabled: bool = True
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    max_restarts: int = 5
    window_seconds: float = 120.0


@dataclass(frozen=True)
class Service:
    name: str
    kind: Literal["daemon", "oneshot"]
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()
    volumes: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    probe: Probe = Probe("alive")
    restart: RestartPolicy = RestartPolicy()
    stop_signal: Literal["SIGTERM", "SIGINT"] = "SIGTERM"
    # Runs as this OS user when the supervisor is root (PostgreSQL refuses root).
    run_as: str | None = None
    # Backend-specific preparation before the first start (e.g. `pgdata`: initdb).
    prepare: str | None = None
    # Files the backend writes (mode 0600) before start; content may hold placeholders.
    files: dict[str, str] = field(default_factory=dict)
    ready_timeout_seconds: float = 120.0
    # False for a service the rest of the stack does not need (a worker): when it crash-loops
    # the supervisor gives up on it alone and keeps everything else running, reporting it.
    essential: bool = True


def secret(name: str) -> str:
    return "${secret." + name + "}"


def directory(name: str) -> str:
    return "${dir." + name + "}"


def api_ports(stack: Stack) -> list[int]:
    return [stack.api.port + i for i in range(stack.api.replicas)]


def public_url(stack: Stack) -> str:
    if stack.api.public_url:
        return stack.api.public_url.rstrip("/")
    if stack.edge.enabled:
        return stack.edge.public_url
    return f"http://{LOOPBACK}:{stack.api.port}"


def edge_ca_file() -> str:
    """The root certificate of the edge's internal CA (Caddy's storage layout)."""
    return directory("edge") + "/data/pki/authorities/local/root.crt"


def worker_health_port(stack: Stack, index: int) -> int:
    return stack.workers[index].health_port or WORKER_HEALTH_BASE_PORT + index


def database_url(stack: Stack) -> str:
    """The asyncpg URL every Prefect server process uses."""
    pg = stack.postgres
    if pg.mode == "external":
        assert pg.url is not None
        parts = urlsplit(pg.url)
        return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))
    return (
        f"postgresql+asyncpg://{pg.user}:{secret('postgres_password')}"
        f"@{LOOPBACK}:{pg.port}/{pg.database}"
    )


def redis_url(stack: Stack, db: int) -> str:
    if stack.redis.mode == "external":
        assert stack.redis.url is not None
        parts = urlsplit(stack.redis.url)
        return urlunsplit(parts._replace(path=f"/{db}"))
    return f"redis://:{secret('redis_password')}@{LOOPBACK}:{stack.redis.port}/{db}"


def redis_env(stack: Stack) -> dict[str, str]:
    """Every Redis-backed setting, together: leaving one out silently falls back to an
    in-memory implementation that breaks as soon as there are two server processes."""
    return {
        "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
        "PREFECT_REDIS_MESSAGING_URL": redis_url(stack, 0),
        "PREFECT_SERVER_DOCKET_URL": redis_url(stack, 1),
        "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_URL": redis_url(stack, 2),
    }


def server_env(stack: Stack, home: str, docket: str = SERVICES_DOCKET_NAME) -> dict[str, str]:
    """Settings shared by the migration, API and services processes."""
    return {
        "PREFECT_HOME": directory(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(stack),
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": stack.api.log_level,
        "PREFECT_SERVER_DOCKET_NAME": docket,
        "PREFECT_SERVER_UI_API_URL": f"{public_url(stack)}/api",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        **stack.api.settings,
        **redis_env(stack),
    }


def client_env(stack: Stack, home: str, key: str) -> dict[str, str]:
    """Settings for Prefect clients of the stack (workers, deployment registration).

    With the edge on, they go through it like any other client: HTTPS verified against the
    stack's CA, and an API key of their own (`key` names the secret holding it), given as
    PREFECT_API_AUTH_STRING `<label>:<key>`: Prefect's client sends it as Basic on HTTP and,
    unlike PREFECT_API_KEY against a non-Cloud URL, also on every websocket (in-band, as the
    first `{"type": "auth", "token": ...}` message), which the edge's relay checks.
    """
    env = {
        "PREFECT_HOME": directory(home),
        "PREFECT_API_URL": f"http://{LOOPBACK}:{stack.api.port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
    }
    if stack.edge.enabled:
        env["PREFECT_API_URL"] = f"{public_url(stack)}/api"
        env["PREFECT_API_AUTH_STRING"] = f"{SERVICE_KEY_LABELS[key]}:{secret(key)}"
        if stack.edge.internal_tls:
            # Only Prefect's client trusts the stack's CA: SSL_CERT_FILE would replace the
            # system trust store for the flows too, breaking their calls to public sites.
            env["PREFECT_API_SSL_CERT_FILE"] = edge_ca_file()
    return env


# The auth store's name for each of the stack's own keys (also the label in the auth string).
SERVICE_KEY_LABELS = {"worker_api_key": "stack-worker", "deployer_api_key": "stack-deployer"}


def client_deps(stack: Stack) -> tuple[str, ...]:
    return ("edge",) if stack.edge.enabled else ("api-1",)


def _postgres(stack: Stack) -> list[Service]:
    pg = stack.postgres
    if pg.mode == "external":
        return []
    settings = {
        "listen_addresses": LOOPBACK,
        "port": str(pg.port),
        "unix_socket_directories": "",
        "password_encryption": "scram-sha-256",
        **pg.settings,
    }
    argv: tuple[str, ...] = ("postgres", "-D", directory("pgdata"))
    for key, value in settings.items():
        argv += ("-c", f"{key}={value}")
    return [
        Service(
            name="postgres",
            kind="daemon",
            argv=argv,
            ports=(pg.port,),
            volumes=("pgdata",),
            probe=Probe("pg", port=pg.port),
            stop_signal="SIGINT",  # fast shutdown: SIGTERM would wait for clients
            run_as=pg.os_user,
            prepare="pgdata",
        )
    ]


def _redis(stack: Stack) -> list[Service]:
    if stack.redis.mode == "external":
        return []
    conf = "\n".join(
        [
            f"bind {LOOPBACK}",
            f"port {stack.redis.port}",
            "protected-mode yes",
            f"requirepass {secret('redis_password')}",
            f"dir {directory('redis')}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "maxmemory-policy noeviction",
            "",
        ]
    )
    return [
        Service(
            name="redis",
            kind="daemon",
            argv=("redis-server", directory("redis") + "/redis.conf"),
            ports=(stack.redis.port,),
            volumes=("redis",),
            probe=Probe("redis", port=stack.redis.port),
            files={"redis/redis.conf": conf},
        )
    ]


def _db_init(stack: Stack) -> Service:
    local = stack.postgres.mode != "external"
    env = {
        "PREFECTSTACK_DB_URL": database_url(stack).replace("+asyncpg", ""),
        "PREFECTSTACK_DB_CREATE": "1" if local else "0",
    }
    if local:
        env["PREFECTSTACK_DB_ADMIN_URL"] = (
            f"postgresql://postgres:{secret('postgres_superuser_password')}"
            f"@{LOOPBACK}:{stack.postgres.port}/postgres"
        )
    return Service(
        name="db-init",
        kind="oneshot",
        argv=("python", "-m", "prefectstack.runtime.dbinit"),
        env=env,
        depends_on=("postgres",) if local else (),
        probe=Probe("exit"),
    )


def _migrate(stack: Stack) -> Service:
    return Service(
        name="migrate",
        kind="oneshot",
        argv=("prefect", "server", "database", "upgrade", "-y"),
        env=server_env(stack, "home-migrate"),
        volumes=("home-migrate",),
        depends_on=("db-init",),
        probe=Probe("exit"),
        ready_timeout_seconds=600.0,
    )


def _apis(stack: Stack) -> list[Service]:
    out = []
    base_deps = ["migrate"] + ([] if stack.redis.mode == "external" else ["redis"])
    for i, port in enumerate(api_ports(stack), start=1):
        home = f"home-api-{i}"
        env = server_env(stack, home, API_DOCKET_NAME)
        deps = list(base_deps)
        if i > 1:
            # Block types are registered once, by api-1, before the others start: several
            # processes registering at once on a fresh database race on uq_block_type__slug.
            env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
            deps.append("api-1")
        if stack.monitoring.enabled:
            env["PREFECT_SERVER_METRICS_ENABLED"] = "true"  # serves /api/metrics
        out.append(
            Service(
                name=f"api-{i}",
                kind="daemon",
                argv=("prefect", "server", "start", "--no-services",
                      "--host", LOOPBACK, "--port", str(port)),
                env=env,
                ports=(port,),
                volumes=(home,),
                depends_on=tuple(deps),
                probe=Probe("http", port=port, path="/api/ready"),
            )
        )
    return out


def _services(stack: Stack) -> list[Service]:
    if not stack.services.enabled:
        return []
    return [
        Service(
            name="services",
            kind="daemon",
            argv=("prefect", "server", "services", "start"),
            env=server_env(stack, "home-services"),
            volumes=("home-services",),
            # Needs the schema and the broker, not the API: it starts beside api-1.
            depends_on=("migrate",) + (() if stack.redis.mode == "external" else ("redis",)),
            probe=Probe("alive"),
        )
    ]


def _workers(stack: Stack) -> list[Service]:
    out = []
    for i, worker in enumerate(stack.workers):
        port = worker_health_port(stack, i)
        home = f"home-{worker.name}"
        argv: tuple[str, ...] = (
            "prefect", "worker", "start", "--pool", worker.pool, "--type", worker.type,
            "--name", worker.name, "--with-healthcheck",
        )
        if worker.limit:
            argv += ("--limit", str(worker.limit))
        env = client_env(stack, home, "worker_api_key") | {
            "PREFECT_WORKER_WEBSERVER_HOST": LOOPBACK,
            "PREFECT_WORKER_WEBSERVER_PORT": str(port),
            "PREFECT_WORKER_QUERY_SECONDS": f"{worker.poll_seconds:g}",
        }
        out.append(
            Service(
                name=worker.name,
                kind="daemon",
                argv=argv,
                env=env,
                ports=(port,),
                volumes=(home,),
                # `pools` creates the work pool first: a worker key may not create one.
                depends_on=(*client_deps(stack), "pools"),
                probe=Probe("http", port=port, path="/health"),
                essential=False,
            )
        )
    return out


def _pools(stack: Stack) -> list[Service]:
    """Create the work pools of the stack's workers before the workers start."""
    if not stack.workers:
        return []
    pools = sorted({w.pool for w in stack.workers})
    return [
        Service(
            name="pools",
            kind="oneshot",
            argv=("python", "-m", "prefectstack.runtime.pools", *pools),
            env=client_env(stack, "home-pools", "deployer_api_key"),
            volumes=("home-pools",),
            depends_on=client_deps(stack),
            probe=Probe("exit"),
        )
    ]


def _examples(stack: Stack) -> list[Service]:
    if not stack.examples.enabled or not stack.workers:
        return []
    pool = stack.examples.pool or stack.workers[0].pool
    env = client_env(stack, "home-examples", "deployer_api_key") | {
        "PREFECTSTACK_EXAMPLES_POOL": pool,
        "PREFECTSTACK_EXAMPLES_INTERVAL": str(stack.examples.interval_seconds),
    }
    return [
        Service(
            name="examples",
            kind="oneshot",
            argv=("python", "-m", "prefectstack.runtime.examples"),
            env=env,
            volumes=("home-examples",),
            depends_on=(*client_deps(stack), "pools"),
            probe=Probe("exit"),
        )
    ]


def _auth(stack: Stack) -> list[Service]:
    if not stack.edge.enabled:
        return []
    roles = {"worker_api_key": "worker", "deployer_api_key": "developer"}
    keys = [
        {"name": SERVICE_KEY_LABELS[name], "role": role, "key": secret(name)}
        for name, role in roles.items()
    ]
    return [
        Service(
            name="auth",
            kind="daemon",
            argv=("python", "-m", "prefectstack.auth", "--host", LOOPBACK,
                  "--port", str(stack.auth.port)),
            env={
                "PREFECTSTACK_AUTH_DIR": directory("auth"),
                "PREFECTSTACK_PUBLIC_URL": public_url(stack),
                "PREFECTSTACK_SESSION_HOURS": str(stack.auth.session_hours),
                "PREFECTSTACK_ADMIN_PASSWORD": secret("admin_password"),
                "PREFECTSTACK_SERVICE_KEYS": json.dumps(keys),
                # The websocket relay's upstreams: the API processes, tried in turn.
                "PREFECTSTACK_API_UPSTREAMS": " ".join(
                    f"{LOOPBACK}:{p}" for p in api_ports(stack)
                ),
            },
            ports=(stack.auth.port,),
            volumes=("auth",),
            probe=Probe("http", port=stack.auth.port, path="/auth/login"),
            run_as=stack.postgres.os_user,
        )
    ]


def _edge(stack: Stack) -> list[Service]:
    if not stack.edge.enabled:
        return []
    from prefectstack.render.caddy import edge_caddyfile

    edge = stack.edge
    config = edge_caddyfile(
        edge,
        upstreams=[f"{LOOPBACK}:{p}" for p in api_ports(stack)],
        auth=f"{LOOPBACK}:{stack.auth.port}",
        storage=directory("edge") + "/data",
        flows_dir="${path.flows}",
        bind=edge.listen_addresses,
    )
    privileged = min(edge.https_port, edge.http_port) < 1024
    return [
        Service(
            name="edge",
            kind="daemon",
            argv=("caddy", "run", "--config", directory("edge") + "/Caddyfile",
                  "--adapter", "caddyfile"),
            env={"HOME": directory("edge"), "XDG_DATA_HOME": directory("edge") + "/data",
                 "XDG_CONFIG_HOME": directory("edge") + "/config"},
            ports=(edge.https_port, edge.http_port),
            volumes=("edge",),
            depends_on=("auth", "api-1"),
            probe=Probe("tcp", port=edge.https_port),
            # Ports below 1024 need root; otherwise the public listener runs unprivileged.
            run_as=None if privileged else stack.postgres.os_user,
            files={"edge/Caddyfile": config},
        )
    ]


def build(stack: Stack) -> list[Service]:
    """All services of the stack, in a valid start order."""
    services = [
        *_postgres(stack),
        *_redis(stack),
        _db_init(stack),
        _migrate(stack),
        *_apis(stack),
        *_services(stack),
        *_auth(stack),
        *_edge(stack),
        *_pools(stack),
        *_workers(stack),
        *_examples(stack),
    ]
    return order(services)


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
    import re

    pattern = re.compile(r"\$\{secret\.([a-z_]+)\}")
    found: set[str] = set()
    for svc in services:
        for text in (*svc.env.values(), *svc.argv, *svc.files.values()):
            found.update(pattern.findall(text))
    return found
