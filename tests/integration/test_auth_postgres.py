"""A replicated auth service: two auth processes (as two Kubernetes pods would be) on one
real PostgreSQL database, in a schema of their own in the database Prefect uses (as
`render kubernetes` sets them up). Whatever one of them learns, the other acts on at once:
users, keys, revocations, sessions, failed sign-ins, and the audit log they both write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from prefectstack.auth.database import SCHEMA_ENV, URL_ENV

from .conftest import free_port, log_problems, wait_for
from .postgres_server import PostgresServer, postgres_server

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "admin-test-password-123"
ORIGIN = "https://prefect.example"
ATTACKER = "198.51.100.77"
# What the edge adds to a browser's request for https://prefect.example
SCHEMA = "prefectstack_auth"
EDGE = {"Origin": ORIGIN, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "prefect.example"}


class Pods:
    def __init__(self, url: str, ports: list[int], logs: Path, pg: PostgresServer) -> None:
        self.pg = pg
        self.url = url
        self.ports = ports
        self.logs = logs

    def verify(self, port: int, headers: dict[str, str], uri: str = "/api/flows/x") -> int:
        sent = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": uri,
                "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "prefect.example", **headers}
        return httpx.get(f"http://127.0.0.1:{port}/auth/verify", headers=sent,
                         timeout=30).status_code

    def sign_in(self, port: int, password: str, address: str = "203.0.113.9",
                username: str = "admin") -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{port}/auth/login",
                          data={"username": username, "password": password},
                          headers={**EDGE, "X-Forwarded-For": address}, timeout=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m prefectstack.auth.admin ...` as `kubectl exec` into an auth pod runs
        it: no stack file, the database's URL in the environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
        return subprocess.run([sys.executable, "-m", "prefectstack.auth.admin", *args],
                              env={**env, URL_ENV: self.url, SCHEMA_ENV: SCHEMA},
                              capture_output=True, text=True,
                              timeout=120, check=False, cwd=self.logs)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    root = tmp_path_factory.mktemp("authpg")
    with postgres_server(root / "pg", {"prefect": ("prefect-test-password", "prefect")}
                         ) as pg:
        url = f"postgresql://prefect:prefect-test-password@127.0.0.1:{pg.port}/prefect"
        logs = root / "logs"
        logs.mkdir()
        ports = [free_port(), free_port()]
        procs = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
        # Both at once, as a Deployment's pods start: both bootstrap the same admin.
        for index, auth_port in enumerate(ports):
            with open(logs / f"auth-{index + 1}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "prefectstack.auth", "--port", str(auth_port)],
                    env={**env, URL_ENV: url, SCHEMA_ENV: SCHEMA,
                         "PREFECTSTACK_ADMIN_PASSWORD": ADMIN_PASSWORD},
                    stdout=log, stderr=subprocess.STDOUT, cwd=logs))
        try:
            for proc, auth_port in zip(procs, ports, strict=True):
                def ready(p: int = auth_port, proc: subprocess.Popen[bytes] = proc) -> bool:
                    assert proc.poll() is None, f"auth on {p} exited: see {logs}"
                    try:
                        return httpx.get(f"http://127.0.0.1:{p}/auth/login",
                                         timeout=5).status_code == 200
                    except httpx.HTTPError:
                        return False
                wait_for(ready, 60, f"auth on port {auth_port}")
            yield Pods(url, ports, logs, pg)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
        # Logs are evidence: nothing went wrong in either pod, the bootstrap race included.
        assert log_problems(logs) == []


def _rows(url: str, sql: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_both_pods_start_and_one_admin_exists(pods: Pods) -> None:
    assert _rows(pods.url, f"SELECT username, role FROM {SCHEMA}.users") == [("admin", "admin")]
    # Nothing of the auth service's in the schema Prefect's own tables are in.
    assert _rows(pods.url, "SELECT to_regclass('public.users'), to_regclass('public.auth_audit')"
                 ) == [(None, None)]
    a, b = pods.ports
    signed_in = pods.sign_in(a, ADMIN_PASSWORD)
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"].split(";", 1)[0]  # __Host-prefectstack=...
    assert cookie.startswith("__Host-prefectstack=")
    # A session made by one pod is honored by the other, and ended everywhere at sign-out.
    session = {"Cookie": cookie}
    assert pods.verify(b, session) == 200
    out = httpx.post(f"http://127.0.0.1:{b}/auth/logout", headers={**EDGE, **session},
                     timeout=30)
    assert out.status_code == 303
    assert pods.verify(a, session) == 401


def test_a_key_made_anywhere_works_on_every_pod_until_revoked_anywhere(pods: Pods) -> None:
    made = pods.cli("keys", "create", "ci", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    bearer = {"Authorization": f"Bearer {key}"}
    assert [pods.verify(p, bearer) for p in pods.ports] == [200, 200]
    listed = json.loads(pods.cli("keys", "list").stdout)
    mine = next(k for k in listed if k["name"] == "ci")
    # Timestamps keep their precision (PostgreSQL's REAL would round them to minutes).
    assert abs(mine["created_at"] - time.time()) < 30
    revoked = pods.cli("keys", "revoke", mine["prefix"])
    assert revoked.returncode == 0, revoked.stderr
    assert [pods.verify(p, bearer) for p in pods.ports] == [401, 401]
    # Both pods' refusals and the CLI's changes are in the one audit log.
    audit = json.loads(pods.cli("audit", "--user", mine["prefix"]).stdout)
    assert [r["status"] for r in audit if r["method"] == "GET"][-2:] == [401, 401]
    changes = json.loads(pods.cli("audit").stdout)
    assert any(r["method"] == "CLI" and r["path"].startswith("keys revoke") for r in changes)


def test_failed_sign_ins_count_across_pods(pods: Pods) -> None:
    """An attacker who spreads guesses over the pods meets one throttle: the fourth failure
    from an address is answered 429 whichever pod counted the first three (a throttle per
    pod would have let all four through as 401s)."""
    a, b = pods.ports
    statuses = [pods.sign_in(port, "wrong password guess", ATTACKER).status_code
                for port in (a, b, a, b)]
    assert statuses == [401, 401, 401, 429]
    refused = pods.sign_in(a, ADMIN_PASSWORD, ATTACKER)
    assert refused.status_code == 429 and refused.headers.get("retry-after")
    # ...while the admin at their own address still gets in, on either pod.
    assert pods.sign_in(b, ADMIN_PASSWORD).status_code == 303


def test_a_user_added_on_one_pod_signs_in_on_the_other(pods: Pods) -> None:
    added = pods.cli("users", "add", "olga", "--role", "operator")
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip().splitlines()[-1].split()[-1]
    a, b = pods.ports
    assert pods.sign_in(b, password, username="olga").status_code == 303
    removed = pods.cli("users", "remove", "olga")
    assert removed.returncode == 0, removed.stderr
    assert pods.sign_in(a, password, username="olga").status_code == 401


def test_a_database_restart_costs_a_retry_not_an_error(pods: Pods) -> None:
    """PostgreSQL restarts (a failover, a rescheduled pod): while it is away the pods answer
    503, which Prefect's clients retry (a 500 they would not), and let nothing through; once
    it is back the same pods answer on new connections."""
    made = pods.cli("keys", "create", "during-restart", "--role", "viewer")
    key = made.stdout.strip().splitlines()[-1]
    bearer = {"Authorization": f"Bearer {key}"}
    assert [pods.verify(p, bearer) for p in pods.ports] == [200, 200]
    pods.pg.stop()
    try:
        assert [pods.verify(p, bearer) for p in pods.ports] == [503, 503]
        assert [pods.verify(p, {}) for p in pods.ports] == [401, 401]  # no credentials: no DB
    finally:
        pods.pg.start()
    assert [pods.verify(p, bearer) for p in pods.ports] == [200, 200]
    assert pods.sign_in(pods.ports[0], ADMIN_PASSWORD).status_code == 303


def test_the_admin_tool_refuses_to_run_without_the_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", URL_ENV))}
    done = subprocess.run([sys.executable, "-m", "prefectstack.auth.admin", "users", "list"],
                          env=env, capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert done.returncode == 2 and URL_ENV in done.stderr
