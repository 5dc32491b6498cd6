"""Conformance: Prefect's own promises hold on a real stack, through the edge, per role.

Not our components but what Prefect promises its users: schedules fire, task runs and logs
show up, `--watch` ends, cancel kills the process, pause/resume, `flow.serve()`, background
tasks, automations, concurrency limits and retries. Everything goes through the edge (TLS
against the stack's CA, forward_auth and the websocket relay) with Prefect's own client and
CLI: a `developer` key deploys, an `operator` key runs, `worker` keys execute, and a `viewer`
key is refused every change, each refusal audited. The whole module runs twice: here on the
default stack, and in test_promises_two_apis.py with two API processes behind the edge (a
module of its own, so that the two can run side by side). At the end no service's log may
hold an unexpected ERROR, a traceback or a dropped docket task (`Unknown task`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psutil
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from .conftest import (
    cli,
    flows_writable,
    free_port,
    log_problems,
    stack_yaml,
    status,
    wait_for,
)

pytestmark = pytest.mark.integration

FLOWS = Path(__file__).with_name("promises_flows.py")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
POOL = "itest-pool"
ROLES = ("developer", "operator", "viewer", "worker")
# Deliberate failures this module provokes, allowed in the logs (service, regex).
ALLOWED = (
    # `flaky` fails its first attempt on purpose; Prefect logs it, then retries.
    ("worker-1", r"first attempt fails on purpose|Task run 'fails_once-"),
)


class Stack:
    """A running stack and the per-role Prefect configuration of its users."""

    def __init__(self, root: Path, replicas: int, slow: float, warm: bool) -> None:
        self.root = root
        self.replicas = replicas
        self.warm = warm  # the stack's and the joined worker's kind
        self.slow = slow  # measured start-up / nominal: scales every wait
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.ca = str(root / "state" / "ca.crt")
        self.keys = {
            role: cli("keys", "create", f"promises-{role}", "--role", role,
                      cwd=root).stdout.strip().splitlines()[-1]
            for role in ROLES
        }
        self.started = time.time()
        self.procs: list[subprocess.Popen[str]] = []

    def wait(self, seconds: float) -> float:
        return seconds * self.slow

    # -- Prefect's client and CLI, configured as a user of this role would

    def env(self, role: str) -> dict[str, str]:
        home = self.root / "homes" / role
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return env | {
            "PREFECT_API_URL": f"{self.base}/api",
            "PREFECT_API_AUTH_STRING": f"{role}:{self.keys[role]}",
            "PREFECT_API_SSL_CERT_FILE": self.ca,
            "PREFECT_HOME": str(home),
            # Background tasks hand their parameters and results over through storage that
            # the caller and the task worker share (Prefect's default is per PREFECT_HOME).
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(self.root / "shared-results"),
            "PYTHONPATH": str(self.root),
        }

    def prefect(self, role: str, *args: str, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=self.root,
                                env=self.env(role), capture_output=True, text=True,
                                timeout=self.wait(timeout))
        if check and result.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} as {role} exited "
                                 f"{result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def python(self, role: str, code: str, timeout: float = 300) -> str:
        result = subprocess.run([sys.executable, "-c", code], cwd=self.root,
                                env=self.env(role), capture_output=True, text=True,
                                timeout=self.wait(timeout))
        assert result.returncode == 0, f"as {role}:\n{code}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def background(self, role: str, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, cwd=self.root, env=self.env(role), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    # -- the REST API, with a key of the given role

    def http(self, role: str) -> httpx.Client:
        token = base64.b64encode(f"{role}:{self.keys[role]}".encode()).decode()
        return httpx.Client(base_url=f"{self.base}/api", timeout=30,
                            verify=ssl.create_default_context(cafile=self.ca),
                            headers={"Authorization": f"Basic {token}"})

    def get(self, path: str, role: str = "viewer") -> Any:
        with self.http(role) as client:
            return client.get(path).raise_for_status().json()

    def post(self, path: str, body: dict[str, Any], role: str = "viewer") -> Any:
        with self.http(role) as client:
            response = client.post(path, json=body).raise_for_status()
            return response.json() if response.content else None

    def deployment(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/deployments/name/{name}")
        return found

    def run(self, deployment: str, parameters: dict[str, Any] | None = None) -> str:
        dep = self.deployment(deployment)
        run = self.post(f"/deployments/{dep['id']}/create_flow_run",
                        {"parameters": parameters or {}}, role="operator")
        return str(run["id"])

    def flow_run(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/flow_runs/{run_id}")
        return found

    def finished(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.flow_run(run_id)
            return run if run["state"] and run["state"]["type"] in FINAL else None

        found: dict[str, Any] = wait_for(check, self.wait(timeout), f"flow run {run_id}", 1)
        return found

    def in_state(self, run_id: str, state: str, timeout: float = 120) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (r := self.flow_run(run_id))["state"]["type"] == state and r,
            self.wait(timeout), f"flow run {run_id} to be {state}", 1)
        return found

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.post("/task_runs/filter", {
            "flow_runs": {"id": {"any_": [run_id]}}})
        return runs

    def logs(self, run_id: str) -> list[str]:
        entries = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                             "limit": 200, "sort": "TIMESTAMP_ASC"})
        return [e["message"] for e in entries]

    def audit(self, *args: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(
            cli("audit", "--json", "-n", "1000000", *args, cwd=self.root).stdout)
        return records

    def stop_background(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)


DEPLOY = """
from prefect.schedules import Cron
from promises_flows import (three_tasks, sleeper, pauser, exclusive, global_slot, flaky,
                            served)
