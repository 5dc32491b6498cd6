"""URLs and environment shared by the services: how Prefect's processes find the database,
Redis, each other and the edge. Pure."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from prefectstack import layout
from prefectstack.stack.model import WORKER_HEALTH_BASE_PORT, Stack
from prefectstack.topology import stack_secrets
from prefectstack.topology.placeholders import EDGE_URL, address, directory, secret
from prefectstack.topology.service import LOOPBACK

# Every Prefect server process runs a docket worker, and a docket worker DROPS any task it did
# not register ("Unknown task ... dropping"). `prefect server services start` hard-codes the
# name `prefect` and registers the perpetual services (scheduler, late runs, ...); `prefect
# server start --no-services` registers only the API's own background tasks, under
# PREFECT_SERVER_DOCKET_NAME. Sharing one name let the API processes take and drop the
# services' periodic tasks, so the two kinds of process get separate names.
SERVICES_DOCKET_NAME = "prefect"
API_DOCKET_NAME = "prefect-api"

# The service that runs `prefect server services start` (status reads its log).
SERVICES_PROCESS = "services"
# The service the stack's clients wait for: the edge, or the first API process without one.
EDGE_SERVICE = "edge"
FIRST_API = "api-1"

# Caddy's storage inside the edge's data dir, and there its internal CA's root certificate.
EDGE_STORAGE = f"{directory(layout.EDGE_VOLUME)}/{layout.EDGE_STORAGE}"
EDGE_CA_FILE = f"{directory(layout.EDGE_VOLUME)}/{layout.EDGE_CA_IN_VOLUME}"

# Names the container targets give credentials written literally in the stack file (an
# external database's or Redis's URL), so no rendered file carries them: `${secret.NAME}`.
EXTERNAL_DATABASE_URL = "prefect_server_database_connection_url"
EXTERNAL_DATABASE_URL_PLAIN = "prefectstack_db_url"
EXTERNAL_REDIS_URLS = {0: "prefect_redis_messaging_url", 1: "prefect_server_docket_url",
                       2: "prefect_redis_worker_cleanup_queue_url"}


def api_name(index: int) -> str:
    return f"api-{index}"


def api_ports(stack: Stack) -> list[int]:
    return [stack.api.port + i for i in range(stack.api.replicas)]


def api_names(stack: Stack) -> list[str]:
    return [api_name(i) for i in range(1, stack.api.replicas + 1)]


def public_url(stack: Stack) -> str:
    if stack.api.public_url:
        return stack.api.public_url.rstrip("/")
    if stack.edge.enabled:
        return stack.edge.public_url
    return f"http://{LOOPBACK}:{stack.api.port}"


def worker_health_port(stack: Stack, index: int) -> int:
    return stack.workers[index].health_port or WORKER_HEALTH_BASE_PORT + index


def _with_password(url: str) -> bool:
    return urlsplit(url).password is not None


def external_values(stack: Stack) -> dict[str, str]:
    """Secret name -> value for credentials the stack file gives literally (external URLs
    with a password); every backend uses them in place of the `${secret.NAME}` it sees."""
    out: dict[str, str] = {}
    if stack.postgres.mode == "external" and stack.postgres.url and _with_password(
            stack.postgres.url):
        out[EXTERNAL_DATABASE_URL] = _external_database_url(stack, "postgresql+asyncpg")
        out[EXTERNAL_DATABASE_URL_PLAIN] = _external_database_url(stack, "postgresql")
    if stack.redis.mode == "external" and stack.redis.url and _with_password(stack.redis.url):
        out |= {name: _external_redis_url(stack, db) for db, name in EXTERNAL_REDIS_URLS.items()}
    return out


def _external_database_url(stack: Stack, scheme: str) -> str:
    assert stack.postgres.url is not None
    return urlunsplit(urlsplit(stack.postgres.url)._replace(scheme=scheme))


def _external_redis_url(stack: Stack, db: int) -> str:
    assert stack.redis.url is not None
    return urlunsplit(urlsplit(stack.redis.url)._replace(path=f"/{db}"))


def database_url(stack: Stack, *, plain: bool = False) -> str:
    """The URL Prefect's server processes use (asyncpg), or `plain` for libpq tools."""
    pg = stack.postgres
    scheme = "postgresql" if plain else "postgresql+asyncpg"
    if pg.mode == "external":
        assert pg.url is not None
        if _with_password(pg.url):
            return secret(EXTERNAL_DATABASE_URL_PLAIN if plain else EXTERNAL_DATABASE_URL)
        return _external_database_url(stack, scheme)
    return (f"{scheme}://{pg.user}:{secret(stack_secrets.POSTGRES_PASSWORD)}"
            f"@{address('postgres')}/{pg.database}")


