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
from prefectstack.cli.status import (
    EXIT_DEGRADED,
    EXIT_FAILED,
    EXIT_HEALTHY,
    EXIT_NOT_RUNNING,
    EXIT_STALE,
    HEALTH_EXIT_CODES,
)
from prefectstack.runtime import state

TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "stack": str, "source": str, "supervisor_pid": int, "supervisor_started": float,
    "phase": str, "message": str, "ui_url": str, "services": list, "running": bool,
    "stale": bool, "health": str,
}
SERVICE: dict[str, type | tuple[type, ...]] = {
    "name": str, "kind": str, "state": str, "pid": (int, type(None)),
    "pid_started": (float, type(None)), "started_at": (float, type(None)), "restarts": int,
    "healthy": (bool, type(None)), "last_exit": (int, type(None)), "ports": list,
    "probe": str, "degraded": bool, "detail": str, "stop_signal": str, "essential": bool,
}
NOT_RUNNING = {"running": False, "stale": False, "phase": "stopped", "services": [],
               "health": "stopped"}


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


def status_json(stack_file: Path, code: int | None = None) -> dict[str, Any]:
    """`status --json`; its exit code must be the one of the health it reports."""
    result = CliRunner().invoke(cli, ["status", "--json", "-f", str(stack_file)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == HEALTH_EXIT_CODES[data["health"]], result.output
    if code is not None:
        assert result.exit_code == code
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
    data = status_json(stack_file, EXIT_DEGRADED)  # api-1 is gone
    _assert_shape(data)
    assert (data["running"], data["stale"], data["phase"]) == (True, False, "ready")
    assert data["health"] == "degraded"
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
    data = status_json(stack_file, EXIT_STALE)
    _assert_shape(data)
    assert (data["running"], data["stale"], data["phase"]) == (False, True, "stale")
    # nobody supervises what still runs: no frozen "ready/healthy" rows
    assert [s["state"] for s in data["services"]] == ["orphaned", "completed", "gone",
                                                      "orphaned"]
    assert [s["healthy"] for s in data["services"]] == [None, None, None, None]


def test_not_running(stack_file: Path, state_dir: Path) -> None:
    assert status_json(stack_file, EXIT_NOT_RUNNING) == NOT_RUNNING
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
    assert result.returncode == EXIT_NOT_RUNNING, result.stderr
    assert json.loads(result.stdout) == NOT_RUNNING


def test_human_output_when_not_running(stack_file: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "-f", str(stack_file)])
    assert result.exit_code == EXIT_NOT_RUNNING
    assert result.stdout == "stack is not running\n"


# -- exit codes and honest states --------------------------------------------------------------


def _write(state_dir: Path, phase: str, *services: state.ServiceState) -> None:
    me = psutil.Process()
    state_dir.mkdir(exist_ok=True)
    state.write(state_dir, state.StackState(
        stack="demo", source="stack.yaml", supervisor_pid=me.pid,
        supervisor_started=me.create_time(), phase=phase, services=list(services)))


def _unit(name: str, unit_state: str, *, healthy: bool | None = True, restarts: int = 0,
          running: bool = True) -> state.ServiceState:
    me = psutil.Process()
    return state.ServiceState(
        name=name, kind="daemon", state=unit_state, healthy=healthy, restarts=restarts,
        pid=me.pid if running else None, pid_started=me.create_time() if running else None,
        started_at=me.create_time() if running else None)


def _oneshot_done() -> state.ServiceState:
    return state.ServiceState(name="migrate", kind="oneshot", state="completed", last_exit=0)


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [EXIT_HEALTHY, EXIT_NOT_RUNNING, EXIT_DEGRADED, EXIT_FAILED, EXIT_STALE]
    assert EXIT_HEALTHY == 0 and len(set(codes)) == 5
    assert not {1, 2} & set(codes), "1 and 2 are the CLI's errors"
    result = CliRunner().invoke(cli, ["status", "--help"])
    for code in codes:
        assert f"  {code}  " in result.stdout


def test_a_healthy_stack_exits_0(stack_file: Path, state_dir: Path, supervisor: None) -> None:
    _write(state_dir, "ready", _unit("postgres", "ready"), _oneshot_done(), _unit("api", "ready"))
    data = status_json(stack_file, EXIT_HEALTHY)
    _assert_shape(data)
    assert data["health"] == "healthy"


@pytest.mark.parametrize("unit", [
    _unit("worker-1", "backoff", healthy=False, restarts=4, running=False),
    _unit("worker-1", "ready", healthy=False),
    _unit("worker-1", "starting", healthy=None),
    _unit("worker-1", "blocked", healthy=None, running=False),
])
def test_a_unit_not_ready_or_unhealthy_is_degraded(
    stack_file: Path, state_dir: Path, supervisor: None, unit: state.ServiceState,
) -> None:
    _write(state_dir, "ready", _unit("postgres", "ready"), unit)
    data = status_json(stack_file, EXIT_DEGRADED)
    assert data["services"][1]["state"] == unit.state


def test_a_unit_in_backoff_is_never_shown_ready(
    stack_file: Path, state_dir: Path, supervisor: None,
) -> None:
    _write(state_dir, "ready", _unit("postgres", "ready"),
           _unit("worker-1", "backoff", healthy=False, restarts=4, running=False))
    result = CliRunner().invoke(cli, ["status", "-f", str(stack_file)])
    assert result.exit_code == EXIT_DEGRADED
    row = next(line for line in result.stdout.splitlines() if line.startswith("worker-1"))
    assert "backoff" in row and "ready" not in row and " 4 " in row
    assert "worker-1: restarting (restart 4)" in result.stdout
    assert "health: degraded" in result.stdout


def test_a_failed_unit_beside_a_running_stack_exits_failed(
    stack_file: Path, state_dir: Path, supervisor: None,
) -> None:
    _write(state_dir, "ready", _unit("postgres", "ready"),
           _unit("worker-1", "failed", healthy=False, restarts=5, running=False),
           _unit("worker-2", "blocked", healthy=None, running=False))
    data = status_json(stack_file, EXIT_FAILED)
    assert [s["state"] for s in data["services"]] == ["ready", "failed", "blocked"]


def test_a_stack_that_failed_and_was_stopped_is_failed_not_stale(
    stack_file: Path, state_dir: Path,
) -> None:
    dead_pid, dead_started = _dead_pid()
    gone = state.ServiceState(name="api-1", kind="daemon", state="failed", pid=dead_pid,
                              pid_started=dead_started)
    _write(state_dir, "failed", _oneshot_done(), gone)
    data = status_json(stack_file, EXIT_FAILED)
    assert data["stale"] is True and data["health"] == "failed"
    human = CliRunner().invoke(cli, ["status", "-f", str(stack_file)])
    assert "the stack failed and its supervisor stopped it" in human.stderr


def test_a_stale_stack_exits_stale_also_in_human_form(
    stack_file: Path, written: state.StackState,
) -> None:
    result = CliRunner().invoke(cli, ["status", "-f", str(stack_file)])
    assert result.exit_code == EXIT_STALE
    assert "supervisor is gone" in result.stderr