src = {src!r}
def deploy(fn, name, pool={pool!r}, **kw):
    fn.from_source(source=src, entrypoint=f"promises_flows.py:{{fn.__name__}}").deploy(
        name=name, work_pool_name=pool, build=False, push=False, **kw)
deploy(three_tasks, "three-tasks")
deploy(three_tasks, "every-10s", interval=10)
deploy(three_tasks, "cron", schedule=Cron("0 9 * * *", timezone="Asia/Bangkok"))
deploy(sleeper, "sleeper")
deploy(pauser, "pauser")
deploy(exclusive, "exclusive", concurrency_limit=1)
deploy(global_slot, "global-slot")
deploy(flaky, "flaky")
deploy(three_tasks, "nobody", pool="nobody-pool")
"""


# Promises the kind of worker does not decide: the server orchestrates concurrency slots and
# automations, `serve()` needs no worker, the auth service closes sockets, the backup service
# backs up. The two-API round (test_promises_two_apis.py, the default warm worker) checks
# them; this round, the stock worker's, leaves them out to keep the suite's time down (about
# 5 minutes of it).
WORKER_INDEPENDENT = {
    "test_flow_serve_runs_a_triggered_run",
    "test_task_serve_runs_a_delayed_background_task",
    "test_automation_on_a_client_event_fires_its_action",
    "test_deployment_concurrency_limit_holds_under_five_simultaneous_runs",
    "test_global_concurrency_limit_is_honored",
    "test_open_socket_closes_within_10s_of_revocation",
    "test_scheduled_backups_are_taken_and_pruned_to_the_policy",
}


@pytest.fixture(autouse=True)
def _once_across_rounds(request: pytest.FixtureRequest) -> None:
    """Applies to the tests collected here only (a fixture is seen where it is defined):
    the two-API module collects the same functions and runs them all."""
    if request.node.originalname in WORKER_INDEPENDENT:
        pytest.skip("checked by the two-API round (test_promises_two_apis.py)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default stack with one API process and Prefect's stock process worker
    (test_promises_two_apis.py: two API processes and the default, warm worker)."""
    yield from running_stack(tmp_path_factory, replicas=1, warm=False)


def running_stack(tmp_path_factory: pytest.TempPathFactory, replicas: int,
                  warm: bool) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(f"promises-{replicas}")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    # The bundled hello example on a short interval: the scheduler must create its runs.
    text = stack_yaml(warm=warm, **ports).replace("interval_seconds: 3600",
                                                  "interval_seconds: 20")
    # Two API processes in the second round; a deployment waiting for its concurrency slot is
    # retried after 2 s instead of 30 (a server setting, passed through `api.settings`).
    text = text.replace(f"api:\n  port: {ports['api']}\n", f"""api:
  port: {ports['api']}
  replicas: {replicas}
  settings:
    PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS: "2"
""")
    # Scheduled backups every minute (default: 03:00 UTC daily), pruned to `backup.keep`.
    text += 'backup:\n  schedule: "* * * * *"\n'
    (root / "stack.yaml").write_text(text)
    (root / "ports.json").write_text(json.dumps(ports))
    shutil.copy(FLOWS, root / "promises_flows.py")
    started = time.monotonic()
    try:
        cli("up", "--detach", cwd=root)
        # Every wait below scales with how long this machine took to start the stack
        # (~50 s on an idle 2-core machine).
        slow = max(1.0, (time.monotonic() - started) / 50)
        stack = Stack(root, replicas, slow, warm)
        with stack.http("developer") as client:
            client.post("/work_pools/", json={"name": "nobody-pool", "type": "process"}
                        ).raise_for_status()
        stack.python("developer", DEPLOY.format(src=str(root), pool=POOL), timeout=600)
        yield stack
    finally:
        if "stack" in locals():
            stack.stop_background()
        cli("down", cwd=root, check=False, timeout=180)