def redis_url(stack: Stack, db: int) -> str:
    if stack.redis.mode == "external":
        assert stack.redis.url is not None
        if _with_password(stack.redis.url):
            return secret(EXTERNAL_REDIS_URLS[db])
        return _external_redis_url(stack, db)
    return f"redis://:{secret(stack_secrets.REDIS_PASSWORD)}@{address('redis')}/{db}"


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


# Longer than the edge's idle timeout for upstream connections (Caddy's default, 2 min).
UPSTREAM_KEEPALIVE_SECONDS = 150


def api_auth_string() -> str:
    """What Prefect's server auth compares the Basic credentials of every API call with."""
    return f"{stack_secrets.API_USER}:{secret(stack_secrets.API_PASSWORD)}"


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
        "PREFECT_SERVER_API_AUTH_STRING": api_auth_string(),
        # Idle keep-alive connections are closed by the edge (Caddy keeps an idle upstream
        # connection 2 min), never by the API while the edge may be sending on one: with
        # uvicorn's 5 s a request could meet a connection just being closed (a 502).
        "PREFECT_SERVER_API_KEEPALIVE_TIMEOUT": str(UPSTREAM_KEEPALIVE_SECONDS),
        **retention_env(stack),
        **stack.api.settings,
        **redis_env(stack),
    }


DAY_SECONDS = 86400


def retention_env(stack: Stack) -> dict[str, str]:
    """Prefect's own vacuum (names and semantics checked against Prefect 3.8.8:
    prefect/settings/models/server/services.py and events.py, and the service itself,
    prefect/server/services/db_vacuum.py). Events always; flow runs unless kept forever
    (`flow_runs` also turns on Prefect's daily orphan clean-up of logs and artifacts). The
    events' period is a plain timedelta (ISO 8601 duration: pydantic refuses bare seconds
    there), the vacuum's period and loop take seconds. The loop is set even at Prefect's
    default so that the policy is all in one place."""
    retention = stack.retention
    env = {
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"P{retention.events_days}D",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": str(retention.vacuum_interval_seconds),
    }
    if retention.flow_runs_days is None:
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events"
    else:
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] = "events,flow_runs"
        env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] = str(
            retention.flow_runs_days * DAY_SECONDS)
    return env


def service_key_label(key: str) -> str:
    return stack_secrets.SERVICE_KEYS[key][0]


def client_env(stack: Stack, home: str, key: str) -> dict[str, str]:
    """Settings for Prefect clients of the stack (workers, deployment registration).

    With the edge on, they go through it like any other client, with an API key of their
    own (`key` names the secret holding it), given as PREFECT_API_AUTH_STRING
    `<label>:<key>`: Prefect's client sends it as Basic on HTTP and, unlike PREFECT_API_KEY
    against a non-Cloud URL, also on every websocket (in-band, as the first
    `{"type": "auth", "token": ...}` message), which the edge's relay checks.
    """
    env = {
        "PREFECT_HOME": directory(home),
        "PREFECT_API_URL": f"http://{address(FIRST_API)}/api",
        # Without an edge the API processes are the gate: the server's own auth string.
        "PREFECT_API_AUTH_STRING": api_auth_string(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
    }
    if stack.edge.enabled:
        env["PREFECT_API_URL"] = f"{EDGE_URL}/api"
        env["PREFECT_API_AUTH_STRING"] = f"{service_key_label(key)}:{secret(key)}"
    return env


def public_edge_env(stack: Stack) -> dict[str, str]:
    """A client reaching the edge at its public HTTPS address trusts the stack's CA. Only
    Prefect's client does: SSL_CERT_FILE would replace the system trust store for the flows
    too, breaking their calls to public sites."""
    if stack.edge.enabled and stack.edge.internal_tls:
        return {"PREFECT_API_SSL_CERT_FILE": EDGE_CA_FILE}
    return {}


def client_deps(stack: Stack) -> tuple[str, ...]:
    return (EDGE_SERVICE,) if stack.edge.enabled else (FIRST_API,)
