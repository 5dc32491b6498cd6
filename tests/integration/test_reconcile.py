"""Runs of dead infrastructure end, healthy runs are never touched, and `doctor` on a live
stack (one module-scoped stack).

The `reconcile` daemon (prefectstack.jobs.reconcile) marks Crashed every PENDING or RUNNING
run whose worker runs on this host but whose own process is gone. Here: the flow-run process
killed with -9, the worker's whole process tree killed with -9, a run left PENDING by a
worker that died before starting it, and `down` + `up` with a run in flight. Everything goes
through the edge with keys of the right role (a developer deploys, an operator runs).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .conftest import cli, free_port, log_problems, service, stack_yaml, status, wait_for

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).with_name("reconcile_flows.py")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
POOL = "itest-pool"
# The reconciler's pass interval and PENDING grace (this module's `reconcile:` section, the
# defaults are 15 and 60), and a margin.
INTERVAL, PENDING_GRACE = 5, 30
RECONCILE_BOUND = 2 * INTERVAL + PENDING_GRACE + 30
ALLOWED = (
    # The runs this module kills on purpose: Prefect's worker reports their exit.
    ("worker-1", r"exited with non-zero status code|Lost connection to flow run|"
                 r"Failed to submit flow run|Crashed"),
    # `down` with a run in flight: PostgreSQL logs the API's queries cancelled as it stops.
    ("postgres", r"canceling statement due to user request"),
)
# What the services, dying all at once with a supervisor killed with -9, may log between
# the kill and their next start: PostgreSQL's fast shutdown ends open connections, Redis goes
# before the API process, which loses its connections (whatever it was doing). Those lines are
# checked on their own (each must be about a lost connection) and left out of the module's
# log check. A docket task of the API caught mid-query (CI: `mark_work_queues_ready`) fails
# with asyncpg's "another operation is in progress" on the connection PostgreSQL dropped.
LOST_CONNECTION = re.compile(
    r"[Cc]onnect(ion)?(Error| call failed| closed| refused|ResetError| reset)|"
    r"terminating connection|Redis is unavailable|Exception in ASGI application|"
    r"docket\.worker - Error in scheduler loop|OSError|ConnectionRefusedError|"
    r"docket\.dependencies - ↩|another operation \(\d+\) is in progress")

DEPLOY = """
from reconcile_flows import sleeper
sleeper.from_source(source={src!r}, entrypoint="reconcile_flows.py:sleeper").deploy(
    name="sleeper", work_pool_name={pool!r}, build=False, push=False)
