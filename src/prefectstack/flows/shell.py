"""Run a shell command and stream its output, line by line, into the run's logs.

The flow behind the seed documents' "run shell command" jobs: anything a cron line or a CI
step would run, with the output visible in the Prefect UI while it runs, a timeout, and a
failed run (quoting the last lines of output) when the command fails.

POSIX only (`/bin/sh`); for cmd.exe on Windows workers use `windows.py:windows_command`.
No retries by default, because a command is not known to be safe to repeat; when it is,
deploy `shell_command.with_options(retries=2)` or wrap it in your own flow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from prefectstack.flows._common import CommandFailed, CommandTimedOut, run_streaming

__all__ = ["CommandFailed", "CommandTimedOut", "shell_command"]


@flow(name="shell-command")
def shell_command(
    command: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_seconds: float | None = 3600,
    tail_lines: int = 20,
) -> int:
    """Run `command` with `/bin/sh -c`, logging each output line as it arrives.

    Args:
        command: The shell command line (pipes, `&&`, redirections and so on work).
        cwd: Working directory; defaults to the worker's working directory.
        env: Extra environment variables, added to the worker's environment.
        timeout_seconds: Kill the command (and its children) after this long; `None` waits
            forever.
        tail_lines: How many of the last output lines to quote in the failure message.

    Returns:
        The exit code, 0. A non-zero exit code fails the run with `CommandFailed`, and a
        timeout with `CommandTimedOut`; both quote the last `tail_lines` lines.
    """
    logger = get_run_logger()
    logger.info("running: %s", command)
    return run_streaming(
        ["/bin/sh", "-c", command],
        log=logger.info,
        cwd=cwd,
        env=env,
        timeout_seconds=timeout_seconds,
        tail_lines=tail_lines,
    )
