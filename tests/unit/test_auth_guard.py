"""The body check in-process (auth/bodies.py, auth/guard.py), in front of a real HTTP server
standing in for an API process: what it lets through, exactly as it lets it through.

What Prefect itself does with the requests is covered by tests/integration/test_attacks.py.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, read
from prefectstack.auth.bodies import (
    BODY_RULES,
    WORKER_RUN_FIELDS,
    body_rule,
    check_run_from_deployment,
    check_run_update,
    check_runs_from_deployment,
    needs_body_check,
)
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.auth.throttle import Throttle
from prefectstack.topology.caddyfile import BODY_CHECKED_POSTS

RUN = "/api/deployments/0b6c/create_flow_run"
FLOW_RUN = "/api/flow_runs/0b6c"


# -- the rules (pure) ------------------------------------------------------------------------


def test_operator_runs_with_parameters_but_not_with_job_variables() -> None:
    ok = check_run_from_deployment
    assert ok(Role.OPERATOR, {"parameters": {"args": ["x"]}}) is None
    assert ok(Role.OPERATOR, {"job_variables": {}}) is None
    assert ok(Role.OPERATOR, {"job_variables": None}) is None
    refused = ok(Role.OPERATOR, {"job_variables": {"command": "id"}})
    assert refused and "needs developer" in refused
    assert ok(Role.OPERATOR, ["not", "an", "object"]) == "the body must be a JSON object"
    assert check_runs_from_deployment(Role.OPERATOR, [{}, {"job_variables": {}}]) \
        is None
    assert check_runs_from_deployment(Role.OPERATOR, [{}, {"job_variables": {"x": 1}}])


def test_a_worker_sets_only_what_prefects_worker_and_engine_send() -> None:
    # workers/base.py: the infrastructure pid; flow_engine.py: name, version, retry policy
    assert check_run_update(Role.WORKER, {"infrastructure_pid": "host:42"}) is None
    assert check_run_update(Role.WORKER, {"flow_version": "1", "empirical_policy": {}}) is None
    assert check_run_update(Role.WORKER, {"name": "templated-name"}) is None
    refused = check_run_update(Role.WORKER, {"infrastructure_pid": "1", "job_variables": {},
                                             "parameters": {"command": "id"}})
    assert refused == ("worker may not change job_variables, parameters of a flow run: "
                       "needs developer")
    assert {"infrastructure_pid", "name", "flow_version", "empirical_policy"} == WORKER_RUN_FIELDS


def test_only_roles_below_developer_need_their_body_checked() -> None:
    for role in (Role.OPERATOR, Role.WORKER, Role.VIEWER):
        assert needs_body_check(role, "POST", RUN) is not None
    for role in (Role.DEVELOPER, Role.ADMIN, None):
        assert needs_body_check(role, "POST", RUN) is None
    assert body_rule("POST", RUN + "/") is not None  # compared without the trailing slash
    assert body_rule("POST", "/api/flow_runs/filter") is None
    assert body_rule("PATCH", FLOW_RUN + "/labels") is None
    assert body_rule("GET", FLOW_RUN) is None


def test_the_edge_routes_every_body_checked_write_to_the_check() -> None:
    """Every body rule's path is matched by the edge's matchers (Caddy's `*` is one segment
    here), so the check is not only forward_auth's fail-closed refusal."""
    posts = [re.compile(re.escape(p).replace(r"\*", "[^/]+") + "$") for p in BODY_CHECKED_POSTS]
    for rule in BODY_RULES:
        concrete = re.sub(r"\{[^}]+\}", "0b6c", rule.pattern)
        if rule.method == "PATCH":
            assert concrete.startswith("/api/flow_runs/"), rule
        else:
            assert any(p.match(concrete) for p in posts), rule


# -- the proxy -------------------------------------------------------------------------------


