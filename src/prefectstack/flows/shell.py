"""Run a shell command and stream its output, line by line, into the run's logs."""

from __future__ import annotations

import os
import subprocess
import threading
from collections import deque

from prefect import flow, get_run_logger


class CommandFailed(RuntimeError):
    pass


@flow(name="shell-command")
def shell_command(
    command: str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout_seconds: float | None = 3600,
    tail_lines: int = 20,
) -> int:
    """Run `command` with /bin/sh; each output line is logged as it arrives.

    Fails the run on a non-zero exit code (quoting the last `tail_lines` lines) or when the
    command runs longer than `timeout_seconds`.
    """
    logger = get_run_logger()
    tail: deque[str] = deque(maxlen=tail_lines)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_seconds, expire) if timeout_seconds else None
    if timer:
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            logger.info(line)
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
    if timed_out.is_set():
        raise CommandFailed(f"command timed out after {timeout_seconds}s")
    if code != 0:
        raise CommandFailed(f"command exited with code {code}; last lines:\n" + "\n".join(tail))
    return code
