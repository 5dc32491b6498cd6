"""The websocket relay in-process, in front of a real websocket server that speaks Prefect's
handshake (`prefect` subprotocol, first message `{"type": "auth"}`, `auth_success`).

The upstream here is a small `websockets` server, not Prefect: what Prefect's server does
with the relayed socket is covered by tests/integration/test_promises.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.server import ServerConnection, serve

from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, read
from prefectstack.auth.relay import Credential, Upstreams, from_token, still_valid
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.auth.throttle import Throttle

PROTOCOL = ["prefect"]


class Upstream:
    """A real websocket server on a free loopback port: answers Prefect's handshake, then
    echoes every message prefixed with the path it was opened on."""

    def __init__(self) -> None:
        self.port = 0
        self.opened: list[str] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handler(self, socket: ServerConnection) -> None:
        path = socket.request.path if socket.request else "?"
        self.opened.append(path)
        if socket.subprotocol == "prefect":
            first = json.loads(await socket.recv())
            assert first["type"] == "auth"
            await socket.send(json.dumps({"type": "auth_success"}))
        async for message in socket:
            await socket.send(f"{path} {message}")

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0, subprotocols=["prefect"]) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    def __enter__(self) -> Upstream:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    yield store
    store.close()


def relay_client(store: Store, tmp_path: Path, upstreams: list[str]) -> TestClient:
    app = create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(),
                     AuthConfig(public_origin="https://prefect.example"),
                     api_upstreams=upstreams, recheck_seconds=0.2)
    return TestClient(app, base_url="https://prefect.example")


def audit(tmp_path: Path) -> list[Any]:
    return list(read(tmp_path / "audit.log"))


def test_in_band_key_is_checked_then_frames_are_relayed(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    key = store.create_key("ci", Role.DEVELOPER)
    with relay_client(store, tmp_path, [f"127.0.0.1:{upstream.port}"]) as client, \
            client.websocket_connect("/api/events/in", subprotocols=PROTOCOL) as socket:
        socket.send_text(json.dumps({"type": "auth", "token": f"ci:{key}"}))
        assert json.loads(socket.receive_text()) == {"type": "auth_success"}
        socket.send_text("hello")
        assert socket.receive_text() == "/api/events/in hello"
    assert upstream.opened == ["/api/events/in"]


@pytest.mark.parametrize("token", [None, "", "pfs_00000000_nottherightkeyatall00", "x:wrong"])
def test_missing_or_wrong_token_closes_with_1008_and_is_audited(
    store: Store, tmp_path: Path, upstream: Upstream, token: str | None
) -> None:
    store.add_user("alice", Role.ADMIN, "the right password")
    with relay_client(store, tmp_path, [f"127.0.0.1:{upstream.port}"]) as client, \
            client.websocket_connect("/api/events/in", subprotocols=PROTOCOL) as socket:
        socket.send_text(json.dumps({"type": "auth", "token": token}))
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 1008
    assert upstream.opened == []
    [record] = audit(tmp_path)
    assert record.status == 401 and record.path == "/api/events/in"


def test_a_role_that_may_not_use_the_route_is_refused(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    key = store.create_key("reader", Role.VIEWER)  # events/in needs developer (or worker)
    with relay_client(store, tmp_path, [f"127.0.0.1:{upstream.port}"]) as client, \
            client.websocket_connect("/api/events/in", subprotocols=PROTOCOL) as socket:
        socket.send_text(json.dumps({"type": "auth", "token": key}))
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 1008 and upstream.opened == []
    assert audit(tmp_path)[0].status == 403


def test_revoked_key_closes_the_open_socket(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    key = store.create_key("laptop", Role.VIEWER)
    with relay_client(store, tmp_path, [f"127.0.0.1:{upstream.port}"]) as client, \
            client.websocket_connect("/api/events/out", subprotocols=PROTOCOL) as socket:
        socket.send_text(json.dumps({"type": "auth", "token": key}))
        assert json.loads(socket.receive_text())["type"] == "auth_success"
        store.revoke_key(key[:12])
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 1008
    assert any("revoked" in r.reason for r in audit(tmp_path))


def test_session_cookie_needs_the_stacks_own_origin(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    store.add_user("bob", Role.VIEWER, "a long password")
    token = store.create_session("bob")
    cookies = {"__Host-prefectstack": token}
    with relay_client(store, tmp_path, [f"127.0.0.1:{upstream.port}"]) as client:
        client.cookies.update(cookies)
        with client.websocket_connect("/api/logs/out", subprotocols=PROTOCOL,
                                      headers={"Origin": "https://prefect.example"}) as socket:
            socket.send_text(json.dumps({"type": "auth", "token": None}))
            assert json.loads(socket.receive_text())["type"] == "auth_success"
        with pytest.raises(WebSocketDisconnect), client.websocket_connect(
                "/api/logs/out", subprotocols=PROTOCOL,
                headers={"Origin": "https://evil.example"}):
            pass
    assert any(r.status == 403 and "cross-origin" in r.reason for r in audit(tmp_path))


def test_a_dead_upstream_is_skipped(store: Store, tmp_path: Path, upstream: Upstream) -> None:
    key = store.create_key("ci", Role.WORKER)
    dead = "127.0.0.1:1"  # nothing listens on port 1
    with relay_client(store, tmp_path, [dead, f"127.0.0.1:{upstream.port}"]) as client:
        for _ in range(2):  # each turn starts at the next upstream; both must get through
            with client.websocket_connect("/api/events/in", subprotocols=PROTOCOL) as socket:
                socket.send_text(json.dumps({"type": "auth", "token": key}))
                assert json.loads(socket.receive_text())["type"] == "auth_success"
    assert upstream.opened == ["/api/events/in", "/api/events/in"]


def test_tokens_and_credentials() -> None:
    assert from_token("pfs_abc") == Credential(authorization="Bearer pfs_abc")
    basic = from_token("laptop:pfs_abc").authorization or ""
    assert base64.b64decode(basic.removeprefix("Basic ")) == b"laptop:pfs_abc"
    turns = Upstreams(["a", "b", "c"])
    assert [turns.in_turn()[0] for _ in range(4)] == ["a", "b", "c", "a"]
    with pytest.raises(ValueError):
        Upstreams([])


def test_still_valid_follows_the_store(store: Store) -> None:
    key = store.create_key("k", Role.OPERATOR)
    credential = from_token(f"label:{key}")
    assert still_valid(store, credential) is not None
    store.revoke_key(key[:12])
    assert still_valid(store, credential) is None
    store.add_user("carol", Role.VIEWER, "a long password")
    by_password = from_token("carol:a long password")
    assert still_valid(store, by_password) is not None
    store.remove_user("carol")
    assert still_valid(store, by_password) is None


def test_task_worker_subscriptions_go_to_the_first_api_process() -> None:
    """Prefect keeps background task runs in the memory of the API process that scheduled
    them; the edge sends every task-run call to the first healthy one, so subscriptions
    must go there too, never round robin."""
    upstreams = Upstreams(["api-1", "api-2", "api-3"])
    pinned = [upstreams.for_path("/api/task_runs/subscriptions/scheduled") for _ in range(3)]
    assert pinned == [["api-1", "api-2", "api-3"]] * 3
    spread = {upstreams.for_path("/api/events/in")[0] for _ in range(3)}
    assert spread == {"api-1", "api-2", "api-3"}


def test_the_edge_pins_task_run_calls_to_the_first_api_process() -> None:
    from prefectstack import topology
    from prefectstack.stack.loader import parse_stack

    stack = parse_stack("version: 1\napi:\n  replicas: 2\n  port: 5000\n", {})
    caddyfile = {s.name: s for s in topology.build(stack)}["edge"].files["edge-config/Caddyfile"]
    block = caddyfile[caddyfile.index("handle /api/task_runs/* {"):]
    assert block.splitlines()[1].strip() == "reverse_proxy ${addr.api-1} ${addr.api-2} {"
    assert block.splitlines()[2].strip() == "lb_policy first"