@dataclass
class Api:
    """A real HTTP server on a free loopback port that records what reaches it."""

    received: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    keep_alive: bool = False  # answer as HTTP/1.1, keeping each connection open for more

    def start(self) -> ThreadingHTTPServer:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if api.keep_alive else "HTTP/1.0"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                api.received.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers), "body": body,
                                     "peer": self.client_address})
                answer = json.dumps({"id": "run-1"}).encode()
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class Guarded:
    client: TestClient
    store: Store
    api: Api
    audit_path: Path

    def send(self, method: str, path: str, key: str, body: Any) -> Any:
        return self.client.request(method, path, content=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "X-Forwarded-For": "203.0.113.9", "X-Prefectstack-Role": "admin"})

    def audit(self) -> list[tuple[int, str | None, str]]:
        return [(r.status, r.role, r.reason) for r in read(self.audit_path)]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    api = Api()
    server = api.start()
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    config = AuthConfig(api_auth_string="prefectstack:s3cret")
    # the first address refuses connections: a write that never reached it goes to the next
    app = create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(), config,
                     api_upstreams=["127.0.0.1:9", f"127.0.0.1:{api.port}"])
    with TestClient(app, base_url="https://prefect.example") as client:
        yield Guarded(client, store, api, tmp_path / "audit.log")
    server.shutdown()


def test_operator_run_with_parameters_is_proxied_with_the_apis_credentials(
    guarded: Guarded,
) -> None:
    key = guarded.store.create_key("ops", Role.OPERATOR)
    response = guarded.send("POST", RUN + "?x=1", key, {"parameters": {"args": ["a"]}})
    assert response.status_code == 201 and response.json() == {"id": "run-1"}
    (sent,) = guarded.api.received
    assert sent["path"] == RUN + "?x=1"
    assert json.loads(sent["body"]) == {"parameters": {"args": ["a"]}}
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["authorization"].startswith("Basic ") and key not in str(headers)
    assert not any(k.startswith("x-prefectstack-") for k in headers)
    assert guarded.audit() == [(200, "operator", "operator may POST "
                               "/api/deployments/{id}/create_flow_run (body checked)")]


def test_operator_job_variables_are_refused_before_the_api(guarded: Guarded) -> None:
    key = guarded.store.create_key("ops", Role.OPERATOR)
    body = {"job_variables": {"command": "id"}, "job_variables_again": 1}
    response = guarded.send("POST", RUN, key, body)
    assert response.status_code == 403
    assert "may not override job_variables" in response.json()["detail"]
    bulk = guarded.send("POST", RUN + "/bulk", key, [{"job_variables": {"env": {"X": "1"}}}])
    assert bulk.status_code == 403
    assert guarded.api.received == []
    assert [a[0] for a in guarded.audit()] == [403, 403]