# -- schedules --------------------------------------------------------------------------------


def test_services_process_restarts_after_kill_9(stack: Stack) -> None:
    """Killed first, so every schedule below proves the restarted process's loops run (its
    docket worker re-registers the perpetual services; the API processes drop none)."""
    before = next(s for s in status(stack.root)["services"] if s["name"] == "services")
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        now = next(s for s in status(stack.root)["services"] if s["name"] == "services")
        return now if now["pid"] != before["pid"] and now["state"] == "ready" else None

    after = wait_for(restarted, stack.wait(60), "the services process to come back")
    assert after["restarts"] == before["restarts"] + 1


def test_interval_schedule_creates_and_completes_runs_on_time(stack: Stack) -> None:
    dep = stack.deployment("three-tasks/every-10s")

    def completed() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = stack.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        return runs if len(runs) >= 2 else []

    runs = wait_for(completed, stack.wait(180), "two completed scheduled runs", 2)
    for run in runs:
        assert run["auto_scheduled"], run
        lag = (datetime.fromisoformat(run["start_time"])
               - datetime.fromisoformat(run["expected_start_time"]))
        # "on time": picked up within a few worker polls (10 s each), not minutes late
        assert lag < timedelta(seconds=60 * stack.slow), (run["name"], lag)
    _stop_schedule(stack, dep)