"""


class Stack:
    def __init__(self, root: Path, slow: float) -> None:
        self.root = root
        self.slow = slow
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.ca = str(root / "state" / "ca.crt")
        self.killed_at: dict[str, int] = {}  # each log's size when the supervisor was killed
        self.keys = {role: cli("keys", "create", f"reconcile-{role}", "--role", role,
                               cwd=root).stdout.strip().splitlines()[-1]
                     for role in ("developer", "operator", "viewer")}

    def wait(self, seconds: float) -> float:
        return seconds * self.slow

    def env(self, role: str) -> dict[str, str]:
        home = self.root / "homes" / role
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return env | {"PREFECT_API_URL": f"{self.base}/api",
                      "PREFECT_API_AUTH_STRING": f"{role}:{self.keys[role]}",
                      "PREFECT_API_SSL_CERT_FILE": self.ca, "PREFECT_HOME": str(home),
                      "PYTHONPATH": str(self.root)}

    def http(self, role: str) -> httpx.Client:
        token = base64.b64encode(f"{role}:{self.keys[role]}".encode()).decode()
        return httpx.Client(base_url=f"{self.base}/api", timeout=30,
                            verify=ssl.create_default_context(cafile=self.ca),
                            headers={"Authorization": f"Basic {token}"})

    def get(self, path: str) -> Any:
        with self.http("viewer") as client:
            return client.get(path).raise_for_status().json()

    def post(self, path: str, body: dict[str, Any], role: str = "operator") -> Any:
        with self.http(role) as client:
            response = client.post(path, json=body).raise_for_status()
            return response.json() if response.content else None

    def run(self, seconds: float) -> str:
        dep = self.get("/deployments/name/sleeper/sleeper")
        run = self.post(f"/deployments/{dep['id']}/create_flow_run",
                        {"parameters": {"seconds": seconds}})
        return str(run["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/flow_runs/{run_id}")
        return found

    def state(self, run_id: str) -> str:
        return str(self.flow_run(run_id)["state"]["type"])

    def finished(self, run_id: str, timeout: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.flow_run(run_id)
            return run if run["state"]["type"] in FINAL else None

        found: dict[str, Any] = wait_for(check, self.wait(timeout), f"flow run {run_id} to end",
                                         1)
        return found

    def process(self, run_id: str) -> psutil.Process:
        """The run's flow-run process, once it runs."""
        wait_for(lambda: self.state(run_id) == "RUNNING", self.wait(120),
                 f"flow run {run_id} to run", 1)
        pid = wait_for(lambda: self.flow_run(run_id).get("infrastructure_pid"),
                       self.wait(60), "the run's process id", 1)
        return psutil.Process(int(str(pid).rsplit(":", 1)[-1]))

    def worker_pid(self) -> int:
        pid = service(status(self.root), "worker-1")["pid"]
        assert pid
        return int(pid)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("reconcile")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    # Prefect's stock process worker: its process tree and the reaper are the subject here
    # (test_warm_worker.py kills the warm worker's children and parent).
    (root / "stack.yaml").write_text(stack_yaml(warm=False, **ports) + (
        f"reconcile:\n  interval_seconds: {INTERVAL}\n"
        f"  pending_grace_seconds: {PENDING_GRACE}\n"))
    (root / "ports.json").write_text(json.dumps(ports))
    shutil.copy(FLOWS, root / "reconcile_flows.py")
    started = time.monotonic()
    try:
        cli("up", "--detach", cwd=root)
        the_stack = Stack(root, max(1.0, (time.monotonic() - started) / 50))
        result = subprocess.run([sys.executable, "-c", DEPLOY.format(src=str(root), pool=POOL)],
                                cwd=root, env=the_stack.env("developer"), capture_output=True,
                                text=True, timeout=the_stack.wait(600))
        assert result.returncode == 0, result.stdout + result.stderr
        yield the_stack
    finally:
        cli("down", cwd=root, check=False, timeout=180)


def test_doctor_finds_a_running_stack_clean(stack: Stack) -> None:
    result = cli("doctor", "--json", cwd=stack.root, check=False)
    report = json.loads(result.stdout)
    problems = [c for c in report["checks"] if c["status"] != "ok"]
    assert result.returncode == 0, problems
    names = {c["name"] for c in report["checks"]}
    assert {"ports", "state-dir", "secrets", "disk", "dependencies", "services", "logs",
            "certificates", "api-keys"} <= names
    assert service(status(stack.root), "reconcile")["state"] == "ready"


def test_a_healthy_long_run_is_never_touched(stack: Stack) -> None:
    # Longer than two reconcile passes, so the reconciler looks at it at least twice.
    run_id = stack.run(3 * INTERVAL)
    final = stack.finished(run_id, timeout=240)
    assert final["state"]["type"] == "COMPLETED", final["state"]


def test_killing_a_flow_run_process_crashes_only_that_run(stack: Stack) -> None:
    doomed, other = stack.run(600), stack.run(20)
    process = stack.process(doomed)
    process.kill()
    final = stack.finished(doomed, timeout=RECONCILE_BOUND)
    assert final["state"]["type"] == "CRASHED", final["state"]
    assert stack.finished(other, timeout=240)["state"]["type"] == "COMPLETED"


def test_killing_the_worker_tree_crashes_its_runs_and_new_runs_complete(stack: Stack) -> None:
    doomed = stack.run(600)
    stack.process(doomed)
    worker = psutil.Process(stack.worker_pid())
    tree = [worker, *worker.children(recursive=True)]
    for proc in tree:
        proc.kill()
    final = stack.finished(doomed, timeout=RECONCILE_BOUND)
    assert final["state"]["type"] == "CRASHED", final["state"]
    assert "infrastructure" in (final["state"]["message"] or "")
    wait_for(lambda: service(status(stack.root), "worker-1")["state"] == "ready",
             stack.wait(120), "the worker to be back")
    after = stack.run(1)
    assert stack.finished(after, timeout=240)["state"]["type"] == "COMPLETED"


