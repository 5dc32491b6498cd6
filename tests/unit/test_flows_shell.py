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


def test_the_windows_flow_takes_no_command_either() -> None:
    """The other bundled command runner: a run chooses neither the command nor its working
    directory or environment (an operator may start runs)."""
    from prefectstack.flows.windows import windows_command

    assert list(inspect.signature(windows_command.fn).parameters) == [
        "timeout_seconds", "tail_lines"]
