"""The API process's drain (jobs/api_server.py): after the drain signal its health check,
the one the edge's load balancer reads, fails, and everything else is still served."""

from __future__ import annotations

import os
import signal

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from prefectstack.jobs.api_server import DRAIN_SIGNAL, HEALTH_PATH, Drain


def _app() -> Starlette:
    async def ok(_request: object) -> JSONResponse:
        return JSONResponse(True)
    return Starlette(routes=[Route(HEALTH_PATH, ok), Route("/api/ready", ok),
                             Route("/api/variables/", ok, methods=["POST"])])


def test_health_fails_only_after_the_drain_and_everything_else_is_still_served() -> None:
    drain = Drain(_app())
    client = TestClient(drain)
    assert client.get(HEALTH_PATH).status_code == 200
    drain.start()
    health = client.get(HEALTH_PATH)
    assert health.status_code == 503
    assert health.headers["connection"] == "close"
    assert client.get("/api/ready").status_code == 200  # the supervisor's probe
    assert client.post("/api/variables/").status_code == 200


def test_the_drain_signal_starts_it() -> None:
    drain = Drain(_app())
    previous = signal.signal(DRAIN_SIGNAL, drain.start)
    try:
        os.kill(os.getpid(), DRAIN_SIGNAL)
        assert drain.draining
    finally:
        signal.signal(DRAIN_SIGNAL, previous)


def test_the_edge_checks_the_path_the_drain_fails() -> None:
    from prefectstack.topology import caddyfile

    assert f"health_uri {HEALTH_PATH}" in caddyfile._proxy(["a:1"])


def test_a_taken_port_is_found_before_prefect_is_imported() -> None:
    """As `prefect server start` does: otherwise each restart of an API process whose port
    another program holds costs the app's whole start-up before uvicorn's bind fails."""
    import socket
    import subprocess
    import sys

    from prefectstack.jobs.api_server import port_taken

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_taken("127.0.0.1", port) is not None
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "prefectstack.jobs.api_server",
             "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"error: Port {port} is already in use (cannot listen on 127.0.0.1:{port}" in (
        done.stderr)
    assert "| prefect\n" not in done.stderr and " prefect.server" not in done.stderr
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        unused = free.getsockname()[1]
    assert port_taken("127.0.0.1", unused) is None
