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
