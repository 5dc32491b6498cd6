"""The edge's retries with the real Caddy binary: a read in flight to an API process that
dies is answered by the next process; a write is never sent twice.

Two loopback servers stand in for API processes: one answers, the other answers its health
probe but drops every other request after reading it (as a process killed with -9 does).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from caddy_front import caddy_in_front  # tests/unit/caddy_front.py

from prefectstack.topology.caddyfile import _proxy


@dataclass
class Upstream:
    dies: bool
    requests: list[str] = field(default_factory=list)
    listener: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            line = head.split(b"\r\n")[0].decode()
            if line.startswith("GET /api/health"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                return
            self.requests.append(f"{line.split()[0]} {line.split()[1]} {body.decode()}")
            if self.dies:
                return  # closed without an answer
            answer = b"answered:" + body
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                         % len(answer) + answer)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[str, Upstream, Upstream]]:
    dying, alive = Upstream(dies=True), Upstream(dies=False)
    # "first": the dying process is always chosen first, so every request meets it
    proxy = _proxy([dying.address, alive.address], policy="first")
    try:
        with caddy_in_front(tmp_path, proxy) as base:
            yield base, dying, alive
    finally:
        dying.listener.close()
        alive.listener.close()


def test_a_read_post_in_flight_to_a_dead_process_is_answered_by_the_next(
    edge: tuple[str, Upstream, Upstream],
) -> None:
    base, dying, alive = edge
    answer = httpx.post(base + "/api/flow_runs/filter", json={"limit": 5}, timeout=30)
    assert answer.status_code == 200
    assert answer.text == 'answered:{"limit":5}'  # the body was sent again, whole
    assert dying.requests == ['POST /api/flow_runs/filter {"limit":5}']
    assert alive.requests == ['POST /api/flow_runs/filter {"limit":5}']


def test_a_get_is_retried_too(edge: tuple[str, Upstream, Upstream]) -> None:
    base, dying, alive = edge
    assert httpx.get(base + "/api/deployments/abc", timeout=30).status_code == 200
    assert len(dying.requests) == 1 and len(alive.requests) == 1


def test_a_write_in_flight_to_a_dead_process_is_not_sent_again(
    edge: tuple[str, Upstream, Upstream],
) -> None:
    """The dead process may have done it: a second copy could create a second run."""
    base, dying, alive = edge
    answer = httpx.post(base + "/api/deployments/abc/create_flow_run", json={}, timeout=30)
    assert answer.status_code == 502
    assert len(dying.requests) == 1 and alive.requests == []
