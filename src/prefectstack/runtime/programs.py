"""How this host runs each kind of service: what the local backend adds to the topology
(where servers listen and keep their data, config files), still as placeholders that the
resolver fills in. Pure."""

from __future__ import annotations

from prefectstack.topology.placeholders import directory
from prefectstack.topology.service import LOOPBACK, Service

REDIS_CONF = "redis/redis.conf"


def argv(svc: Service) -> tuple[str, ...]:
    if svc.role == "postgres":
        settings = {"listen_addresses": LOOPBACK, "port": str(svc.ports[0]),
                    "unix_socket_directories": "", **svc.settings}
        flags = [a for key, value in settings.items() for a in ("-c", f"{key}={value}")]
        return ("postgres", "-D", directory("pgdata"), *flags)
    if svc.role == "redis":
        return ("redis-server", directory(REDIS_CONF.split("/")[0]) + "/redis.conf")
    return svc.argv


def files(svc: Service) -> dict[str, str]:
    """Files written (0600) before the start: the topology's, plus redis.conf."""
    if svc.role != "redis":
        return svc.files
    directives = {"bind": LOOPBACK, "port": str(svc.ports[0]), "dir": directory("redis"),
                  **svc.settings}
    lines = [f"{key} {value or chr(34) * 2}" for key, value in directives.items()]
    return svc.files | {REDIS_CONF: "\n".join(lines) + "\n"}


def env(svc: Service) -> dict[str, str]:
    """Clients here reach the edge at its public address, so they get its CA too."""
    return svc.env | svc.public_edge_env
