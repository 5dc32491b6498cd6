"""How evenly the edge spreads requests over the API processes, with the real Caddy binary
and the edge's own `reverse_proxy` block in front of three loopback servers standing in for
API processes.

Issue 13 measured the local stack's three API processes at 0.04 / 0.63 / 0.66 CPU-s for
sequential requests. The cause: `lb_policy least_conn` counts every request in flight to a
process, long-lived ones included (a browser's websocket over HTTP/2, a streamed download,
a task-run call pinned to the first process). With one such stream open on a process, that
process has one request in flight and the others none, so a sequential client, which never
has more than one request in flight itself, is never sent there. Round robin spreads them
evenly whatever streams are open, and (the API processes being alike) also under
concurrency.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from caddy_front import caddy_in_front  # tests/unit/caddy_front.py

from prefectstack.topology.caddyfile import _proxy

REQUESTS = 90
PROCESSES = 3


class Upstreams:
    """Three HTTP servers counting the requests each answers (health probes aside); a GET of
    /stream stays open until `release` is set."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.streaming = threading.Event()
        self.release = threading.Event()
        self.servers = [self._server(i) for i in range(PROCESSES)]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.server_address[1]}" for s in self.servers]

    def _server(self, index: int) -> ThreadingHTTPServer:
        upstreams = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/stream":
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.flush()
                    upstreams.streaming.set()
                    upstreams.release.wait(120)
                    self.wfile.write(b"ok")
                    return
                if self.path != "/api/health":
                    upstreams.counts[index] += 1
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def close(self) -> None:
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[str, Upstreams]]:
    upstreams = Upstreams()
    try:
        with caddy_in_front(tmp_path, _proxy(upstreams.addresses)) as base:
            yield base, upstreams
    finally:
        upstreams.close()


def _sequential(base: str, upstreams: Upstreams) -> list[int]:
    upstreams.counts.clear()
    with httpx.Client(timeout=30) as client:
        for _ in range(REQUESTS):
            assert client.get(base + "/api/flows/x").status_code == 200
    spread = [upstreams.counts[i] for i in range(PROCESSES)]
    print(f"requests per API process, {REQUESTS} sequential: {spread}")
    return spread


def _even(spread: list[int]) -> bool:
    """Each process gets at least half its share (round robin gives exactly its share)."""
    return min(spread) >= REQUESTS // PROCESSES // 2


def test_sequential_requests_spread_evenly(edge: tuple[str, Upstreams]) -> None:
    base, upstreams = edge
    assert _even(_sequential(base, upstreams))


def test_a_long_lived_request_does_not_starve_its_process(
    edge: tuple[str, Upstreams],
) -> None:
    """With least_conn, the process holding the stream got 0 of 90 requests."""
    base, upstreams = edge
    stream = threading.Thread(
        target=lambda: httpx.get(base + "/stream", timeout=150), daemon=True)
    stream.start()
    assert upstreams.streaming.wait(60), "the stream did not reach an upstream"
    try:
        assert _even(_sequential(base, upstreams))
    finally:
        upstreams.release.set()
        stream.join(timeout=60)