def test_duplicate_keys_reach_the_api_as_checked(guarded: Guarded) -> None:
    """What the API parses is what was checked: no parser differences to hide behind."""
    key = guarded.store.create_key("ops", Role.OPERATOR)
    raw = b'{"job_variables": {"command": "id"}, "job_variables": {}}'
    response = guarded.client.post(RUN, content=raw, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 201
    assert json.loads(guarded.api.received[0]["body"]) == {"job_variables": {}}
    assert b"command" not in guarded.api.received[0]["body"]


def test_worker_patches_only_the_infrastructure_pid(guarded: Guarded) -> None:
    key = guarded.store.create_key("wk", Role.WORKER)
    assert guarded.send("PATCH", FLOW_RUN, key, {"infrastructure_pid": "h:1"}).status_code == 201
    refused = guarded.send("PATCH", FLOW_RUN, key, {"parameters": {"command": "id"}})
    assert refused.status_code == 403 and "parameters" in refused.json()["detail"]
    new = guarded.send("POST", "/api/flow_runs/", key, {"job_variables": {"command": "id"}})
    assert new.status_code == 403
    assert len(guarded.api.received) == 1


def test_developer_overrides_job_variables_untouched(guarded: Guarded) -> None:
    key = guarded.store.create_key("dev", Role.DEVELOPER)
    raw = b'{"job_variables": {"env": {"A": "1"}}}'
    response = guarded.client.post(RUN, content=raw, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 201
    assert guarded.api.received[0]["body"] == raw


def test_refusals_before_the_body(guarded: Guarded) -> None:
    viewer = guarded.store.create_key("v", Role.VIEWER)
    assert guarded.send("POST", RUN, viewer, {}).status_code == 403  # the role table
    assert guarded.client.post(RUN, content=b"{}").status_code == 401  # no credentials
    operator = guarded.store.create_key("ops", Role.OPERATOR)
    garbled = guarded.client.post(RUN, content=b"{not json",
                                  headers={"Authorization": f"Bearer {operator}"})
    assert garbled.status_code == 400
    assert guarded.api.received == []


# -- an API process that dies mid-request ----------------------------------------------------


def _dying_api() -> tuple[socket.socket, list[bytes]]:
    """A loopback listener that reads each request and closes without an answer, as an API
    process killed with -9 while the request is in flight does."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    return listener, seen


@pytest.fixture
def behind_a_dying_api(tmp_path: Path) -> Iterator[tuple[Guarded, list[bytes]]]:
    api = Api()
    server = api.start()
    listener, seen = _dying_api()
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    app = create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(),
                     AuthConfig(api_auth_string="prefectstack:s3cret"),
                     api_upstreams=[f"127.0.0.1:{listener.getsockname()[1]}",
                                    f"127.0.0.1:{api.port}"])
    with TestClient(app, base_url="https://prefect.example") as client:
        yield Guarded(client, store, api, tmp_path / "audit.log"), seen
    listener.close()
    server.shutdown()


def test_a_read_whose_api_process_dies_is_answered_by_the_next(
    behind_a_dying_api: tuple[Guarded, list[bytes]],
) -> None:
    guarded, seen = behind_a_dying_api
    key = guarded.store.create_key("ops", Role.OPERATOR)
    answer = guarded.send("POST", "/api/block_documents/filter", key, {"limit": 5})
    assert answer.status_code == 201
    assert len(seen) == 1 and len(guarded.api.received) == 1


def test_a_write_whose_api_process_dies_is_not_sent_again(
    behind_a_dying_api: tuple[Guarded, list[bytes]],
) -> None:
    """The dead process may have created the run: sending it again could make two."""
    guarded, seen = behind_a_dying_api
    key = guarded.store.create_key("ops", Role.OPERATOR)
    answer = guarded.send("POST", RUN, key, {"parameters": {}})
    assert answer.status_code == 502
    assert len(seen) == 1 and guarded.api.received == []


def test_the_edge_retries_exactly_the_role_tables_post_reads() -> None:
    """READ_POSTS (the edge's retry matcher) is the role table's POST reads, as Caddy paths."""
    from prefectstack.auth.roles import Kind
    from prefectstack.auth.routes import RULES
    from prefectstack.topology.caddyfile import READ_POSTS

    reads = {re.sub(r"\{[^}]+\}", "*", r.pattern) for r in RULES
             if r.method == "POST" and r.kind is Kind.READ}
    assert set(READ_POSTS) == reads
    assert len(READ_POSTS) == len(set(READ_POSTS))


def test_reads_of_secret_values_in_a_body_are_audited_whoever_makes_them(
    guarded: Guarded,
) -> None:
    """`include_secrets` in the block list's body: a worker's (Block.load()) and a
    developer's reads of secret values are audited; a list without secrets is not."""
    worker = guarded.store.create_key("wk", Role.WORKER)
    developer = guarded.store.create_key("dev", Role.DEVELOPER)
    path = "/api/block_documents/filter"
    assert guarded.send("POST", path, worker, {"include_secrets": True}).status_code == 201
    assert guarded.send("POST", path, developer, {"include_secrets": "yes"}).status_code == 201
    assert guarded.send("POST", path, developer, {"include_secrets": False}).status_code == 201
    assert guarded.send("POST", path, worker, {"limit": 1}).status_code == 201
    audited = guarded.audit()
    assert [(status, role) for status, role, _ in audited] == [(200, "worker"),
                                                              (200, "developer")]
    assert all("with secrets" in reason for *_, reason in audited)


def test_every_write_goes_on_a_fresh_connection_even_to_a_keep_alive_api(
    tmp_path: Path,
) -> None:
    """The auth service keeps one HTTP client (building one per request cost most of its CPU)
    but no idle connection: a write sent on a kept connection that the API process is just
    closing would fail, and a write is never sent twice."""
    api = Api(keep_alive=True)
    server = api.start()
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    app = create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(),
                     AuthConfig(api_auth_string="prefectstack:s3cret"),
                     api_upstreams=[f"127.0.0.1:{api.port}"])
    try:
        with TestClient(app, base_url="https://prefect.example") as client:
            guarded = Guarded(client, store, api, tmp_path / "audit.log")
            key = store.create_key("ops", Role.OPERATOR)
            for _ in range(3):
                assert guarded.send("POST", RUN, key, {"parameters": {}}).status_code == 201
    finally:
        server.shutdown()
    peers = [r["peer"] for r in api.received]
    assert len(peers) == 3 and len(set(peers)) == 3
