"""`prefectstack worker join`: a Prefect process worker on this machine, for a remote stack."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from prefectstack import console
from prefectstack.errors import StackError
from prefectstack.urls import LOOPBACK_HOSTS, api_url

if TYPE_CHECKING:  # imported when a command runs: `--help` stays fast
    from prefectstack import prefect_api


@click.group()
def worker() -> None:
    """Workers on other machines."""


@worker.command()
@click.option("--server", envvar="PREFECTSTACK_SERVER", required=True, metavar="URL",
              help="The stack's address, e.g. https://prefect.example.com "
                   "[env PREFECTSTACK_SERVER]")
@click.option("--key", envvar="PREFECTSTACK_API_KEY", metavar="KEY",
              help="API key (`prefectstack keys create --role worker`), or for a stack without "
                   "an edge its API's `user:password` "
                   "[env PREFECTSTACK_API_KEY, preferred: keeps it out of the process list]")
@click.option("--pool", required=True, help="Work pool to take flow runs from.")
@click.option("--ca", "ca_file", envvar="PREFECTSTACK_CA_FILE",
              type=click.Path(exists=True, dir_okay=False),
              help="CA certificate of the stack's edge (default: the system's CAs).")
@click.option("--name", default=None, help="Worker name (default: <hostname>-<pool>).")
@click.option("--health-port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port of the worker's health endpoint, on 127.0.0.1.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Maximum concurrent flow runs.")
@click.option("--home", type=click.Path(file_okay=False), default=None,
              help="The worker's own PREFECT_HOME (default: ~/.prefectstack/workers/<name>).")
@click.option("--warm/--stock", default=True, show_default=True,
              help="--warm forks each flow run from a pre-imported parent (Linux; elsewhere "
                   "the stock worker); "
                   "--stock runs Prefect's own process worker (a fresh interpreter per run).")
def join(server: str, key: str | None, pool: str, ca_file: str | None, name: str | None,
         health_port: int, limit: int | None, home: str | None, warm: bool) -> None:
    """Run a process worker here against a remote stack, until stopped (Ctrl-C)."""
    import asyncio

    from prefectstack import prefect_api, tools

    # A key is sent as Bearer; `user:password` (a stack without an edge) as Basic.
    auth_string = key if key and ":" in key else None
    target = prefect_api.Target(_api_url(server), api_key=None if auth_string else key or None,
                                auth_string=auth_string, ca_file=ca_file)
    name = name or _default_name(pool)
    prefect_home = Path(home) if home else Path.home() / ".prefectstack" / "workers" / name
    asyncio.run(_preflight(target, pool))
    prefect_home.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", *worker_launcher(warm), "--pool", pool,
            "--type", "process", "--name", name, "--with-healthcheck"]
    if limit:
        argv += ["--limit", str(limit)]
    console.event(f"worker {name} joining pool {pool} at {target.api_url}")
    console.event(f"health: http://127.0.0.1:{health_port}/health; "
                  f"PREFECT_HOME: {prefect_home}; stop with Ctrl-C")
    sys.exit(tools.run_foreground(argv, env=worker_env(target, prefect_home, health_port)))


def worker_launcher(warm: bool) -> list[str]:
    """The module and arguments before `--pool`: the warm worker takes `prefect worker
    start`'s own options. It forks after importing, which only Linux makes safe (macOS's
    system frameworks are not fork-safe, Windows has no fork): elsewhere, the stock one."""
    if warm and sys.platform.startswith("linux"):
        return ["prefectstack.warm.worker"]
    return ["prefect", "worker", "start"]


def worker_env(target: prefect_api.Target, home: Path, health_port: int) -> dict[str, str]:
    """This process's environment without any PREFECT_* setting (no profile, URL or
    insecure-TLS switch leaks in), plus exactly what the worker needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": target.api_url,
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": str(health_port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if target.auth_string:
        env["PREFECT_API_AUTH_STRING"] = target.auth_string
    elif target.api_key:
        # As an auth string (`<label>:<key>`), not PREFECT_API_KEY: against a self-hosted
        # URL Prefect's websockets (events, cancellation, logs) carry only the auth string.
        env["PREFECT_API_AUTH_STRING"] = f"{_label(home)}:{target.api_key}"
    if target.ca_file:
        env["PREFECT_API_SSL_CERT_FILE"] = str(Path(target.ca_file).resolve())
    return env


def _label(home: Path) -> str:
    """The user part of the auth string: only a label when the secret is a key."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", home.name) or "worker"


def _api_url(server: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StackError(f"--server {server}: expected https://HOST[:PORT]", exit_code=2)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        console.warn(f"{server} is plain http: the API key crosses the network unencrypted")
    return api_url(server)


def _default_name(pool: str) -> str:
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "host"
    return f"{host}-{pool}"


async def _preflight(target: prefect_api.Target, pool: str) -> None:
    """Fail here, with a clear message, on a wrong URL, key or CA, not in the worker's loop."""
    from prefectstack import prefect_api

    async with prefect_api.connect(target) as api:
        found = await api.read_work_pool(pool)
    if found is None:
        console.warn(f"work pool {pool} does not exist yet; the worker will try to create it "
                     "(declare it under `work_pools` and run `prefectstack deploy apply` if "
                     "its key may not)")
    elif found.get("type") != "process":
        raise StackError(
            f"work pool {pool} is of type `{found.get('type')}`; `worker join` runs process "
            "workers", hint="use a process pool, or run that type's own worker", exit_code=2)


COMMANDS = [worker]
