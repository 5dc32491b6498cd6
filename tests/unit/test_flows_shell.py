"""The shell flow's command comes from its deployment, never from a run's parameters."""

from __future__ import annotations

import inspect

import pytest

from prefectstack.flows.shell import SHELL_COMMAND_ENV, NoCommand, deployment_command, shell_command


def test_the_command_is_the_deployments_job_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SHELL_COMMAND_ENV, ' echo "$1" ')
    assert deployment_command() == 'echo "$1"'
    monkeypatch.setenv(SHELL_COMMAND_ENV, "  ")
    with pytest.raises(NoCommand, match=SHELL_COMMAND_ENV):
        deployment_command()


def test_no_parameter_becomes_shell_text_or_the_environment() -> None:
    assert list(inspect.signature(shell_command.fn).parameters) == [
        "args", "timeout_seconds", "tail_lines"]
