"""Prefect's server: the API processes and the background services process."""

from __future__ import annotations

from prefectstack.stack.model import Stack
from prefectstack.topology.placeholders import BIND_HOST, port
from prefectstack.topology.service import Probe, Service
from prefectstack.topology.settings import (
    API_DOCKET_NAME,
    FIRST_API,
    SERVICES_PROCESS,
    api_names,
    api_ports,
    server_env,
)


def apis(stack: Stack) -> list[Service]:
    out = []
    base_deps = ["migrate"] + ([] if stack.redis.mode == "external" else ["redis"])
    for i, (name, listen) in enumerate(zip(api_names(stack), api_ports(stack), strict=True)):
        home = f"home-{name}"
        env = server_env(stack, home, API_DOCKET_NAME)
        deps = list(base_deps)
        if i > 0:
            # Block types are registered once, by api-1, before the others start: several
            # processes registering at once on a fresh database race on uq_block_type__slug.
            env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
            deps.append(FIRST_API)
        if stack.monitoring.enabled:
            env["PREFECT_SERVER_METRICS_ENABLED"] = "true"  # serves /api/metrics
        out.append(
            Service(
                name=name,
                role="api",
                kind="daemon",
                # `prefect server start --no-services`, plus a drain (jobs/api_server.py)
                argv=("python", "-m", "prefectstack.jobs.api_server",
                      "--host", BIND_HOST, "--port", port(name)),
                env=env,
                ports=(listen,),
                volumes=(home,),
                depends_on=tuple(deps),
                probe=Probe("http", port=listen, path="/api/ready"),
            )
        )
    return out


def services(stack: Stack) -> list[Service]:
    if not stack.services.enabled:
        return []
    return [
        Service(
            name=SERVICES_PROCESS,
            role="services",
            kind="daemon",
            argv=("prefect", "server", "services", "start"),
            env=server_env(stack, "home-services"),
            volumes=("home-services",),
            # Needs the schema and the broker, not the API: it starts beside api-1.
            depends_on=("migrate",) + (() if stack.redis.mode == "external" else ("redis",)),
            probe=Probe("alive"),
        )
    ]