def _stop_schedule(stack: Stack, dep: dict[str, Any]) -> None:
    """Pause a deployment and delete its remaining scheduled runs (they would keep the
    worker busy for the rest of the module)."""
    stack.post(f"/deployments/{dep['id']}/pause_deployment", {}, role="operator")
    runs = stack.post("/flow_runs/filter", {
        "deployments": {"id": {"any_": [dep["id"]]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    with stack.http("developer") as client:
        for run in runs:
            client.delete(f"/flow_runs/{run['id']}")


def test_cron_schedule_is_set_for_the_next_slot_in_its_time_zone(stack: Stack) -> None:
    dep = stack.deployment("three-tasks/cron")

    def scheduled() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = stack.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})
        return runs

    runs = wait_for(scheduled, stack.wait(120), "the cron deployment's scheduled runs", 2)
    bangkok = ZoneInfo("Asia/Bangkok")
    now = datetime.now(bangkok)
    slot = now.replace(hour=9, minute=0, second=0, microsecond=0)
    if slot <= now:
        slot += timedelta(days=1)
    first = datetime.fromisoformat(runs[0]["expected_start_time"])
    assert first == slot, (first, slot)
    assert all(r["state"]["type"] == "SCHEDULED" for r in runs)
    _stop_schedule(stack, dep)


def test_bundled_hello_example_runs_on_its_schedule(stack: Stack) -> None:
    dep = stack.deployment("hello/hello")

    def completed() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = stack.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        return runs

    runs = wait_for(completed, stack.wait(120), "a completed scheduled run of hello", 2)
    assert runs[0]["auto_scheduled"]
    _stop_schedule(stack, dep)


def test_run_with_no_worker_turns_late(stack: Stack) -> None:
    run_id = stack.run("three-tasks/nobody")
    late = wait_for(lambda: (r := stack.flow_run(run_id))["state"]["name"] == "Late" and r,
                    stack.wait(120), "the unattended run to turn Late", 2)
    assert late["state"]["type"] == "SCHEDULED"


# -- task runs, logs, watch ------------------------------------------------------------------


def test_task_runs_and_logs_of_a_stack_worker_run(stack: Stack) -> None:
    run_id = stack.run("three-tasks/three-tasks", {"label": "stack-worker"})
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    _assert_three_tasks_and_logs(stack, run_id, "stack-worker")


def test_task_runs_and_logs_of_a_joined_worker_run(stack: Stack) -> None:
    with stack.http("developer") as client:
        client.post("/work_pools/", json={"name": "joined-pool", "type": "process"}
                    ).raise_for_status()
    stack.python("developer", f"""
from promises_flows import three_tasks
three_tasks.from_source(source={str(stack.root)!r},
    entrypoint="promises_flows.py:three_tasks").deploy(
    name="joined", work_pool_name="joined-pool", build=False, push=False)
""")
    health = free_port()
    stack.background("worker", [
        sys.executable, "-m", "prefectstack", "worker", "join", "--server", stack.base,
        "--key", stack.keys["worker"], "--pool", "joined-pool", "--ca", stack.ca,
        "--name", "joined", "--health-port", str(health), "--warm" if stack.warm else "--stock",
        "--home", str(stack.root / "joined-home")])
    wait_for(lambda: _healthy(health), stack.wait(120), "the joined worker's health endpoint")
    run_id = stack.run("three-tasks/joined", {"label": "joined-worker"})
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    _assert_three_tasks_and_logs(stack, run_id, "joined-worker")


def _assert_three_tasks_and_logs(stack: Stack, run_id: str, label: str) -> None:
    # Task runs reach the server as events through the relay and the task-run recorder
    # applies them asynchronously: wait for all three to be recorded as Completed.
    def recorded() -> list[dict[str, Any]]:
        tasks = stack.task_runs(run_id)
        done = [t for t in tasks if t["state"] and t["state"]["type"] == "COMPLETED"]
        return tasks if len(done) == 3 else []

    tasks = wait_for(recorded, stack.wait(60), f"3 completed task runs of {run_id}", 1)
    assert len(tasks) == 3, tasks
    lines = wait_for(lambda: [m for m in stack.logs(run_id) if "three tasks done" in m],
                     stack.wait(60), f"the log line of {run_id}", 1)
    assert f"three tasks done {label} [0, 2, 4]" in lines


def test_deployment_run_watch_exits_zero(stack: Stack) -> None:
    result = stack.prefect("operator", "deployment", "run", "three-tasks/three-tasks",
                           "--watch", "--watch-timeout", str(int(stack.wait(240))))
    assert "closed unexpectedly" not in result.stdout + result.stderr
    assert "Completed" in result.stdout


# -- cancel, pause and resume -----------------------------------------------------------------


def test_cancel_kills_the_flow_process(stack: Stack) -> None:
    run_id = stack.run("sleeper/sleeper", {"seconds": 120})
    running = stack.in_state(run_id, "RUNNING")
    pid = wait_for(lambda: stack.flow_run(run_id).get("infrastructure_pid"),
                   stack.wait(60), "the run's process id", 1)
    process = psutil.Process(int(str(pid).rsplit(":", 1)[-1]))  # `<host>:<pid>`
    assert running["state"]["type"] == "RUNNING"
    cancelled_at = time.monotonic()
    stack.prefect("operator", "flow-run", "cancel", run_id)
    final = stack.finished(run_id, timeout=30)
    assert final["state"]["type"] == "CANCELLED"
    assert time.monotonic() - cancelled_at < stack.wait(30)
    wait_for(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE,
             stack.wait(30), "the cancelled run's process to exit")


def test_pause_then_resume_completes_the_run(stack: Stack) -> None:
    run_id = stack.run("pauser/pauser")
    stack.in_state(run_id, "PAUSED")
    stack.python("operator", f"""
from prefect.flow_runs import resume_flow_run
resume_flow_run({run_id!r})
""")
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    wait_for(lambda: "resumed" in stack.logs(run_id), stack.wait(60), "the run's log line", 1)


# -- serve and background tasks ----------------------------------------------------------------


def test_flow_serve_runs_a_triggered_run(stack: Stack) -> None:
    stack.background("developer", [sys.executable, "-c",
                                   "from promises_flows import served\n"
                                   "served.serve(name='served')"])
    wait_for(lambda: _exists(stack, "served/served"), stack.wait(120), "the served deployment")
    run_id = stack.run("served/served")
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"


def test_task_serve_runs_a_delayed_background_task(stack: Stack) -> None:
    stack.background("worker", [sys.executable, "-m", "prefect", "task", "serve",
                                "promises_flows.py:background"])
    out = stack.python("developer", """
from promises_flows import background
future = background.delay(41)
print(future.task_run_id)
""")
    task_run_id = out.strip().splitlines()[-1]

    def completed() -> bool:
        run = stack.get(f"/task_runs/{task_run_id}")
        return bool(run["state"] and run["state"]["type"] == "COMPLETED")

    wait_for(completed, stack.wait(120), "the background task run to complete", 1)


# -- automations ------------------------------------------------------------------------------


def test_automation_on_a_client_event_fires_its_action(stack: Stack) -> None:
    dep = stack.deployment("three-tasks/three-tasks")
    marker = f"promises-{stack.replicas}-{time.time_ns()}"
    stack.post("/automations/", {
        "name": f"on-{marker}",
        "trigger": {"type": "event", "posture": "Reactive", "threshold": 1, "within": 0,
                    "expect": ["prefectstack.test.ping"],
                    "match": {"prefect.resource.id": f"test.{marker}"}},
        "actions": [{"type": "run-deployment", "source": "selected",
                     "deployment_id": dep["id"], "parameters": {"label": marker}}],
    }, role="developer")
    emit = f"""
from prefect.events import emit_event
emit_event(event="prefectstack.test.ping", resource={{"prefect.resource.id": "test.{marker}"}})
"""

    def fired() -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = stack.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep["id"]]}}})
        return [r for r in runs if r["parameters"].get("label") == marker]

    # The triggers service loads a new automation shortly after it is stored (it listens
    # for changes): emit again every few seconds until it fires, a bounded number of times.
    runs: list[dict[str, Any]] = []
    for _ in range(12):
        stack.python("worker", emit)
        deadline = time.monotonic() + stack.wait(10)
        while time.monotonic() < deadline and not (runs := fired()):
            time.sleep(1)
        if runs:
            break
    assert runs, "the automation never ran its deployment"
    assert stack.finished(runs[0]["id"])["state"]["type"] == "COMPLETED"


