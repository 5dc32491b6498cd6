"""`prefectstack down` after the supervisor died: leftovers are stopped and waited for,
and the state is cleared even when nothing was left."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.runtime import state


def _stack(tmp_path: Path) -> tuple[Path, Path]:
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text("version: 1\nname: demo\nstate_dir: st\n")
    (tmp_path / "st").mkdir()
    return stack_file, tmp_path / "st"


def _record(state_dir: Path, *services: state.ServiceState, phase: str = "ready") -> None:
    state.write(state_dir, state.StackState(
        stack="demo", source="stack.yaml", supervisor_pid=0, supervisor_started=0.0,
        phase=phase, message="api-1 exited with code 1", services=list(services)))


def test_down_stops_a_leftover_and_waits_for_it(tmp_path: Path) -> None:
    stack_file, state_dir = _stack(tmp_path)
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _record(state_dir, state.ServiceState(
            name="api-1", kind="daemon", state="ready", pid=proc.pid,
            pid_started=psutil.Process(proc.pid).create_time()))
        result = CliRunner().invoke(cli, ["down", "-f", str(stack_file)])
        assert result.exit_code == 0, result.output
        assert f"stopped leftover api-1 (pid {proc.pid})" in result.stderr
        assert proc.poll() == -signal.SIGTERM, "already exited when down returned"
        assert state.read(state_dir) is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_down_after_a_supervisor_whose_services_died_with_it(tmp_path: Path) -> None:
    stack_file, state_dir = _stack(tmp_path)
    _record(state_dir, state.ServiceState(name="api-1", kind="daemon", state="ready",
                                          pid=None))
    result = CliRunner().invoke(cli, ["down", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert "removed its leftover state" in result.stderr
    assert state.read(state_dir) is None


def test_down_after_a_stack_that_failed(tmp_path: Path) -> None:
    stack_file, state_dir = _stack(tmp_path)
    _record(state_dir, phase="failed")
    result = CliRunner().invoke(cli, ["down", "-f", str(stack_file)])
    assert "the stack had failed and was stopped (api-1 exited with code 1)" in result.stdout
    assert state.read(state_dir) is None
