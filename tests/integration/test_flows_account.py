"""Flows never run as the platform's owner (issue 9), from the attacker's side: run as root,
a flow run's process runs as the flows account and cannot read the stack's secrets, the
auth store, the edge's CA key or PostgreSQL's data, while flows still complete end to end
through the edge; and a `/tmp/runner_storage` owned by another local user does not matter
(every Python service has a TMPDIR of its own in the state dir).

One stack for the module, started as root with a foreign `/tmp/runner_storage` in place.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .conftest import cli, free_port, log_problems, service, stack_yaml, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1200),  # the first test waits for the stack's start and the deploy
    pytest.mark.skipif(os.geteuid() != 0, reason="the flows account exists only as root"),
]

FLOWS_ACCOUNT = "prefectstack-flows"
POOL = "itest-pool"
RUNNER_STORAGE = Path("/tmp/runner_storage")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

PROBE_FLOW = '''
import json, os, tempfile
from prefect import flow, get_run_logger


@flow
def probe(paths: list[str]) -> None:
    found = {}
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
            found[path] = "read"
        except PermissionError:
            found[path] = "denied"
        except FileNotFoundError:
            found[path] = "missing"
    report = {"uid": os.getuid(), "euid": os.geteuid(), "tmp": tempfile.gettempdir(),
              "found": found, "env": sorted(os.environ)}
    get_run_logger().info("PROBE %s", json.dumps(report))
'''

DEPLOY = """
from prefect import Flow
Flow.from_source(source={src!r}, entrypoint="probe_flows.py:probe").deploy(
    name="probe", work_pool_name={pool!r}, build=False, push=False)
