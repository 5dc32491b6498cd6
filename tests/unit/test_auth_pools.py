"""Worker keys scoped to work pools (auth/pools.py): the rules, the store, and the forward_auth
app in front of a real HTTP server standing in for an API process that knows each run's pool.

What Prefect itself does with these requests is covered by tests/integration/test_attacks.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, read
from prefectstack.auth.policy import decide
from prefectstack.auth.pools import PoolScope
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Identity, Store
from prefectstack.auth.throttle import Throttle
from prefectstack.errors import StackError

RUNS = {"run-a": "a", "run-b": "b", "run-sub": None}  # a subflow's run has no pool
SCOPED = Identity("key:pfs_00000000", Role.WORKER, key_prefix="pfs_00000000", via="key",
                  pools=frozenset({"a"}))


def refusal(identity: Identity, method: str, path: str,
            runs: dict[str, str | None] = RUNS, calls: list[str] | None = None,
            scope: PoolScope | None = None) -> tuple[int, str] | None:
    async def pool_of(run_id: str) -> str | None:
        if calls is not None:
            calls.append(run_id)
        if run_id not in runs:
            return None
        return runs[run_id] or ""

    decision = decide(identity.role, method, path)
    assert decision.allowed, decision.reason
    return asyncio.run((scope or PoolScope(pool_of)).refusal(identity, decision.rule, path))


# -- the rules -------------------------------------------------------------------------------


def test_a_scoped_key_polls_and_heartbeats_only_its_own_pools() -> None:
    assert refusal(SCOPED, "POST", "/api/work_pools/a/get_scheduled_flow_runs") is None
    assert refusal(SCOPED, "POST", "/api/work_pools/a/workers/heartbeat") is None
    status, reason = refusal(SCOPED, "POST", "/api/work_pools/b/get_scheduled_flow_runs") or ()
    assert status == 403 and "'a' only, not 'b'" in reason
    assert refusal(SCOPED, "GET", "/api/work_pools/b")  # even its settings
    # a percent-encoded name is the pool Prefect will route it to
    assert refusal(SCOPED, "POST", "/api/work_pools/%62/get_scheduled_flow_runs")


def test_a_scoped_key_changes_only_the_runs_of_its_pools() -> None:
    assert refusal(SCOPED, "POST", "/api/flow_runs/run-a/set_state") is None
    status, reason = refusal(SCOPED, "POST", "/api/flow_runs/run-b/set_state") or ()
    assert status == 403 and "flow run run-b is in 'b'" in reason
    assert refusal(SCOPED, "PATCH", "/api/flow_runs/run-b")
    # a run in no pool (a subflow reporting its states with the worker's key) and a run the
    # API doesn't know (it answers 404 itself)
    assert refusal(SCOPED, "POST", "/api/flow_runs/run-sub/set_state") is None
    assert refusal(SCOPED, "POST", "/api/flow_runs/nope/set_state") is None


def test_reads_and_unscoped_keys_are_as_the_role_table_says() -> None:
    calls: list[str] = []
    assert refusal(SCOPED, "GET", "/api/flow_runs/run-b", calls=calls) is None
    assert calls == []  # a read is not looked up
    unscoped = Identity("key:pfs_11111111", Role.WORKER, via="key")
    assert refusal(unscoped, "POST", "/api/work_pools/b/get_scheduled_flow_runs") is None
    assert refusal(unscoped, "POST", "/api/flow_runs/run-b/set_state", calls=calls) is None
    assert calls == []


def test_a_runs_pool_is_looked_up_once() -> None:
    calls: list[str] = []

    async def pool_of(run_id: str) -> str | None:
        calls.append(run_id)
        return "a"

    scope = PoolScope(pool_of)
    for _ in range(3):
        assert refusal(SCOPED, "POST", "/api/flow_runs/run-a/set_state", scope=scope) is None
    assert calls == ["run-a"]


def test_no_api_to_ask_is_a_503_the_client_retries() -> None:
    async def down(run_id: str) -> str | None:
        raise LookupError(run_id)

    status, reason = refusal(SCOPED, "POST", "/api/flow_runs/run-a/set_state",
                             scope=PoolScope(down)) or ()
    assert status == 503 and "no API process answered" in reason


# -- the store -------------------------------------------------------------------------------


def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))


def test_a_keys_pools_are_kept_and_only_a_worker_key_has_them(tmp_path: Path) -> None:
    s = store(tmp_path)
    key = s.create_key("gpu-box", Role.WORKER, pools=["gpu", "cpu", "gpu"])
    found = s.verify_key(key)
    assert found is not None and found.pools == frozenset({"gpu", "cpu"})
    assert s.keys()[0].pools == ("cpu", "gpu")
    anywhere = s.verify_key(s.create_key("any", Role.WORKER))
    assert anywhere is not None and anywhere.pools is None
    with pytest.raises(StackError, match="only a worker key serves work pools"):
        s.create_key("ops", Role.OPERATOR, pools=["gpu"])
    with pytest.raises(StackError, match="cannot be empty"):
        s.create_key("w", Role.WORKER, pools=[" "])


def test_the_stacks_own_worker_key_follows_its_workers_pools(tmp_path: Path) -> None:
    s = store(tmp_path)
    key = s.create_key("stack-worker", Role.WORKER, pools=["p1"])
    assert not s.import_key("stack-worker", Role.WORKER, key, pools=["p1", "p2"])
    found = s.verify_key(key)
    assert found is not None and found.pools == frozenset({"p1", "p2"})


def test_a_store_from_before_pools_is_upgraded_in_place(tmp_path: Path) -> None:
    old = store(tmp_path)
    key = old.create_key("old", Role.WORKER)
    old.close()
    with sqlite3.connect(tmp_path / "auth" / "auth.db") as conn:  # as an older version left it
        conn.execute("ALTER TABLE api_keys DROP COLUMN pools")
    again = store(tmp_path)
    found = again.verify_key(key)
    assert found is not None and found.pools is None


# -- forward_auth, in front of an API process -----------------------------------------------


@pytest.fixture
def api() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            run_id = self.path.rsplit("/", 1)[-1]
            known = run_id in RUNS
            body = json.dumps({"id": run_id, "work_pool_name": RUNS.get(run_id)}).encode()
            self.send_response(200 if known else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_forward_auth_refuses_a_scoped_key_another_pools_run_and_audits_it(
    tmp_path: Path, api: int,
) -> None:
    s = store(tmp_path)
    key = s.create_key("gpu-box", Role.WORKER, pools=["a"])
    app = create_app(s, AuditLog(tmp_path / "audit.log"), Throttle(),
                     AuthConfig(api_auth_string="prefectstack:s3cret"),
                     api_upstreams=[f"127.0.0.1:{api}"])
    with TestClient(app, base_url="https://prefect.example") as client:
        def verify(method: str, uri: str) -> int:
            return client.get("/auth/verify", headers={
                "X-Forwarded-Method": method, "X-Forwarded-Uri": uri,
                "Authorization": f"Bearer {key}"}).status_code

        assert verify("POST", "/api/flow_runs/run-a/set_state") == 200
        assert verify("POST", "/api/flow_runs/run-b/set_state") == 403
        assert verify("POST", "/api/work_pools/b/get_scheduled_flow_runs") == 403
        assert verify("POST", "/api/work_pools/a/get_scheduled_flow_runs") == 200
    refused = [r for r in read(tmp_path / "audit.log") if r.status == 403]
    assert [r.path for r in refused] == ["/api/flow_runs/run-b/set_state",
                                         "/api/work_pools/b/get_scheduled_flow_runs"]
