"""The gate in front of the auth service: only the edge gets answers (and only its
X-Forwarded-For is believed), bad headers never make a 500, and every 5xx is audited."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from prefectstack.auth import gate
from prefectstack.auth.app import UPSTREAM_AUTH_HEADER, AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, Record, read
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.auth.throttle import Throttle
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.topology import caddyfile
from prefectstack.topology.edge import edge as edge_services

SECRET = "edge-secret-value"
PASSWORD = "correct horse battery"
EDGE = {gate.EDGE_HEADER: SECRET}


class Service:
    def __init__(self, client: TestClient, audit_path: Path, key: str) -> None:
        self.client = client
        self.audit_path = audit_path
        self.key = key

    def audit(self) -> list[Record]:
        return list(read(self.audit_path))

    def verify(self, headers: dict[str, str], uri: str = "/api/flows/abc") -> httpx.Response:
        sent = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": uri,
                "X-Forwarded-Proto": "https", "X-Forwarded-Host": "prefect.example", **headers}
        raw = {k: v.encode("latin-1") for k, v in sent.items()}  # as any client may send
        answer: httpx.Response = self.client.get("/auth/verify", headers=raw)
        return answer

    def sign_in(self, headers: dict[str, str], password: str = "wrong") -> int:
        answer = self.client.post("/auth/login", data={"username": "ada", "password": password},
                                  headers={"Origin": "https://prefect.example", **headers})
        return int(answer.status_code)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    store.add_user("ada", Role.ADMIN, PASSWORD)
    key = store.create_key("viewer-key", Role.VIEWER)
    audit = AuditLog(tmp_path / "audit.log")
    throttle = Throttle(free=1, lock_after=3, lockout=300)
    app = create_app(store, audit, throttle, AuthConfig(api_auth_string="prefectstack:pw"))
    wrapped = gate.Gate(app, audit, edge_secret=SECRET)
    with TestClient(wrapped, base_url="https://prefect.example", follow_redirects=False) as client:
        yield Service(client, tmp_path / "audit.log", key)


def test_without_the_edges_header_only_the_sign_in_page_answers(service: Service) -> None:
    assert service.client.get("/auth/login").status_code == 200  # the readiness probe
    for answer in [
        service.verify({"Authorization": f"Bearer {service.key}"}),
        service.verify({"Authorization": f"Bearer {service.key}", gate.EDGE_HEADER: "guess"}),
        service.client.post("/auth/login", data={"username": "ada", "password": PASSWORD}),
        service.client.get("/api/admin/settings"),
    ]:
        assert answer.status_code == 403
        # a viewer key never buys the API's own (admin) credentials off the edge
        assert UPSTREAM_AUTH_HEADER.lower() not in answer.headers
    refused = service.audit()
    assert [r.status for r in refused] == [403] * 4
    assert all(r.reason == "refused: not from the edge" for r in refused)
    allowed = service.verify({"Authorization": f"Bearer {service.key}", **EDGE})
    assert allowed.status_code == 200 and UPSTREAM_AUTH_HEADER.lower() in allowed.headers


def test_a_caller_that_isnt_the_edge_cannot_choose_its_address(service: Service) -> None:
    for n in range(3):
        service.verify({"X-Forwarded-For": f"203.0.113.{n}"})
    assert {r.client for r in service.audit()} == {"testclient"}  # the peer, not the header
    # through the edge the forwarded address is believed (the edge sets it itself)
    service.verify({"X-Forwarded-For": "198.51.100.7", **EDGE})
    assert service.audit()[-1].client == "198.51.100.7"


def test_sign_in_through_the_edge_is_throttled_per_account_across_addresses(
    service: Service,
) -> None:
    # the per-address limit (free=1) never triggers: every attempt comes from a new address;
    # the account's (5 free, then 1 s, 2 s, ...) does
    statuses = [service.sign_in({"X-Forwarded-For": f"203.0.113.{n}", **EDGE})
                for n in range(7)]
    assert statuses[:5] == [401] * 5
    assert 429 in statuses[5:]
    # and the right password from yet another address waits too
    assert service.sign_in({"X-Forwarded-For": "203.0.113.99", **EDGE}, PASSWORD) == 429


BAD_HEADERS: list[dict[str, str]] = [
    {"Origin": "https://localhost:abc"},
    {"Origin": "https://["},
    {"Origin": "http://localhost:99999"},
    {"X-Forwarded-Host": "["},
    {"X-Forwarded-Host": "localhost:abc", "Origin": "https://localhost"},
    {"Authorization": "Basic é"},
    {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
    {"Authorization": "Bearer é\x01"},
    {"Authorization": "Negotiate"},
    {"Cookie": "__Host-prefectstack=é; x"},
    {"X-Forwarded-Method": "É"},
    {"X-Forwarded-Uri": "//[/api/flows"},
    {"X-Forwarded-Uri": "/api/%ff%fe"},
    {"X-Forwarded-Uri": "http://[::1/api/flows"},
]


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=[str(h) for h in BAD_HEADERS])
def test_bad_headers_never_make_a_500(service: Service, headers: dict[str, str]) -> None:
    answer = service.verify({**EDGE, "Authorization": f"Bearer {service.key}",
                             "X-Forwarded-Method": "POST", **headers})
    assert answer.status_code < 500, answer.text
    form = service.client.post("/auth/login", data={"username": "ada", "password": "x"},
                               headers={k: v.encode("latin-1")
                                        for k, v in {**EDGE, **headers}.items()})
    assert form.status_code < 500, form.text


def _failing_app(audit: AuditLog) -> gate.Gate:
    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def upstream_down(request: Request) -> Response:
        return JSONResponse({"detail": "no API process answered"}, 502)

    app = Starlette(routes=[Route("/auth/verify", boom), Route("/ui-settings", upstream_down)])
    return gate.Gate(app, audit, edge_secret=SECRET)


def test_every_5xx_answer_is_audited(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    with TestClient(_failing_app(audit), raise_server_exceptions=False) as client:
        failed = client.get("/auth/verify", headers={
            **EDGE, "X-Forwarded-Method": "DELETE", "X-Forwarded-Uri": "/api/flows/x?y=1",
            "X-Forwarded-For": "198.51.100.7"})
        assert failed.status_code == 500
        assert client.get("/ui-settings", headers=EDGE).status_code == 502
    first, second = read(tmp_path / "audit.log")
    assert (first.status, first.method, first.path, first.client) == (
        500, "DELETE", "/api/flows/x", "198.51.100.7")
    assert "RuntimeError" in first.reason
    assert (second.status, second.path) == (502, "/ui-settings")


def test_the_edge_sends_the_header_the_gate_checks_and_never_to_the_api() -> None:
    assert caddyfile.EDGE_HEADER == gate.EDGE_HEADER
    stack = Stack.model_validate({"version": CURRENT_VERSION, "name": "demo"})
    (edge,) = edge_services(stack)
    text = edge.files["edge-config/Caddyfile"]
    assert f"\trequest_header {gate.EDGE_HEADER} {{env.{caddyfile.EDGE_SECRET_ENV}}}\n" in text
    proxies_to_api = text.count("lb_policy")
    assert text.count(f"header_up -{gate.EDGE_HEADER}") == proxies_to_api > 0
    assert edge.env[caddyfile.EDGE_SECRET_ENV] == "${secret.edge_secret}"
