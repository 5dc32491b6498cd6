"""Stack → list[Service]: the target-neutral description of what runs.

Pure: no disk, network or processes. What differs per target stays symbolic (see
`placeholders`); the local backend and the container renderers each translate the same
services, so what runs locally is what users deploy.

- `service`: Service, probes, restart policy, ordering;
- `settings`: URLs and environment shared by the services;
- `data`: PostgreSQL, Redis, db-init, migrate;  `server`: the API processes and services;
- `clients`: pools, workers, examples;  `edge`: auth and Caddy (`caddyfile` builds its config).
"""

from __future__ import annotations

import dataclasses

from prefectstack.stack.model import Stack
from prefectstack.topology import clients, data, edge, server
from prefectstack.topology.clients import check_target
from prefectstack.topology.placeholders import directory, secret
from prefectstack.topology.service import (
    LOOPBACK,
    Probe,
    RestartPolicy,
    Role,
    Service,
    order,
    secret_names,
)
from prefectstack.topology.settings import (
    API_DOCKET_NAME,
    EDGE_CA_FILE,
    SERVICES_DOCKET_NAME,
    SERVICES_PROCESS,
    api_ports,
    external_values,
    public_url,
    redis_env,
    worker_health_port,
)

__all__ = [
    "API_DOCKET_NAME", "EDGE_CA_FILE", "ESSENTIAL_ROLES", "LOOPBACK", "SERVICES_DOCKET_NAME",
    "SERVICES_PROCESS",
    "Probe", "RestartPolicy", "Role", "Service", "api_ports", "build", "check_target",
    "directory",
    "external_values", "generated_secret_names", "order", "public_url", "redis_env", "secret",
    "secret_names", "worker_health_port",
]


def generated_secret_names(stack: Stack) -> set[str]:
    """The secrets a backend generates and stores for this stack: every `${secret.NAME}`
    but the credentials the stack file gives literally (`external_values`)."""
    return secret_names(build(stack)) - external_values(stack).keys()


# What every other part needs: the data and its schema. When one of these gives up, the
# stack stops. Any other unit that gives up is `failed` alone, its dependents `blocked`, and
# the rest keeps running (PostgreSQL stays up for `backup`, `doctor` and a fix), as systemd
# or Kubernetes would; `up` and `status` report it.
ESSENTIAL_ROLES: frozenset[Role] = frozenset({"postgres", "redis", "db-init", "migrate"})


def build(stack: Stack) -> list[Service]:
    """All services of the stack, in a valid start order."""
    return [dataclasses.replace(svc, essential=svc.role in ESSENTIAL_ROLES)
            for svc in _services(stack)]


def _services(stack: Stack) -> list[Service]:
    services = [
        *data.postgres(stack),
        *data.redis(stack),
        data.db_init(stack),
        data.migrate(stack),
        *server.apis(stack),
        *server.services(stack),
        *edge.auth(stack),
        *edge.edge(stack),
        *clients.pools(stack),
        *clients.workers(stack),
        *clients.reconciler(stack),
        *clients.examples(stack),
        *data.backup(stack),
    ]
    return order(services)
