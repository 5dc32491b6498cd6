"""The edge: the auth service (users, keys, roles, audit, the websocket relay) and Caddy in
front of everything (TLS, auth via forward_auth, load balancing, static flow files)."""

from __future__ import annotations

import json

from prefectstack.stack.model import Stack
from prefectstack.topology import stack_secrets
from prefectstack.topology.caddyfile import edge_caddyfile
from prefectstack.topology.placeholders import (
    BIND_HOST,
    address,
    directory,
    host_path,
    port,
    secret,
)
from prefectstack.topology.service import Probe, Service
from prefectstack.topology.settings import (
    EDGE_SERVICE,
    EDGE_STORAGE,
    FIRST_API,
    api_auth_string,
    api_names,
    public_url,
    service_key_label,
)

AUTH_SERVICE = "auth"
# The Caddyfile's directory: a config dir of its own, so that each target can put it where it
# wants (the local backend writes it under the state dir; containers mount it read-only).
EDGE_CONFIG = "edge-config"


def auth(stack: Stack) -> list[Service]:
    if not stack.edge.enabled:
        return []
    keys: list[dict[str, object]] = [
        {"name": service_key_label(name), "role": role, "key": secret(name)}
        for name, (_label, role) in stack_secrets.SERVICE_KEYS.items()
    ]
    for entry in keys:
        if entry["role"] == "worker":
            # The stack's own workers (and the reconciler, with the same key) serve these
            # pools only (auth/pools.py); remote workers get keys of their own.
            entry["pools"] = sorted({w.pool for w in stack.workers})
    return [
        Service(
            name=AUTH_SERVICE,
            role="auth",
            kind="daemon",
            argv=("python", "-m", "prefectstack.auth", "--host", BIND_HOST,
                  "--port", port(AUTH_SERVICE)),
            env={
                "PREFECTSTACK_AUTH_DIR": directory("auth"),
                "PREFECTSTACK_PUBLIC_URL": public_url(stack),
                "PREFECTSTACK_SESSION_HOURS": str(stack.auth.session_hours),
                "PREFECTSTACK_AUDIT_RETENTION_DAYS": str(stack.retention.audit_days),
                "PREFECTSTACK_ADMIN_PASSWORD": secret(stack_secrets.ADMIN_PASSWORD),
                "PREFECTSTACK_SERVICE_KEYS": json.dumps(keys),
                # The websocket relay's upstreams: the API processes, tried in turn.
                "PREFECTSTACK_API_UPSTREAMS": " ".join(address(n) for n in api_names(stack)),
                # What a request the auth service let through carries on to the API (the
                # edge copies it in as Authorization), and the relay's in-band token.
                "PREFECTSTACK_API_AUTH_STRING": api_auth_string(),
                # Proof that a request comes from the edge (auth/gate.py).
                "PREFECTSTACK_EDGE_SECRET": secret(stack_secrets.EDGE_SECRET),
            } | ({
                # `GET /auth/backup` for the Kubernetes backup job (auth/store_backup.py).
                "PREFECTSTACK_AUTH_BACKUP_TOKEN": secret(stack_secrets.AUTH_BACKUP_TOKEN),
            } if stack.backup.enabled else {}),
            ports=(stack.auth.port,),
            volumes=("auth",),
            probe=Probe("http", port=stack.auth.port, path="/auth/login"),
            # Runs as whoever runs the stack, like the API: an unprivileged account would
            # need to reach this Python installation, which may sit in root's home.
        )
    ]


def edge(stack: Stack) -> list[Service]:
    if not stack.edge.enabled:
        return []
    config = stack.edge
    caddyfile = edge_caddyfile(
        config,
        upstreams=[address(n) for n in api_names(stack)],
        auth=address(AUTH_SERVICE),
        storage=EDGE_STORAGE,
        flows_dir=host_path("flows"),
        bind=config.listen_addresses,
    )
    privileged = min(config.https_port, config.http_port) < 1024
    return [
        Service(
            name=EDGE_SERVICE,
            role="edge",
            kind="daemon",
            argv=("caddy", "run", "--config", directory(EDGE_CONFIG) + "/Caddyfile",
                  "--adapter", "caddyfile"),
            env={"HOME": directory("edge"), "XDG_DATA_HOME": EDGE_STORAGE,
                 "XDG_CONFIG_HOME": directory("edge") + "/config",
                 # The Caddyfile adds it to requests to the auth service (never to the API).
                 "PREFECTSTACK_EDGE_SECRET": secret(stack_secrets.EDGE_SECRET)},
            ports=(config.https_port, config.http_port),
            volumes=("edge",),
            depends_on=(AUTH_SERVICE, FIRST_API),
            probe=Probe("tcp", port=config.https_port),
            # Ports below 1024 need root; otherwise the public listener runs unprivileged.
            run_as=None if privileged else stack.postgres.os_user,
            files={f"{EDGE_CONFIG}/Caddyfile": caddyfile},
        )
    ]
