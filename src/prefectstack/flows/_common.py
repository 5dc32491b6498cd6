"""Helpers shared by the flows of the library (no flows here, and no Prefect run context needed).

Kept deliberately small: running a command while streaming its output, rendering Markdown
tables for artifacts, checking folder parameters, and deciding which errors deserve a retry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

IS_WINDOWS = sys.platform == "win32"


class CommandFailed(RuntimeError):
    """A command exited with a non-zero code; the message quotes the tail of its output."""

    def __init__(self, message: str, code: int | None, tail: Sequence[str]) -> None:
        super().__init__(message)
        self.code = code
        self.tail = list(tail)


class CommandTimedOut(CommandFailed):
    """A command ran longer than its timeout and was killed (with its children)."""


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill the command and everything it started, so no orphan keeps the output pipe open."""
    if proc.poll() is not None:
        return
    if IS_WINDOWS:
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
            capture_output=True,
            check=False,
        )
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_streaming(
    argv: Sequence[str] | str,
    *,
    log: Callable[[str], Any],
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
    tail_lines: int = 20,
    encoding: str = "utf-8",
) -> int:
    """Run `argv`, passing each line of its combined stdout/stderr to `log` as it arrives.

    `argv` is a list, or (for cmd.exe on Windows) a complete command line.

    stderr is merged into stdout so that lines keep the order the program wrote them in.
    The command runs in its own process group (POSIX) or process tree (Windows); on timeout,
    or if this process is interrupted (a cancelled flow run), the whole tree is killed.

    Returns 0; raises `CommandTimedOut` or `CommandFailed` (with the last `tail_lines` lines).
    """
    if cwd is not None and not Path(cwd).is_dir():
        raise NotADirectoryError(f"working directory {cwd!r} does not exist")
    tail: deque[str] = deque(maxlen=max(tail_lines, 1))
    proc = subprocess.Popen(
        argv if isinstance(argv, str) else list(argv),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding=encoding,
        errors="replace",
        bufsize=1,
        start_new_session=not IS_WINDOWS,
        creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),  # Windows only
    )
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _kill_tree(proc)

    timer = threading.Timer(timeout_seconds, expire) if timeout_seconds else None
    try:
        if timer:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\r\n")
            tail.append(line)
            log(line)
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        _kill_tree(proc)  # only does something when we got here by an exception
    last = "\n".join(tail)
    if timed_out.is_set():
        raise CommandTimedOut(
            f"command timed out after {timeout_seconds:g}s and was killed; last lines:\n{last}",
            None,
            tail,
        )
    if code != 0:
        raise CommandFailed(f"command exited with code {code}; last lines:\n{last}", code, tail)
    return code


def existing_dir(path: str, what: str = "folder") -> Path:
    """The resolved directory at `path`, or a clear error naming the parameter."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise NotADirectoryError(f"{what} {path!r} does not exist or is not a directory")
    return resolved


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of `rows` (pipes and newlines escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def shorten(text: str, limit: int = 300) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# Errors that retrying cannot fix: the input itself is wrong.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    ValueError,  # includes json.JSONDecodeError and UnicodeDecodeError
    LookupError,  # includes KeyError
    TypeError,
)


def retry_transient(task: object, task_run: object, state: Any) -> bool:
    """A Prefect `retry_condition_fn`: retry I/O hiccups, not bad input.

    Network shares and object stores fail transiently (`OSError`, timeouts); a malformed
    record or a missing file fails the same way every time, so retrying only wastes time.
    """
    error = getattr(state, "data", None)  # the engine puts the raised exception here
    return not isinstance(error, PERMANENT_ERRORS)
