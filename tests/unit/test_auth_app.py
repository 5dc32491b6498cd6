"""The forward_auth app in-process: what Caddy would send, what it gets back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from prefectstack.apikeys import key_prefix
from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, Record, read
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.auth.throttle import Throttle

PASSWORD = "correct horse battery"
ORIGIN = "https://prefect.example"
COOKIE = "__Host-prefectstack"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Edge:
    client: TestClient
    store: Store
    audit_path: Path
    clock: Clock

    def verify(
        self, method: str, uri: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        sent = {
            "X-Forwarded-Method": method,
            "X-Forwarded-Uri": uri,
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "prefect.example",
            **(headers or {}),
        }
        response = self.client.get("/auth/verify", headers=sent)
        return response.status_code, dict(response.headers), response.text

    def audit(self) -> list[Record]:
        return list(read(self.audit_path))

    def sign_in(self, username: str, password: str = PASSWORD, **form: str) -> str | None:
        response = self.client.post(
            "/auth/login",
            data={"username": username, "password": password, **form},
            headers={"Origin": ORIGIN, "X-Forwarded-For": "203.0.113.9"},
        )
        return response.cookies.get(COOKIE)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    clock = Clock()
    store = Store(
        tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024), clock=clock
    )
    for name, role in [("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("ada", Role.ADMIN)]:
        store.add_user(name, role, PASSWORD)
    audit = AuditLog(tmp_path / "audit.log")
    throttle = Throttle(free=2, lock_after=4, lockout=300, clock=clock)
    app = create_app(store, audit, throttle, AuthConfig(), clock=clock)
    with TestClient(app, base_url="https://prefect.example", follow_redirects=False) as client:
        yield Edge(client, store, tmp_path / "audit.log", clock)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def test_probes_answer_without_credentials_and_are_not_audited(edge: Edge) -> None:
    assert edge.verify("GET", "/api/health")[0] == 200
    assert edge.verify("GET", "/api/ready")[0] == 200
    assert edge.audit() == []


def test_anonymous_api_call_is_401_and_audited(edge: Edge) -> None:
    status, headers, body = edge.verify("POST", "/api/flow_runs/filter")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert "credentials required" in body
    (line,) = edge.audit()
    assert (line.identity, line.status, line.path, line.client) == (
        None, 401, "/api/flow_runs/filter", "203.0.113.9",
    )  # fmt: skip


def test_anonymous_browser_navigation_goes_to_sign_in(edge: Edge) -> None:
    status, headers, _ = edge.verify("GET", "/runs?tab=x", {"Accept": "text/html,*/*"})
    assert status == 302
    assert headers["location"] == "/auth/login?next=%2Fruns%3Ftab%3Dx"
    # an API call from a browser still gets 401, not an HTML page
    assert edge.verify("GET", "/api/flows/x", {"Accept": "text/html"})[0] == 401


def test_viewer_key_reads_but_cannot_change(edge: Edge) -> None:
    key = edge.store.create_key("dash", Role.VIEWER)
    status, headers, _ = edge.verify("POST", "/api/flow_runs/filter", bearer(key))
    assert status == 200
    prefix = key_prefix(key)
    assert headers["x-prefectstack-user"] == f"key:{prefix}"
    assert headers["x-prefectstack-role"] == "viewer"
    status, _, body = edge.verify("POST", "/api/deployments/", bearer(key))
    assert status == 403
    assert "needs developer" in body
    (line,) = edge.audit()  # the read is not audited, the refusal is
    assert (line.status, line.key_prefix, line.role) == (403, prefix, "viewer")


def test_operator_schedules_runs_and_it_is_audited_without_secrets(edge: Edge) -> None:
    key = edge.store.create_key("ops", Role.OPERATOR)
    uri = "/api/deployments/0b6c/schedule?token=secret-in-query"
    assert edge.verify("POST", uri, bearer(key))[0] == 200
    (line,) = edge.audit()
    assert (line.status, line.method, line.path) == (
        200, "POST", "/api/deployments/0b6c/schedule",
    )  # fmt: skip
    text = edge.audit_path.read_text()
    assert key not in text and key[13:] not in text and "secret-in-query" not in text


def test_body_checked_writes_never_pass_forward_auth_below_developer(edge: Edge) -> None:
    """The edge sends these to the auth service's body check; one reaching forward_auth took
    a path the edge's matcher missed (a trailing slash, say): refused unless the body cannot
    matter for the role."""
    operator = edge.store.create_key("ops", Role.OPERATOR)
    worker = edge.store.create_key("wk", Role.WORKER)
    developer = edge.store.create_key("dev", Role.DEVELOPER)
    run = "/api/deployments/0b6c/create_flow_run"
    for key, method, uri in ((operator, "POST", run), (operator, "POST", run + "/"),
                             (worker, "POST", run), (worker, "PATCH", "/api/flow_runs/0b6c"),
                             (worker, "POST", "/api/flow_runs/")):
        status, _, body = edge.verify(method, uri, bearer(key))
        assert status == 403 and "body check" in body, (method, uri, body)
    for method, uri in (("POST", run), ("PATCH", "/api/flow_runs/0b6c")):
        assert edge.verify(method, uri, bearer(developer))[0] == 200
    # the run's labels are not a body-checked route
    assert edge.verify("PATCH", "/api/flow_runs/0b6c/labels", bearer(worker))[0] == 200


def test_basic_auth_with_user_password_or_with_a_key(edge: Edge) -> None:
    status, headers, _ = edge.verify("GET", "/api/flows/x", basic("otto", PASSWORD))
    assert status == 200 and headers["x-prefectstack-user"] == "otto"
    key = edge.store.create_key("worker", Role.WORKER)
    status, headers, _ = edge.verify(
        "POST", "/api/work_pools/default/get_scheduled_flow_runs", basic("worker", key)
    )
    assert status == 200 and headers["x-prefectstack-role"] == "worker"
    assert edge.verify("GET", "/api/flows/x", basic("otto", "wrong password"))[0] == 401
    assert edge.verify("GET", "/api/flows/x", {"Authorization": "Basic !!!"})[0] == 401
    assert edge.verify("GET", "/api/flows/x", {"Authorization": "Digest x"})[0] == 401


def test_revoked_key_stops_at_once_and_expired_key_is_refused(edge: Edge) -> None:
    key = edge.store.create_key("ci", Role.DEVELOPER)
    assert edge.verify("POST", "/api/deployments/", bearer(key))[0] == 200
    prefix = key_prefix(key)
    assert prefix is not None
    edge.store.revoke_key(prefix)
    status, _, body = edge.verify("POST", "/api/deployments/", bearer(key))
    assert status == 401 and "revoked" in body
    assert edge.audit()[-1].key_prefix == prefix
    temp = edge.store.create_key("temp", Role.VIEWER, expires_at=edge.clock.now + 60)
    assert edge.verify("GET", "/api/flows/x", bearer(temp))[0] == 200
    edge.clock.now += 60
    assert edge.verify("GET", "/api/flows/x", bearer(temp))[0] == 401


def test_a_bad_header_is_not_rescued_by_a_good_cookie(edge: Edge) -> None:
    token = edge.sign_in("ada")
    assert token is not None
    headers = {"Cookie": f"{COOKIE}={token}", **bearer("pfs_00000000_" + "x" * 43)}
    assert edge.verify("GET", "/api/flows/x", headers)[0] == 401


def test_sign_in_page(edge: Edge) -> None:
    response = edge.client.get("/auth/login?next=/deployments")
    assert response.status_code == 200
    assert '<form method="post" action="/auth/login">' in response.text
    assert 'name="next" value="/deployments"' in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    escaped = edge.client.get('/auth/login?next=/"><script>')
    assert "<script>" not in escaped.text


def test_sign_in_sets_a_secure_session_cookie(edge: Edge) -> None:
    response = edge.client.post(
        "/auth/login",
        data={"username": "vera", "password": PASSWORD, "next": "/deployments"},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/deployments"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ["HttpOnly", "Secure", "SameSite=lax", "Path=/"]:
        assert attribute.lower() in cookie.lower(), attribute
    assert "domain" not in cookie.lower()
    token = response.cookies[COOKIE]
    status, headers, _ = edge.verify("GET", "/dashboard", {"Cookie": f"{COOKIE}={token}"})
    assert status == 200 and headers["x-prefectstack-user"] == "vera"
    assert edge.audit()[-1].reason == "signed in"


def test_sign_in_never_redirects_off_site(edge: Edge) -> None:
    for target in ["//evil.example/", "https://evil.example/", "/\\evil.example", "/auth/logout"]:
        edge.client.cookies.clear()
        response = edge.client.post(
            "/auth/login",
            data={"username": "vera", "password": PASSWORD, "next": target},
            headers={"Origin": ORIGIN},
        )
        assert response.headers["location"] == "/", target


def test_wrong_password_is_refused_then_slowed_then_locked_out(edge: Edge) -> None:
    def attempt(password: str) -> tuple[int, str]:
        response = edge.client.post(
            "/auth/login",
            data={"username": "vera", "password": password},
            headers={"Origin": ORIGIN, "X-Forwarded-For": "198.51.100.4"},
        )
        return response.status_code, response.headers.get("retry-after", "")

    assert [attempt("nope nope nope") for _ in range(4)] == [
        (401, ""), (401, ""), (429, "1"), (429, "1"),
    ]  # fmt: skip
    edge.clock.now += 1
    assert attempt("nope nope nope") == (429, "300")  # the fourth real failure locks
    assert attempt(PASSWORD) == (429, "300")
    # even the right password waits now; another address does not
    assert edge.sign_in("vera") is not None
    # Basic passwords share the throttle; keys do not
    status, headers, _ = edge.verify(
        "GET", "/api/flows/x", {"X-Forwarded-For": "198.51.100.4", **basic("vera", PASSWORD)}
    )
    assert status == 429 and "retry-after" in headers
    key = edge.store.create_key("ci", Role.VIEWER)
    from_there = {"X-Forwarded-For": "198.51.100.4", **bearer(key)}
    assert edge.verify("GET", "/api/flows/x", from_there)[0] == 200
    edge.clock.now += 300
    assert attempt(PASSWORD)[0] == 303
    assert [r.status for r in edge.audit() if r.path == "/auth/login"].count(429) == 4


def test_cookie_requests_that_change_things_must_be_same_origin(edge: Edge) -> None:
    token = edge.sign_in("otto")
    cookie = {"Cookie": f"{COOKIE}={token}"}
    uri = "/api/flow_runs/x/set_state"
    assert edge.verify("POST", uri, {**cookie, "Origin": ORIGIN})[0] == 200
    assert edge.verify("POST", uri, {**cookie, "Sec-Fetch-Site": "same-origin"})[0] == 200
    status, _, body = edge.verify("POST", uri, {**cookie, "Origin": "https://evil.example"})
    assert status == 403 and "cross-origin" in body
    assert edge.verify("POST", uri, cookie)[0] == 403  # no proof of origin at all
    # reads need no proof, but a foreign Origin on any request is refused: that is how a
    # cross-site websocket handshake or fetch shows itself, Upgrade header forwarded or not
    assert edge.verify("GET", "/api/flows/x", cookie)[0] == 200
    ws = {**cookie, "Origin": "https://evil.example"}
    assert edge.verify("GET", "/api/events/out", ws)[0] == 403
    assert edge.verify("GET", "/api/events/out", {**ws, "Origin": "null"})[0] == 403
    ws["Origin"] = ORIGIN
    assert edge.verify("GET", "/api/events/out", ws)[0] == 200


def test_keys_need_no_origin_but_a_foreign_one_is_refused(edge: Edge) -> None:
    key = edge.store.create_key("ci", Role.OPERATOR)
    uri = "/api/flow_runs/x/set_state"
    assert edge.verify("POST", uri, bearer(key))[0] == 200
    assert edge.verify("POST", uri, {**bearer(key), "Origin": "https://evil.example"})[0] == 403


def test_configured_public_origin_wins_over_forwarded_host(tmp_path: Path) -> None:
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    store.add_user("otto", Role.OPERATOR, PASSWORD)
    config = AuthConfig(public_origin="https://prefect.example:8443")
    app = create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(), config)
    client = TestClient(app, base_url="https://prefect.example:8443", follow_redirects=False)
    token = store.create_session("otto")
    headers = {
        "X-Forwarded-Method": "POST",
        "X-Forwarded-Uri": "/api/flow_runs/x/set_state",
        "X-Forwarded-Host": "attacker.example",
        "Cookie": f"{COOKIE}={token}",
    }
    ok = {**headers, "Origin": "https://prefect.example:8443"}
    assert client.get("/auth/verify", headers=ok).status_code == 200
    forged = {**headers, "Origin": "https://attacker.example"}
    assert client.get("/auth/verify", headers=forged).status_code == 403


def test_viewer_session_is_refused_a_run(edge: Edge) -> None:
    token = edge.sign_in("vera")
    headers = {"Cookie": f"{COOKIE}={token}", "Origin": ORIGIN}
    status, _, body = edge.verify("POST", "/api/deployments/d/create_flow_run", headers)
    assert status == 403 and "needs operator" in body
    line = edge.audit()[-1]
    assert (line.identity, line.role, line.status) == ("vera", "viewer", 403)


def test_sign_out_ends_the_session(edge: Edge) -> None:
    token = edge.sign_in("ada")
    assert token is not None
    response = edge.client.post(
        "/auth/logout", headers={"Origin": ORIGIN, "Cookie": f"{COOKIE}={token}"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/auth/login"
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert edge.audit()[-1].reason == "signed out"
    assert edge.verify("GET", "/api/flows/x", {"Cookie": f"{COOKIE}={token}"})[0] == 401


def test_cross_site_sign_in_is_refused(edge: Edge) -> None:
    response = edge.client.post(
        "/auth/login",
        data={"username": "vera", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert COOKIE not in response.headers.get("set-cookie", "")


def test_expired_session_sends_a_browser_back_to_sign_in(edge: Edge) -> None:
    token = edge.sign_in("vera")
    edge.clock.now += 13 * 3600
    status, headers, _ = edge.verify(
        "GET", "/deployments", {"Cookie": f"{COOKIE}={token}", "Accept": "text/html"}
    )
    assert status == 302 and headers["location"].startswith("/auth/login?next=")
    assert edge.audit()[-1].reason == "expired or unknown session"


def test_unknown_routes_are_denied_even_to_admin(edge: Edge) -> None:
    key = edge.store.create_key("root", Role.ADMIN)
    status, _, body = edge.verify("DELETE", "/api/everything", bearer(key))
    assert status == 403 and "default deny" in body


def test_failed_sign_in_names_only_existing_users(edge: Edge) -> None:
    for username in ["vera", "my secret password"]:
        edge.client.post(
            "/auth/login",
            data={"username": username, "password": "wrong wrong wrong"},
            headers={"Origin": ORIGIN},
        )
    reasons = [r.reason for r in edge.audit()]
    assert reasons == ["failed sign-in as 'vera'", "failed sign-in as an unknown user"]
    assert "my secret password" not in edge.audit_path.read_text()


def test_oversized_sign_in_form_is_refused(edge: Edge) -> None:
    response = edge.client.post(
        "/auth/login", content=b"username=" + b"a" * 10_000, headers={"Origin": ORIGIN}
    )
    assert response.status_code == 413


def test_only_a_request_let_through_carries_the_apis_own_credentials(tmp_path: Path) -> None:
    """The edge copies this header into the request as Authorization: the API (Prefect's
    server auth) answers nothing else, so it must come with allowed requests only."""
    from prefectstack.auth.app import UPSTREAM_AUTH_HEADER
    from prefectstack.topology.caddyfile import UPSTREAM_AUTH_HEADER as EDGE_COPIES

    assert UPSTREAM_AUTH_HEADER == EDGE_COPIES
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    store.add_user("vera", Role.VIEWER, PASSWORD)
    config = AuthConfig(api_auth_string="prefectstack:s3cret")
    client = TestClient(create_app(store, AuditLog(tmp_path / "audit.log"), Throttle(), config),
                        base_url="https://prefect.example", follow_redirects=False)
    expected = "Basic " + base64.b64encode(b"prefectstack:s3cret").decode()

    def verify(method: str, uri: str, headers: dict[str, str]) -> Any:
        return client.get("/auth/verify", headers={
            "X-Forwarded-Method": method, "X-Forwarded-Uri": uri, **headers})

    allowed = verify("POST", "/api/flows/filter", basic("vera", PASSWORD))
    assert allowed.status_code == 200 and allowed.headers[UPSTREAM_AUTH_HEADER] == expected
    for refused in (verify("POST", "/api/flows/filter", {}),  # no credentials
                    verify("POST", "/api/variables/", basic("vera", PASSWORD)),  # role
                    verify("POST", "/api/flows/filter", basic("vera", "wrong"))):
        assert refused.status_code in (401, 403)
        assert UPSTREAM_AUTH_HEADER not in refused.headers
    assert "s3cret" not in (tmp_path / "audit.log").read_text()


def test_server_settings_are_shown_with_every_credential_masked() -> None:
    """What Prefect 3.8.8 answers at /api/admin/settings, in the places credentials sit:
    the docket's and the database's URLs, and the server's auth string."""
    from prefectstack.auth.app import MASK, masked

    settings = {"server": {
        "docket": {"name": "prefect-api", "url": "redis://:r3dis@127.0.0.1:16379/1"},
        "database": {"connection_url": "postgresql+asyncpg://prefect:pg-pw@db:5432/prefect",
                     "password": "pg-pw"},
        "api": {"auth_string": "prefectstack:api-pw", "url": "http://127.0.0.1:4200/api"},
        "events": {"messaging": ["redis://user:pw2@cache:6379/0"]},
        "ui": {"api_url": "https://localhost:4200/api"}}}
    shown = masked(settings)
    text = json.dumps(shown)
    for secret in ("r3dis", "pg-pw", "api-pw", "pw2"):
        assert secret not in text
    assert shown["server"]["docket"]["url"] == f"redis://:{MASK}@127.0.0.1:16379/1"
    assert shown["server"]["api"]["url"] == "http://127.0.0.1:4200/api"  # nothing to hide
    assert shown["server"]["ui"] == settings["server"]["ui"]
    assert shown["server"]["docket"]["name"] == "prefect-api"