# -- concurrency and retries -----------------------------------------------------------------


def test_deployment_concurrency_limit_holds_under_five_simultaneous_runs(stack: Stack) -> None:
    journal = flows_writable(stack.root / "out") / f"exclusive-{time.time_ns()}.txt"
    runs = [stack.run("exclusive/exclusive", {"journal": str(journal), "seconds": 1})
            for _ in range(5)]
    for run_id in runs:
        assert stack.finished(run_id, timeout=300)["state"]["type"] == "COMPLETED"
    _assert_no_overlap(journal, 5)


def test_global_concurrency_limit_is_honored(stack: Stack) -> None:
    name = f"promises-gcl-{time.time_ns()}"
    stack.post("/v2/concurrency_limits/", {"name": name, "limit": 1}, role="developer")
    journal = flows_writable(stack.root / "out") / f"{name}.txt"
    runs = [stack.run("global-slot/global-slot",
                      {"journal": str(journal), "limit": name, "seconds": 2})
            for _ in range(3)]
    for run_id in runs:
        assert stack.finished(run_id, timeout=300)["state"]["type"] == "COMPLETED"
    _assert_no_overlap(journal, 3)


def _assert_no_overlap(journal: Path, count: int) -> None:
    spans = sorted(tuple(map(float, line.split())) for line in journal.read_text().splitlines())
    assert len(spans) == count, spans
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two runs held the only slot at once: {spans}"


def test_retries_happen(stack: Stack) -> None:
    marker = flows_writable(stack.root / "out") / f"flaky-{time.time_ns()}"
    run_id = stack.run("flaky/flaky", {"marker": str(marker)})
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    tasks = wait_for(lambda: (t := stack.task_runs(run_id)) and t[0]["run_count"] >= 2
                     and t[0]["state"]["type"] == "COMPLETED" and t,
                     stack.wait(60), "the retried task run", 1)
    assert tasks[0]["state"]["type"] == "COMPLETED" and tasks[0]["run_count"] == 2


# -- websockets: revocation and refusals --------------------------------------------------------


