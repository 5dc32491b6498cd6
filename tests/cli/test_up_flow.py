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
from prefectstack.cli import cli
from prefectstack.cli import up as up_cli
from prefectstack.deploy import apply
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
    def run(_loaded: LoadedStack, *, foreground: bool, on_ready: Callable[[], None]) -> int:
        assert foreground and calls == []
        on_ready()  # what the supervisor's loop does once every service is ready
        return 0

    monkeypatch.setattr(local, "run", run)
    result = CliRunner().invoke(cli, ["up", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert calls == [("summary", False), ("apply", True)]
    assert backend.read(stack_file.parent / "state").backend == backend.LOCAL


def test_detached_applies_before_returning(
    stack_file: Path, calls: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = os.getpid()

    def read(_state_dir: Path) -> state.StackState:
        return state.StackState(stack="demo", source="", supervisor_pid=me,
                                supervisor_started=0.0, phase="ready", message="a note")

    def noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(local, "check_not_running", noop)
    monkeypatch.setattr(ports, "check_free", noop)
    monkeypatch.setattr(tools, "spawn_detached", lambda *_a, **_k: me)
    monkeypatch.setattr(state, "read", read)
    result = CliRunner().invoke(cli, ["up", "--detach", "-f", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert calls == [("summary", True), ("apply", False)]
    assert "warning: a note" in result.stderr
