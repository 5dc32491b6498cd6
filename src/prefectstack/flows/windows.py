"""Run a cmd.exe command on a Windows worker; fail clearly anywhere else.

The seed documents' "create a file on Windows with cmd.exe" job, generalised. Windows work
is routed with a work queue, by convention named `windows` (`WINDOWS_QUEUE`): deploy this flow
with `work_queue_name="windows"`, start the worker on the Windows machine with
`--work-queue windows`, and start every Linux/macOS worker of that pool with
`--work-queue default` (a worker started without `--work-queue` polls every queue of its
pool, and would pick Windows runs up). A pool served only by Windows workers (say `windows`)
is the simpler alternative when the Windows machines do nothing else.

If a run lands on another operating system anyway, it fails at once with a message that says
so and how to route it, instead of failing obscurely inside cmd.exe.
"""

from __future__ import annotations

import os
import platform

from prefect import flow, get_run_logger

from prefectstack.flows._common import run_streaming

WINDOWS_QUEUE = "windows"
# Set by the deployment (job variables), never by a run: see `windows_command`.
WINDOWS_COMMAND_ENV = "PREFECTSTACK_WINDOWS_COMMAND"
DEFAULT_COMMAND = (
    "echo Created by prefectstack on %COMPUTERNAME% > prefectstack-hello.txt"
    " && type prefectstack-hello.txt"
)


class NotOnWindows(RuntimeError):
    """The flow ran on a worker that is not on Windows: a routing mistake."""


def require_windows(system: str | None = None) -> None:
    """Raise `NotOnWindows`, with routing advice, unless this is (or `system` names) Windows."""
    system = system or platform.system()
    if system == "Windows":
        return
    raise NotOnWindows(
        f"windows-command needs a Windows worker, but this run landed on {system} "
        f"({platform.node() or 'unknown host'}). Deploy it to the {WINDOWS_QUEUE!r} work queue "
        f"and serve that queue only from Windows (`prefect worker start --pool POOL "
        f"--work-queue {WINDOWS_QUEUE}`), with the pool's other workers started with "
        f"`--work-queue default`; or use a pool served only by Windows workers."
    )


@flow(name="windows-command")
def windows_command(
    timeout_seconds: float | None = 3600,
    tail_lines: int = 20,
) -> int:
    """Run the deployment's cmd.exe command with `cmd.exe /d /s /c`, logging each output
    line as it arrives.

    What runs is the deployment's decision, never a run's: the command comes from the
    environment variable `PREFECTSTACK_WINDOWS_COMMAND`, set in the deployment's job
    variables (only a developer may set job variables); without it, the default writes
    `prefectstack-hello.txt` in the working directory and prints it, as the seed documents'
    Windows example does. An operator who starts a run cannot change the command, its
    working directory or its environment.

    Args:
        timeout_seconds: Kill the command (and its process tree) after this long.
        tail_lines: How many of the last output lines to quote in the failure message.

    Returns:
        The exit code, 0. Fails with `NotOnWindows` on other systems, and with
        `CommandFailed`/`CommandTimedOut` (quoting the output's tail) as `shell-command` does.
    """
    require_windows()
    command = os.environ.get(WINDOWS_COMMAND_ENV) or DEFAULT_COMMAND
    logger = get_run_logger()
    logger.info("running with cmd.exe: %s", command)
    # One string, not a list: cmd.exe does not understand the backslash-escaped quotes that
    # list quoting would add; with /s it strips just the outer pair and runs the rest verbatim.
    return run_streaming(
        f'{os.environ.get("COMSPEC", "cmd.exe")} /d /s /c "{command}"',
        log=logger.info,
        timeout_seconds=timeout_seconds,
        tail_lines=tail_lines,
        encoding="oem",  # cmd.exe writes in the console's OEM code page
    )