def test_open_socket_closes_within_10s_of_revocation(stack: Stack) -> None:
    key = cli("keys", "create", f"revoked-{time.time_ns()}", "--role", "viewer",
              cwd=stack.root).stdout.strip().splitlines()[-1]
    closed_after = asyncio.run(_subscribe_then_revoke(stack, key))
    assert closed_after < 10, f"socket stayed open {closed_after:.1f}s after revocation"
    refused = [r for r in stack.audit("--user", f"key:{key[:12]}")
               if r["status"] == 401 and "websocket" in r["reason"]]
    assert refused, "the closing of the revoked key's socket was not audited"


async def _subscribe_then_revoke(stack: Stack, key: str) -> float:
    ssl_context = ssl.create_default_context(cafile=stack.ca)
    uri = f"wss://localhost:{stack.ports['https']}/api/events/out"
    async with ws_connect(uri, ssl=ssl_context, subprotocols=[websockets.Subprotocol("prefect")]
                          ) as socket:
        await socket.send(json.dumps({"type": "auth", "token": f"laptop:{key}"}))
        assert json.loads(await socket.recv())["type"] == "auth_success"
        await socket.send(json.dumps({"type": "filter", "filter": {}}))
        await asyncio.to_thread(cli, "keys", "revoke", key[:12], cwd=stack.root)
        revoked = time.monotonic()
        try:
            while True:
                await asyncio.wait_for(socket.recv(), 30)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
        return time.monotonic() - revoked


def test_websocket_with_a_wrong_or_missing_token_is_closed_and_audited(stack: Stack) -> None:
    codes = asyncio.run(_bad_tokens(stack))
    assert codes == {"missing": 1008, "wrong": 1008}, codes
    refused = [r for r in stack.audit("--since", "5m")
               if r["status"] == 401 and r["path"] == "/api/events/in"]
    assert len(refused) >= 2, refused


async def _bad_tokens(stack: Stack) -> dict[str, int]:
    ssl_context = ssl.create_default_context(cafile=stack.ca)
    uri = f"wss://localhost:{stack.ports['https']}/api/events/in"
    codes: dict[str, int] = {}
    for label, token in (("missing", None), ("wrong", "pfs_00000000_wrongwrongwrong")):
        async with ws_connect(uri, ssl=ssl_context,
                              subprotocols=[websockets.Subprotocol("prefect")]) as socket:
            await socket.send(json.dumps({"type": "auth", "token": token}))
            try:
                await asyncio.wait_for(socket.recv(), 30)
            except websockets.ConnectionClosed as closed:
                codes[label] = closed.rcvd.code if closed.rcvd else 0
    return codes


def test_viewer_is_refused_every_change_and_each_refusal_is_audited(stack: Stack) -> None:
    dep = stack.deployment("three-tasks/three-tasks")
    run_id = stack.run("three-tasks/three-tasks")
    attempts = [
        ("POST", "/deployments/", {"name": "x", "flow_id": dep["flow_id"]}),
        ("POST", f"/deployments/{dep['id']}/create_flow_run", {}),
        ("POST", f"/flow_runs/{run_id}/set_state",
         {"state": {"type": "CANCELLING"}, "force": True}),
        ("POST", f"/flow_runs/{run_id}/resume", {}),
        ("POST", f"/deployments/{dep['id']}/pause_deployment", {}),
        ("POST", "/automations/", {"name": "x"}),
        ("POST", "/v2/concurrency_limits/", {"name": "x", "limit": 1}),
        ("POST", "/task_runs/", {"task_key": "x", "dynamic_key": "x"}),
        ("POST", "/events", []),
    ]
    since = time.time()
    with stack.http("viewer") as client:
        for method, path, body in attempts:
            status_code = client.request(method, path, json=body).status_code
            assert status_code == 403, (method, path, status_code)
    emitted = stack.python("viewer", """
from prefect.events.clients import PrefectEventsClient
from prefect.events import Event
import asyncio
async def main():
    try:
        async with PrefectEventsClient() as c:
            await c.emit(Event(event="viewer.emit", resource={"prefect.resource.id": "v"}))
    except Exception as exc:
        print("refused", type(exc).__name__)
asyncio.run(main())
""")
    assert "refused" in emitted, emitted
    viewer = [r for r in stack.audit("--user", f"key:{stack.keys['viewer'][:12]}")
              if r["status"] == 403 and _at(r) >= since - 1]
    refused_paths = {r["path"] for r in viewer}
    for _, path, _ in attempts:
        assert f"/api{path}".rstrip("/") in {p.rstrip("/") for p in refused_paths}, path
    assert "/api/events/in" in refused_paths
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"


