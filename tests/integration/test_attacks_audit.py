"""The attacker's view of sign-in throttling, the auth service's loopback port and the audit
trail (issue 9), against one real stack: Caddy, the auth service, PostgreSQL, Redis and a
Prefect API process; no workers or examples (nothing here runs a flow).

A second local OS user (`nobody`, with curl) tries the loopback ports. Other local client
addresses come from the rest of 127.0.0.0/8: Linux lets a client connect to the edge's
127.0.0.1 from any of them, and the edge sees each as a different address.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from .conftest import cli, free_port, log_problems

pytestmark = pytest.mark.integration

FAKE_ID = "00000000-0000-4000-8000-000000000000"
COUNTED = "(anonymous refusals, counted)"
PASSWORD = "a long and correct password"


def stack_file(ports: dict[str, int]) -> str:
    return f"""\
version: 1
name: attacks-audit
state_dir: state
postgres:
  port: {ports["pg"]}
redis:
  port: {ports["redis"]}
api:
  port: {ports["api"]}
edge:
  https_port: {ports["https"]}
  http_port: {ports["http"]}
auth:
  port: {ports["auth"]}
workers: []
examples:
  enabled: false
"""


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.ca = str(root / "state" / "ca.crt")
        self.keys: dict[str, str] = {}

    def key(self, role: str) -> str:
        if role not in self.keys:
            out = cli("keys", "create", f"audit-{role}", "--role", role, cwd=self.root).stdout
            self.keys[role] = out.strip().splitlines()[-1]
        return self.keys[role]

    def client(self, key: str | None = None, source: str | None = None) -> httpx.Client:
        """Through the edge, from `source` (an address in 127.0.0.0/8) when given."""
        tls = ssl.create_default_context(cafile=self.ca)
        transport = httpx.HTTPTransport(verify=tls, local_address=source)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, transport=transport, headers=headers,
                            timeout=60, follow_redirects=False)

    def sign_in(self, username: str, password: str, source: str) -> int:
        return self.sign_in_waits(username, password, source)[0]

    def sign_in_waits(self, username: str, password: str, source: str) -> tuple[int, int]:
        """The answer's status and its Retry-After (0 when none)."""
        with self.client(source=source) as client:
            answer = client.post("/auth/login", data={"username": username,
                                                      "password": password, "next": "/"},
                                 headers={"Origin": self.base})
        return answer.status_code, int(answer.headers.get("retry-after", 0))

    def audit(self, *args: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(
            cli("audit", "--json", "--limit", "100000", *args, cwd=self.root).stdout)
        return records


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("attacks-audit")
    os.chmod(root, 0o755)  # the second local user must reach nothing but the ports
    ports = {k: free_port() for k in ("pg", "redis", "api", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_file(ports))
    (root / "ports.json").write_text(json.dumps(ports))
    try:
        cli("up", "--detach", cwd=root)
        yield Stack(root)
    finally:
        cli("down", cwd=root, check=False, timeout=120)


def test_spraying_one_account_from_many_addresses_is_throttled(stack: Stack) -> None:
    cli("users", "add", "sprayed", "--role", "viewer", "--password-stdin", cwd=stack.root,
        input_text=PASSWORD + "\n")
    usual = "127.0.0.60"
    assert stack.sign_in("sprayed", PASSWORD, usual) == 303  # the person's usual address
    # one wrong password from each address, so that no address reaches its own limit: the
    # account's first five are free, then each waits twice as long as the one before
    statuses: list[tuple[int, int]] = []
    for n in range(40):
        status, retry = stack.sign_in_waits("sprayed", f"guess-{n}", f"127.0.0.{n + 2}")
        statuses.append((status, retry))
        if retry >= 16:
            break
        time.sleep(retry)  # what the service said to wait; then the next guess counts
    assert [s for s, _ in statuses[:5]] == [401] * 5, statuses
    assert [r for s, r in statuses[5:] if s == 429][:5] == [1, 2, 4, 8, 16], statuses
    # the account is held for a new address, even with the right password...
    assert stack.sign_in("sprayed", PASSWORD, "127.0.0.90") == 429
    # ...and over Basic auth on the API too (the same throttle)
    with stack.client(source="127.0.0.91") as client:
        basic = client.get("/api/flows/" + FAKE_ID, auth=("sprayed", PASSWORD))
    assert basic.status_code == 429 and int(basic.headers["retry-after"]) >= 1
    # ...but not for the person at their usual address: the sprayer can't lock them out
    assert stack.sign_in("sprayed", PASSWORD, usual) == 303
    throttled = [r for r in stack.audit() if r["status"] == 429]
    assert {r["client"] for r in throttled} >= {"127.0.0.90", "127.0.0.91"}


def test_the_auth_port_answers_only_the_edge(stack: Stack) -> None:
    """A local user calling the auth service directly can neither choose the address it is
    throttled and audited under nor get the API's own credentials for its key."""
    direct = f"http://127.0.0.1:{stack.ports['auth']}"
    assert httpx.get(f"{direct}/auth/login", timeout=30).status_code == 200  # the probe
    for n in range(3):
        forged = httpx.post(f"{direct}/auth/login", timeout=30,
                            data={"username": "admin", "password": "guess"},
                            headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert forged.status_code == 403
    verify = httpx.get(f"{direct}/auth/verify", timeout=30, headers={
        "Authorization": f"Bearer {stack.key('viewer')}", "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/api/flows/" + FAKE_ID, "X-Forwarded-For": "203.0.113.50",
        "X-Prefectstack-Edge": "a guess"})
    assert verify.status_code == 403
    assert not any(h.lower().startswith("x-prefectstack") for h in verify.headers)
    assert httpx.get(f"{direct}/api/admin/settings", timeout=30).status_code == 403
    records = stack.audit()
    assert not [r for r in records if (r["client"] or "").startswith("203.0.113.")]
    refused = [r for r in records if r["reason"] == "refused: not from the edge"]
    assert len(refused) >= 5 and {r["client"] for r in refused} == {"127.0.0.1"}


@pytest.mark.skipif(shutil.which("runuser") is None or os.geteuid() != 0,
                    reason="needs root and runuser to act as a second local user")
def test_websockets_pass_the_edge_and_not_around_it(stack: Stack) -> None:
    """The relay sits behind the gate too: through the edge a viewer subscribes to events;
    straight to the auth port the handshake is refused (and audited)."""
    key = stack.key("viewer")

    async def subscribe(uri: str, tls: ssl.SSLContext | None) -> str:
        async with ws_connect(uri, ssl=tls, subprotocols=[Subprotocol("prefect")]) as socket:
            await socket.send(json.dumps({"type": "auth", "token": f"laptop:{key}"}))
            answer: str = json.loads(await asyncio.wait_for(socket.recv(), 60))["type"]
            return answer

    through_edge = f"wss://localhost:{stack.ports['https']}/api/events/out"
    tls = ssl.create_default_context(cafile=stack.ca)
    assert asyncio.run(subscribe(through_edge, tls)) == "auth_success"
    around = f"ws://127.0.0.1:{stack.ports['auth']}/api/events/out"
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(subscribe(around, None))
    assert refused.value.response.status_code == 403
    assert [r for r in stack.audit() if r["path"] == "/api/events/out"
            and r["reason"] == "refused: not from the edge"]


def test_a_second_local_user_gets_nothing_from_the_loopback_ports(stack: Stack) -> None:
    def curl_as_nobody(*args: str) -> str:
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", "curl", "-s", "-o", "/dev/null",
             "-w", "%{http_code}", "--max-time", "30", *args],
            capture_output=True, text=True, timeout=60, cwd="/")
        return result.stdout.strip()

    api = f"http://127.0.0.1:{stack.ports['api']}/api"
    auth = f"http://127.0.0.1:{stack.ports['auth']}"
    assert curl_as_nobody(f"{api}/health") == "200"
    assert curl_as_nobody("-X", "POST", f"{api}/variables/", "-H",
                          "Content-Type: application/json",
                          "-d", '{"name": "pwned", "value": "1"}') == "401"
    assert curl_as_nobody("-X", "POST", f"{api}/flows/filter", "-d", "{}") == "401"
    assert curl_as_nobody("-X", "POST", f"{auth}/auth/login", "-H",
                          "X-Forwarded-For: 203.0.113.200",
                          "-d", "username=admin&password=guess") == "403"
    assert curl_as_nobody(f"{auth}/auth/verify", "-H", "X-Forwarded-Uri: /api/flows/x",
                          "-H", "X-Forwarded-For: 203.0.113.201") == "403"
    assert not [r for r in stack.audit() if r["client"] in ("203.0.113.200", "203.0.113.201")]


def test_a_bad_origin_header_is_refused_and_audited_not_a_500(stack: Stack) -> None:
    with stack.client(stack.key("operator")) as client:
        for origin in ("https://localhost:abc", "https://[", "http://localhost:99999"):
            answer = client.post("/api/flows/filter", json={}, headers={"Origin": origin})
            assert answer.status_code == 403, (origin, answer.text)
        form = client.post("/auth/login", data={"username": "admin", "password": "x"},
                           headers={"Origin": "https://localhost:abc"})
        assert form.status_code == 403
    refused = [r for r in stack.audit("--user", stack.key("operator")[:12])
               if r["reason"] == "cross-origin request refused"]
    assert len(refused) == 3


def test_reads_of_secrets_are_audited(stack: Stack) -> None:
    uri = f"/api/block_documents/{FAKE_ID}?include_secrets=true"
    with stack.client(stack.key("worker")) as worker:
        assert worker.get(uri).status_code == 404  # let through, audited; no such block
    with stack.client(stack.key("viewer")) as viewer:
        assert viewer.get(uri).status_code == 403
    lines = [r for r in stack.audit() if r["path"] == f"/api/block_documents/{FAKE_ID}"]
    by_role = {r["role"]: r for r in lines}
    assert by_role["worker"]["status"] == 200 and "with secrets" in by_role["worker"]["reason"]
    assert by_role["viewer"]["status"] == 403 and "secrets" in by_role["viewer"]["reason"]


def test_every_role_lists_blocks_and_only_a_worker_or_developer_with_secrets(
    stack: Stack,
) -> None:
    """The UI's Blocks and Event Feed pages (POST /api/block_documents/filter) work for a
    viewer; asking for secret values in that body is refused, and audited."""
    allowed = {"viewer": False, "operator": False, "developer": True, "worker": True}
    for role, with_secrets in allowed.items():
        with stack.client(stack.key(role)) as client:
            listed = client.post("/api/block_documents/filter", json={"limit": 5})
            assert listed.status_code == 200, (role, listed.text)
            asked = client.post("/api/block_documents/filter",
                                json={"limit": 5, "include_secrets": True})
            assert asked.status_code == (200 if with_secrets else 403), (role, asked.text)
    refused = [r for r in stack.audit() if r["path"] == "/api/block_documents/filter"
               and r["status"] == 403]
    assert {r["role"] for r in refused} == {"viewer", "operator"}


def test_a_flood_of_anonymous_requests_leaves_the_legitimate_lines(stack: Stack) -> None:
    admin = stack.key("admin")
    with stack.client(admin) as client:
        client.post("/api/variables/", json={"name": "before_flood", "value": 1}
                    ).raise_for_status()
    flood = 400
    clients = [stack.client(source=f"127.0.1.{n + 1}") for n in range(50)]

    def anonymous(n: int) -> int:
        return clients[n % 50].get(f"/api/flood-{n}/" + "x" * 8000).status_code

    try:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(anonymous, range(flood))) == {401}
    finally:
        for client in clients:
            client.close()
    with stack.client(admin) as client:
        client.post("/api/variables/", json={"name": "after_flood", "value": 1}
                    ).raise_for_status()
    records = stack.audit()
    changes = [r["path"] for r in records if r["status"] == 200 and r["method"] == "POST"
               and r["path"] == "/api/variables/"]
    assert len(changes) == 2
    logged = [r for r in records if r["path"].startswith("/api/flood-")]
    counted = [r for r in records if r["path"] == COUNTED]
    assert len(logged) <= 60 and counted
    assert len(logged) + sum(int(r["reason"].split()[0]) for r in counted) >= flood
    assert all(len(r["path"]) <= 600 for r in logged)  # capped
    assert "127.0.1." in counted[-1]["reason"]  # the top addresses are named
    assert records[-1]["path"] == "/api/variables/" and records[-2]["path"] == COUNTED


def test_no_unexpected_errors_in_the_logs(stack: Stack) -> None:
    assert log_problems(stack.root / "state" / "logs") == []