"""


@dataclass
class Stack:
    root: Path
    keys: dict[str, str]
    ports: dict[str, int]

    @property
    def state(self) -> Path:
        return self.root / "state"

    def service(self, name: str) -> dict[str, Any]:
        """A service as the supervisor records it (what `status --json` shows)."""
        found: dict[str, Any] = service(json.loads((self.state / "state.json").read_text()),
                                        name)
        return found

    def http(self, role: str) -> httpx.Client:
        token = base64.b64encode(f"{role}:{self.keys[role]}".encode()).decode()
        return httpx.Client(
            base_url=f"https://localhost:{self.ports['https']}/api", timeout=30,
            verify=ssl.create_default_context(cafile=str(self.state / "ca.crt")),
            headers={"Authorization": f"Basic {token}"})

    def prefect_env(self, role: str) -> dict[str, str]:
        home = self.root / "homes" / role
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return env | {
            "PREFECT_API_URL": f"https://localhost:{self.ports['https']}/api",
            "PREFECT_API_AUTH_STRING": f"{role}:{self.keys[role]}",
            "PREFECT_API_SSL_CERT_FILE": str(self.state / "ca.crt"),
            "PREFECT_HOME": str(home),
        }


@pytest.fixture(scope="module")
def foreign_runner_storage() -> Iterator[Path]:
    """`/tmp/runner_storage` owned by another local user (0700), as a shared machine may
    have it; removed afterwards only if this test made it."""
    made = not RUNNER_STORAGE.exists()
    if made:
        RUNNER_STORAGE.mkdir(mode=0o700)
        nobody = pwd.getpwnam("nobody")
        os.chown(RUNNER_STORAGE, nobody.pw_uid, nobody.pw_gid)
    yield RUNNER_STORAGE
    if made:
        shutil.rmtree(RUNNER_STORAGE, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          foreign_runner_storage: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("flows-account")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    # No examples: this module deploys its own probe.
    text = stack_yaml(**ports).replace("examples:\n  enabled: true", "examples:\n  enabled: false")
    (root / "stack.yaml").write_text(text)
    (root / "probe_flows.py").write_text(PROBE_FLOW)
    try:
        cli("up", "--detach", cwd=root)
        keys = {role: cli("keys", "create", f"flows-{role}", "--role", role,
                          cwd=root).stdout.strip().splitlines()[-1]
                for role in ("developer", "operator", "viewer")}
        stack = Stack(root, keys, ports)
        result = subprocess.run(
            [sys.executable, "-c", DEPLOY.format(src=str(root), pool=POOL)], cwd=root,
            env=stack.prefect_env("developer"), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        yield stack
    finally:
        cli("down", cwd=root, check=False, timeout=180)


@pytest.fixture(scope="module")
def probe_report(stack: Stack) -> dict[str, Any]:
    """A probe run, started with an operator key, finished, and what it saw."""
    edge_keys = sorted(str(p) for p in (stack.state / "data" / "edge").rglob("*.key"))
    assert edge_keys, "the edge's CA key was not where the probe looks for it"
    paths = [str(stack.state / "secrets.json"), str(stack.state / "data/auth/auth.db"),
             *edge_keys, str(stack.state / "data/pgdata/PG_VERSION"),
             str(stack.state / "data/pgdata/postgresql.conf"),
             str(stack.state / "data/redis/redis.conf"),
             str(stack.state / "logs/api-1.log")]
    with stack.http("operator") as client:
        dep = client.get("/deployments/name/probe/probe").raise_for_status().json()
        run = client.post(f"/deployments/{dep['id']}/create_flow_run",
                          json={"parameters": {"paths": paths}}).raise_for_status().json()

    def finished() -> dict[str, Any] | None:
        with stack.http("viewer") as client:
            found: dict[str, Any] = client.get(f"/flow_runs/{run['id']}").json()
        return found if found["state"] and found["state"]["type"] in FINAL else None

    final = wait_for(finished, 240, "the probe run to finish", 1)
    assert final["state"]["type"] == "COMPLETED", final["state"]

    def reported() -> str | None:
        with stack.http("viewer") as client:
            logs = client.post("/logs/filter", json={
                "logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}).json()
        return next((e["message"] for e in logs if e["message"].startswith("PROBE ")), None)

    line: str = wait_for(reported, 60, "the probe's report in the run's logs", 1)
    report: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
    return report


def test_a_flow_run_runs_as_the_flows_account(probe_report: dict[str, Any]) -> None:
    flows = pwd.getpwnam(FLOWS_ACCOUNT).pw_uid
    assert probe_report["uid"] == probe_report["euid"] == flows
    assert flows not in (0, pwd.getpwnam("prefectstack").pw_uid)


def test_a_flow_cannot_read_the_stacks_secrets(probe_report: dict[str, Any]) -> None:
    found = probe_report["found"]
    assert found and set(found.values()) == {"denied"}, found


def test_a_flow_sees_only_the_worker_key_in_its_environment(
    stack: Stack, probe_report: dict[str, Any],
) -> None:
    """No database, Redis or API password reaches the worker or its flow runs: the worker's
    environment (read as root from /proc) holds none of the stack's secrets but its key."""
    secrets = json.loads((stack.state / "secrets.json").read_text())
    worker = stack.service("worker-1")
    proc = psutil.Process(worker["pid"])
    assert proc.uids().real == pwd.getpwnam(FLOWS_ACCOUNT).pw_uid
    environ = " ".join(f"{k}={v}" for k, v in proc.environ().items())
    leaked = [name for name, value in secrets.items()
              if name != "worker_api_key" and value in environ]
    assert not leaked
    assert not {"PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING",
                "PREFECT_REDIS_MESSAGING_URL"} & set(probe_report["env"])


def test_a_foreign_runner_storage_in_tmp_does_not_break_the_worker(
    stack: Stack, probe_report: dict[str, Any], foreign_runner_storage: Path,
) -> None:
    """The worker keeps its runner storage in its own TMPDIR, 0700 and its account's: the
    probe (run by that worker) completed, and the worker never restarted."""
    assert foreign_runner_storage.stat().st_uid != pwd.getpwnam(FLOWS_ACCOUNT).pw_uid
    tmp = stack.state / "tmp" / "worker-1"
    assert probe_report["tmp"] == str(tmp)
    st = tmp.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, pwd.getpwnam(FLOWS_ACCOUNT).pw_uid)
    worker = stack.service("worker-1")
    assert worker["state"] == "ready" and worker["restarts"] == 0, worker
    assert (tmp / "runner_storage").is_dir()


def test_the_logs_show_no_unexpected_errors(stack: Stack, probe_report: dict[str, Any]) -> None:
    assert log_problems(stack.state / "logs") == []
