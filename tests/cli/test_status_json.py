"""`prefectstack status --json`: the shape scripts and the integration tests rely on.

A state dir is made by hand: a state file written with `state.write` (this test process
plays the supervisor's and a service's part) and, for a running stack, the supervisor lock
held by this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.runtime import state

TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "stack": str, "source": str, "supervisor_pid": int, "supervisor_started": float,
    "phase": str, "message": str, "ui_url": str, "services": list, "running": bool,
    "stale": bool,
}
SERVICE: dict[str, type | tuple[type, ...]] = {
    "name": str, "kind": str, "state": str, "pid": (int, type(None)),
    "pid_started": (float, type(None)), "started_at": (float, type(None)), "restarts": int,
    "healthy": (bool, type(None)), "last_exit": (int, type(None)), "ports": list,
    "probe": str, "degraded": bool, "detail": str,
}
NOT_RUNNING = {"running": False, "stale": False, "phase": "stopped", "services": []}


def _dead_pid() -> tuple[int, float]:
    child = subprocess.Popen(["true"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nname: demo\nstate_dir: my-state\n")
    return path


@pytest.fixture
def state_dir(stack_file: Path) -> Path:
    """Where `status` looks for this stack file's state (relative to the file)."""
    return stack_file.parent / "my-state"


@pytest.fixture
def written(state_dir: Path, stack_file: Path) -> state.StackState:
    me = psutil.Process()
    dead_pid, dead_started = _dead_pid()
    current = state.StackState(
        stack="demo", source=str(stack_file), supervisor_pid=me.pid,
        supervisor_started=me.create_time(), phase="ready", ui_url="https://localhost:8443",
        services=[
            state.ServiceState(name="postgres", kind="service", state="ready", pid=me.pid,
                               pid_started=me.create_time(), started_at=me.create_time(),
                               healthy=True, ports=[5432], probe="tcp 127.0.0.1:5432"),
            state.ServiceState(name="migrate", kind="oneshot", state="completed",
                               last_exit=0),
            state.ServiceState(name="api-1", kind="service", state="ready", pid=dead_pid,
                               pid_started=dead_started, started_at=dead_started, restarts=1,
                               healthy=True, ports=[4200], probe="http /api/health"),
            state.ServiceState(name="services", kind="service", state="ready", pid=me.pid,
                               pid_started=me.create_time(), started_at=me.create_time()),
        ],
    )
    state_dir.mkdir()
    state.write(state_dir, current)
    return current


@pytest.fixture
def supervisor(state_dir: Path) -> Iterator[None]:
    """This process holds the supervisor's lock, as `up` does while the stack runs."""
    lock = state.SupervisorLock(state_dir)
    assert lock.try_acquire()
    yield
    lock.release()


def status_json(stack_file: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--json", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _assert_shape(data: dict[str, Any]) -> None:
    assert set(data) == set(TOP_LEVEL)
    for key, kind in TOP_LEVEL.items():
        assert isinstance(data[key], kind), f"{key}: {data[key]!r}"
    for svc in data["services"]:
        assert set(svc) == set(SERVICE), svc["name"]
        for key, kinds in SERVICE.items():
            assert isinstance(svc[key], kinds), f"{svc['name']}.{key}: {svc[key]!r}"
        assert all(isinstance(p, int) for p in svc["ports"])


def test_running_stack(
    stack_file: Path, written: state.StackState, supervisor: None
) -> None:
    data = status_json(stack_file)
    _assert_shape(data)
    assert (data["running"], data["stale"], data["phase"]) == (True, False, "ready")
    assert data["stack"] == "demo" and data["source"] == str(stack_file)
    assert data["supervisor_pid"] == os.getpid()
    assert data["ui_url"] == "https://localhost:8443"
    by_name = {s["name"]: s for s in data["services"]}
    assert list(by_name) == ["postgres", "migrate", "api-1", "services"]  # the file's order
    assert by_name["postgres"]["state"] == "ready"
    assert by_name["postgres"]["pid"] == os.getpid() and by_name["postgres"]["ports"] == [5432]
    assert by_name["migrate"]["state"] == "completed" and by_name["migrate"]["pid"] is None
    assert by_name["migrate"]["last_exit"] == 0
    assert by_name["api-1"]["state"] == "gone"  # its pid no longer runs
    assert by_name["api-1"]["restarts"] == 1
    # the services process has no log yet: nothing failing
    assert (by_name["services"]["degraded"], by_name["services"]["detail"]) == (False, "")


def test_json_is_sorted_and_alone_on_stdout(
    stack_file: Path, written: state.StackState, supervisor: None
) -> None:
    result = CliRunner().invoke(cli, ["status", "--json", "-f", str(stack_file)])
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2, sort_keys=True) + "\n"


def test_stale_state_when_nobody_holds_the_lock(
    stack_file: Path, written: state.StackState
) -> None:
    """A state file left behind by a supervisor that died (`kill -9`)."""
    data = status_json(stack_file)
    _assert_shape(data)
    assert (data["running"], data["stale"], data["phase"]) == (False, True, "stale")
    assert [s["state"] for s in data["services"]] == ["ready", "completed", "gone", "ready"]


def test_not_running(stack_file: Path, state_dir: Path) -> None:
    assert status_json(stack_file) == NOT_RUNNING
    assert not (state_dir / "state.json").exists()


def test_not_running_after_remove(
    stack_file: Path, state_dir: Path, written: state.StackState
) -> None:
    state.remove(state_dir)
    assert status_json(stack_file) == NOT_RUNNING


def test_not_running_through_main_from_the_stack_directory(stack_file: Path) -> None:
    """As a script calls it: `python -m prefectstack status --json` in the stack's dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    result = subprocess.run([sys.executable, "-m", "prefectstack", "status", "--json"],
                            cwd=stack_file.parent, capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == NOT_RUNNING


def test_human_output_when_not_running(stack_file: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "-f", str(stack_file)])
    assert result.exit_code == 0
    assert result.stdout == "stack is not running\n"