def test_a_run_left_pending_by_a_dead_worker_crashes(stack: Stack) -> None:
    """A run that went PENDING and never got a process (its worker died in between): no
    worker takes a PENDING run, so nothing else would ever move it on."""
    dep = stack.get("/deployments/name/sleeper/sleeper")
    run = stack.post(f"/deployments/{dep['id']}/create_flow_run",
                     {"parameters": {"seconds": 1}, "state": {"type": "PENDING"}})
    assert run["state"]["type"] == "PENDING"
    final = stack.finished(str(run["id"]), timeout=RECONCILE_BOUND)
    assert final["state"]["type"] == "CRASHED", final["state"]


def test_down_then_up_leaves_no_run_in_flight(stack: Stack) -> None:
    run_id = stack.run(600)
    stack.process(run_id)
    cli("down", cwd=stack.root, timeout=stack.wait(180))
    cli("up", "--detach", cwd=stack.root, timeout=stack.wait(600))
    final = stack.finished(run_id, timeout=RECONCILE_BOUND)
    assert final["state"]["type"] in ("CRASHED", "CANCELLED"), final["state"]
    stuck = stack.post("/flow_runs/filter", {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}}}, role="viewer")
    assert stuck == []


def test_a_run_in_flight_dies_with_a_supervisor_killed_with_minus_9(stack: Stack) -> None:
    """No orphans: the worker gets its parent-death signal, and its runs are stopped by the
    reaper it runs under (jobs/reaper.py: SIGTERM, SIGKILL after 10 s). An `up` right after
    (it cleans up after the dead supervisor itself) works, and the run ends Crashed."""
    run_id = stack.run(600)
    process = stack.process(run_id)
    supervisor = status(stack.root)["supervisor_pid"]
    stack.killed_at = {p.name: p.stat().st_size
                       for p in (stack.root / "state" / "logs").glob("*.log")}
    os.kill(supervisor, signal.SIGKILL)
    try:
        process.wait(timeout=stack.wait(30))  # the reaper's grace is 10 s
    except psutil.TimeoutExpired:
        pytest.fail(f"flow-run process {process.pid} outlived the killed supervisor")
    except psutil.NoSuchProcess:
        pass
    cli("up", "--detach", cwd=stack.root, timeout=stack.wait(600))
    final = stack.finished(run_id, timeout=RECONCILE_BOUND)
    assert final["state"]["type"] == "CRASHED", final["state"]
    dying, _rest = _split_at(stack, stack.killed_at)
    unexpected = [p for p in log_problems(dying, ALLOWED)
                  if not p.split(": ", 1)[1].startswith("Traceback")
                  and not LOST_CONNECTION.search(p)]
    assert not unexpected, "\n".join(unexpected[:40])


def _split_at(stack: Stack, sizes: dict[str, int]) -> tuple[Path, Path]:
    """Copies of the stack's logs: what each service wrote from `sizes` (its log's size at
    the supervisor's kill) to its next start, and all the rest."""
    dying, rest = stack.root / "logs-dying", stack.root / "logs-rest"
    for directory in (dying, rest):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
    for path in (stack.root / "state" / "logs").glob("*.log"):
        raw = path.read_bytes()
        start = sizes.get(path.name, len(raw))
        marker = raw.find(b"--- prefectstack: starting", start)
        end = marker if marker >= 0 else len(raw)
        (dying / path.name).write_bytes(raw[start:end])
        (rest / path.name).write_bytes(raw[:start] + raw[end:])
    return dying, rest


def test_the_reconciler_said_what_it_did_and_no_log_shows_a_problem(stack: Stack) -> None:
    log = (stack.root / "state" / "logs" / "reconcile.log").read_text()
    assert "Crashed (ACCEPT)" in log
    logs = stack.root / "state" / "logs"
    if stack.killed_at:  # the lines of services dying with the supervisor are checked above
        logs = _split_at(stack, stack.killed_at)[1]
    assert not log_problems(logs, ALLOWED)
