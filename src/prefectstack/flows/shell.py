"""Run the deployment's shell command and stream its output, line by line, into the run's logs.

The flow behind the seed documents' "run shell command" jobs: anything a cron line or a CI
step would run, with the output visible in the Prefect UI while it runs, a timeout, and a
failed run (quoting the last lines of output) when the command fails.

The command is the deployment's, never a run's: it comes from the environment variable
`PREFECTSTACK_SHELL_COMMAND`, which the deployment sets in its job variables
(`job_variables={"env": {"PREFECTSTACK_SHELL_COMMAND": "..."}}`). Deciding what runs is a
developer's decision (the edge lets only a developer change job variables, on a deployment or
on a run); an operator who starts a run passes `args`, which reach the command as its
positional parameters (`"$1"`, `"$@"`), as data, never as shell text.

POSIX only (`/bin/sh`); for cmd.exe on Windows workers use `windows.py:windows_command`.
No retries by default, because a command is not known to be safe to repeat; when it is,
deploy `shell_command.with_options(retries=2)` or wrap it in your own flow.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger

from prefectstack.flows._common import CommandFailed, CommandTimedOut, run_streaming

__all__ = ["SHELL_COMMAND_ENV", "CommandFailed", "CommandTimedOut", "NoCommand", "shell_command"]

SHELL_COMMAND_ENV = "PREFECTSTACK_SHELL_COMMAND"
# `$0` of the command: what the shell names in its own error messages.
SCRIPT_NAME = "shell-command"


class NoCommand(RuntimeError):
    """The deployment names no command to run."""


def deployment_command() -> str:
    command = os.environ.get(SHELL_COMMAND_ENV, "").strip()
    if not command:
        raise NoCommand(
            f"shell-command runs the command its deployment sets in {SHELL_COMMAND_ENV}; this "
            f"run has none. Deploy with job_variables={{'env': {{'{SHELL_COMMAND_ENV}': "
            "'your command'}}}} (run parameters are passed to it as arguments)."
        )
    return command


@flow(name="shell-command")
def shell_command(
    args: list[str] | None = None,
    timeout_seconds: float | None = 3600,
    tail_lines: int = 20,
) -> int:
    """Run the deployment's command with `/bin/sh -c`, logging each output line as it arrives.

    Args:
        args: Arguments for the command: its positional parameters `"$1"`, `"$2"`, ...
            (`"$@"` for all), passed as an argument vector, never parsed as shell text.
        timeout_seconds: Kill the command (and its children) after this long; `None` waits
            forever.
        tail_lines: How many of the last output lines to quote in the failure message.

    Returns:
        The exit code, 0. A non-zero exit code fails the run with `CommandFailed`, and a
        timeout with `CommandTimedOut`; both quote the last `tail_lines` lines. A deployment
        without a command fails with `NoCommand`.
    """
    logger = get_run_logger()
    command = deployment_command()
    arguments = list(args or [])
    logger.info("running the deployment's command with %d argument(s): %s %r",
                len(arguments), command, arguments)
    return run_streaming(
        ["/bin/sh", "-c", command, SCRIPT_NAME, *arguments],
        log=logger.info,
        timeout_seconds=timeout_seconds,
        tail_lines=tail_lines,
    )
