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
    if svc.role == "worker" and svc.argv[:1] == ("prefect",):
        # A stock process worker's flow runs are stopped when it stops or dies, even with
        # the supervisor killed (jobs/reaper.py); the warm worker's die with its forkserver.
        return (*REAPER, "-m", "prefect", *svc.argv[1:])
    return svc.argv


REAPER = ("python", "-m", "prefectstack.jobs.reaper")


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


PER_SERVICE = "/"
"""program paths keyed `<service>/<program>` apply to that service alone"""


def for_service(service: str, paths: dict[str, str]) -> dict[str, str]:
    """`paths` (logical program -> path) for one service only, to merge into the program
    paths the local backend resolves argv with."""
    return {f"{service}{PER_SERVICE}{program}": path for program, path in paths.items()}


def paths_for(svc: Service, paths: dict[str, str]) -> dict[str, str]:
    """The program paths `svc` runs with: the shared ones, then its own."""
    prefix = f"{svc.name}{PER_SERVICE}"
    shared = {k: v for k, v in paths.items() if PER_SERVICE not in k}
    own = {k.removeprefix(prefix): v for k, v in paths.items() if k.startswith(prefix)}
    return shared | own


PYTHON_PROGRAMS = ("python", "prefect")
TMP_DIR = "tmp"


def tmp_dir(svc: Service) -> str | None:
    """Where a Python service's TMPDIR is, relative to the state dir: its own, so that a
    shared /tmp (a `/tmp/runner_storage` another user made) does not matter, and the
    worker's runner storage (`$TMPDIR/runner_storage`, Prefect's runner) is private."""
    return f"{TMP_DIR}/{svc.name}" if svc.argv and svc.argv[0] in PYTHON_PROGRAMS else None