# -- and the evidence --------------------------------------------------------------------------


def test_no_legitimate_work_was_refused(stack: Stack) -> None:
    """Deploying, running, executing (stack and joined workers, serve, task workers): not
    one request of theirs refused over the whole module."""
    legit = {stack.keys[r][:12] for r in ("developer", "operator", "worker")}
    legit |= set(_service_key_prefixes(stack))
    refused = [r for r in stack.audit("--since", "2h")
               if r["status"] in (401, 403, 429) and r["key_prefix"] in legit]
    assert not refused, json.dumps(refused, indent=1)


def test_scheduled_backups_are_taken_and_pruned_to_the_policy(stack: Stack) -> None:
    """The `backup` service backs up on its schedule (every minute here) and prunes to
    `backup.keep`: of the backups made within one day, only the newest is kept."""
    log = stack.root / "state" / "logs" / "backup.log"

    def written() -> list[str]:
        lines = [line for line in log.read_text().splitlines() if "backup written:" in line]
        return lines if len(lines) >= 2 else []

    wait_for(written, stack.wait(240), "two scheduled backups", 5)

    def listing() -> dict[str, Any] | None:
        """`backup list`, and each listed file's mode; None when the next scheduled backup
        (every minute here) pruned a listed file before its mode was read (CI saw it)."""
        listed: dict[str, Any] = json.loads(
            cli("backup", "list", "--json", cwd=stack.root).stdout)
        try:
            listed["modes"] = [Path(b["file"]).stat().st_mode & 0o777
                               for b in listed["backups"]]
        except FileNotFoundError:
            return None
        return listed

    listed = wait_for(listing, stack.wait(120), "a listing whose files all exist", 1)
    backups = listed["backups"]
    assert backups and all(b["valid"] for b in backups), backups
    assert len(backups) == len({b["created_at"][:10] for b in backups}), backups  # 1 a day
    assert listed["last"]["ok"] and listed["last"]["schedule"] == "* * * * *", listed["last"]
    assert listed["modes"] == [0o600] * len(backups), (listed["modes"], backups)


def test_services_are_healthy_and_no_log_shows_a_problem(stack: Stack) -> None:
    data = status(stack.root)
    services = {s["name"]: s for s in data["services"]}
    assert not services["services"].get("degraded"), services["services"]
    # Only the services process was restarted, once, on purpose.
    assert all(s["restarts"] == (s["name"] == "services") for s in data["services"]), data
    problems = log_problems(stack.root / "state" / "logs", ALLOWED + _deleted_runs(stack))
    assert not problems, "\n".join(problems[:40])


_SUBMIT_FAILED = re.compile(r"Failed to update state of flow run '([0-9a-f-]{36})'")


def _deleted_runs(stack: Stack) -> tuple[tuple[str, str], ...]:
    """Allow-list the worker's failed submission of a run that no longer exists.

    Pausing a deployment deletes its scheduled runs (Prefect's `pause_deployment`, used by
    `_stop_schedule`). A worker that fetched one of them a moment earlier (it fetches runs
    due within its prefetch window) gets 404 for its Pending proposal, and Prefect logs that
    at ERROR with a traceback. Allowed only for runs the API confirms are gone; a failed
    submission of a run that still exists is a real problem.
    """
    failed = {(path.stem, m.group(1))
              for path in (stack.root / "state" / "logs").glob("worker-*.log")
              for m in _SUBMIT_FAILED.finditer(path.read_text(errors="replace"))}
    with stack.http("viewer") as client:
        return tuple((service, re.escape(f"of flow run '{run}'"))
                     for service, run in sorted(failed)
                     if client.get(f"/flow_runs/{run}").status_code == 404)


def _service_key_prefixes(stack: Stack) -> list[str]:
    secrets = json.loads((stack.root / "state" / "secrets.json").read_text())
    return [secrets[k][:12] for k in ("worker_api_key", "deployer_api_key")]


def _at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"]).timestamp()


def _exists(stack: Stack, name: str) -> bool:
    with stack.http("viewer") as client:
        return client.get(f"/deployments/name/{name}").status_code == 200


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
