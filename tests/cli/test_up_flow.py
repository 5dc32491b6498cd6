"""`up` prints the summary, then applies the stack file's deployments: on a thread from the
foreground supervisor's loop, and before returning when detached. Nothing is started here:
the supervisor and the background spawn are replaced by fakes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from prefectstack import tools
from prefectstack.cli import cli, progress
from prefectstack.cli import up as up_cli
from prefectstack.deploy import apply
from prefectstack.errors import StackError
from prefectstack.runtime import backend, local, ports, state
from prefectstack.stack.loader import LoadedStack


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nname: demo\nstate_dir: state\n")
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []

    def summary(_loaded: LoadedStack, detached: bool) -> None:
        seen.append(("summary", detached))

    def apply_on_up(_loaded: LoadedStack, *, background: bool) -> None:
        seen.append(("apply", background))

    monkeypatch.setattr(up_cli, "summary", summary)
    monkeypatch.setattr(apply, "apply_on_up", apply_on_up)
    return seen


def test_foreground_applies_on_a_thread_after_the_summary(
    stack_file: Path, calls: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(_loaded: LoadedStack, *, foreground: bool, on_ready: Callable[[], None],
            on_state: Callable[[state.StackState], None]) -> int:
        assert foreground and calls == []
        on_state(snapshot("starting", postgres="starting", migrate="pending"))
        on_state(snapshot("starting", postgres="ready", migrate="starting"))
        on_state(snapshot("ready", postgres="ready", migrate="completed"))
        on_ready()  # what the supervisor's loop does once every service is ready
        return 0

    monkeypatch.setattr(local, "run", run)
    result = CliRunner().invoke(cli, ["up", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert calls == [("summary", False), ("apply", True)]
    assert backend.read(stack_file.parent / "state").backend == backend.LOCAL
    # not a terminal: plain lines, each service once as it comes up, then the summary
    lines = [line.split(" | ", 1)[1] for line in result.stderr.splitlines()]
    assert lines[0].startswith("postgres ready after ") and lines[0].endswith("s (1/2)")
    assert lines[1].startswith("migrate completed after ") and lines[1].endswith("s (2/2)")
    assert lines[2].startswith("stack ready in ")
    assert lines[2].endswith("s: 1 services ready; 1 jobs completed")
    assert len(lines) == 3


def test_foreground_failure_ends_with_a_summary_of_what_failed(
    stack_file: Path, calls: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run(_loaded: LoadedStack, *, foreground: bool, on_ready: Callable[[], None],
            on_state: Callable[[state.StackState], None]) -> int:
        on_state(snapshot("starting", postgres="ready", migrate="backoff"))
        on_state(snapshot("failed", postgres="stopped", migrate="failed"))
        return 1

    monkeypatch.setattr(local, "run", run)
    result = CliRunner().invoke(cli, ["up", "-f", str(stack_file)])
    assert result.exit_code == 1 and calls == []
    lines = [line.split(" | ", 1)[1] for line in result.stderr.splitlines()]
    assert lines[1].startswith("migrate restarting (restart 1) after ")
    assert lines[2].startswith("migrate failed (exit code 1) after ")
    assert lines[3].startswith("stack failed after ") and lines[3].endswith(": migrate")


def snapshot(phase: str, **states: str) -> state.StackState:
    return state.StackState(
        stack="demo", source="", supervisor_pid=os.getpid(), supervisor_started=0.0,
        phase=phase, services=[
            state.ServiceState(name=name, kind="oneshot" if name == "migrate" else "daemon",
                               state=value, last_exit=1 if value == "failed" else None)
            for name, value in states.items()])


def test_detached_applies_before_returning(
    stack_file: Path, calls: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = os.getpid()

    states = iter([snapshot("starting", postgres="starting", migrate="pending"),
                   snapshot("starting", postgres="ready", migrate="starting")])

    def read(_state_dir: Path) -> state.StackState:
        found = next(states, None)
        if found is not None:
            return found
        done = snapshot("ready", postgres="ready", migrate="completed")
        done.message = "a note"
        return done

    def noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(local, "check_not_running", noop)
    monkeypatch.setattr(ports, "check_free", noop)
    monkeypatch.setattr(tools, "spawn_detached", lambda *_a, **_k: me)
    monkeypatch.setattr(state, "read", read)
    monkeypatch.setattr(up_cli, "POLL_SECONDS", 0)
    result = CliRunner().invoke(cli, ["up", "--detach", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert calls == [("summary", True), ("apply", False)]
    assert "warning: a note" in result.stderr
    progress = [line.split(" | ", 1)[1] for line in result.stderr.splitlines() if " | " in line]
    assert progress[0].startswith("supervisor started in the background")
    assert [line.split(" after ")[0].split(" in ")[0] for line in progress[1:]] == [
        "postgres ready", "migrate completed", "stack ready"]


def test_detached_with_a_unit_given_up_on_says_what_is_missing_and_exits_5(
    stack_file: Path, calls: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rest keeps running (no `down`), but `up` does not claim success, nor apply the
    stack file's deployments to a stack without its API."""
    me = os.getpid()
    done = snapshot("ready", postgres="ready", migrate="completed", **{"api-1": "failed"})
    done.services.append(state.ServiceState(name="edge", kind="daemon", state="blocked"))

    def noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(local, "check_not_running", noop)
    monkeypatch.setattr(ports, "check_free", noop)
    monkeypatch.setattr(tools, "spawn_detached", lambda *_a, **_k: me)
    monkeypatch.setattr(state, "read", lambda _dir: done)
    monkeypatch.setattr(up_cli, "POLL_SECONDS", 0)
    result = CliRunner().invoke(cli, ["up", "--detach", "-f", str(stack_file)])
    error = result.exception
    assert isinstance(error, StackError) and error.exit_code == 5, result.output
    assert calls == []
    assert error.message.startswith(
        "the stack started without: api-1 failed after 0 restarts, last exit code 1; "
        "edge blocked"), error.message
    assert "prefectstack logs api-1" in str(error.hint)


def test_on_a_terminal_rich_draws_the_lines_under_a_spinner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [100.0]
    shown = progress.StartProgress(terminal=True, clock=lambda: now[0])
    shown.update(snapshot("starting", postgres="starting", migrate="pending"))
    assert shown._status is not None, "a spinner names what is still starting"
    now[0] += 2.5
    shown.update(snapshot("starting", postgres="ready", migrate="starting"))
    now[0] += 1.0
    shown.finish(snapshot("ready", postgres="ready", migrate="completed"))
    assert shown._status is None, "the spinner is gone before the summary"
    shown.update(snapshot("ready", postgres="backoff", migrate="completed"))  # after: quiet
    err = capsys.readouterr().err
    assert "postgres ready after 2.5s (1/2)" in err
    assert "migrate completed after 3.5s (2/2)" in err
    assert "stack ready in 3.5s: 1 services ready; 1 jobs completed" in err
    assert "backoff" not in err and "restarting" not in err
