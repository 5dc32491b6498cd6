"""Asking a running supervisor to restart one of its units (`upgrade`), from another shell.

The request is a small JSON file in `<state dir>/control/` (0700, in the 0700 state dir),
written atomically 0600, then SIGUSR1 to the supervisor. The supervisor reads the files on
that signal, acts on each once (deleting it first) and writes the answer beside it. Only
the stack's own user can write there or signal the supervisor: the file system and the
kernel do the authentication. The supervisor still trusts nothing in the file: it must be
a regular file of its own user, small, and name a unit of the stack; the only action is
`restart`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.runtime import state
from prefectstack.runtime.files import write_atomic

CONTROL_DIR = "control"
# Written by a supervisor that serves requests, with its pid: SIGUSR1's default action ends
# a process, so a supervisor of an older version, which does not serve them, is never sent it.
SERVING_FILE = "serving"
REQUEST_SUFFIX = ".request"
ANSWER_SUFFIX = ".answer"
MAX_REQUEST_BYTES = 4096
ANSWER_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Answer:
    ok: bool
    message: str


def control_dir(state_dir: Path) -> Path:
    return state_dir / CONTROL_DIR


def open_for_requests(state_dir: Path, pid: int) -> None:
    """The supervisor's side, at its start: requests are served, by `pid`."""
    where = control_dir(state_dir)
    where.mkdir(mode=0o700, exist_ok=True)
    where.chmod(0o700)
    for stale in where.iterdir():  # left by an earlier supervisor
        with contextlib.suppress(OSError):
            stale.unlink()
    write_atomic(where / SERVING_FILE, str(pid))


def ask_restart(state_dir: Path, unit: str,
                timeout: float = ANSWER_TIMEOUT_SECONDS) -> Answer:
    """Ask the supervisor of the running stack in `state_dir` to restart `unit`; its answer
    (whether the restart has begun). Raises when no supervisor runs or none answers."""
    current = state.read(state_dir)
    if current is None or not state.supervisor_alive(state_dir) or not state.same_process(
            current.supervisor_pid, current.supervisor_started):
        raise StackError(f"the stack in {state_dir} is not running",
                         hint="start it with `prefectstack up --detach`")
    where = control_dir(state_dir)
    try:
        serving = int((where / SERVING_FILE).read_text())
    except (OSError, ValueError):
        serving = None
    if serving != current.supervisor_pid:
        raise StackError("this stack's supervisor takes no restart requests (it was started "
                         "by an older prefectstack)",
                         hint="`prefectstack down` and `prefectstack up --detach` once")
    token = secrets.token_hex(8)
    request = where / f"{token}{REQUEST_SUFFIX}"
    answer = where / f"{token}{ANSWER_SUFFIX}"
    write_atomic(request, json.dumps({"action": "restart", "unit": unit}))
    os.kill(current.supervisor_pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = _read_json(answer)
            if found is not None:
                return Answer(bool(found.get("ok")), str(found.get("message", "")))
            time.sleep(POLL_SECONDS)
    finally:
        answer.unlink(missing_ok=True)
        request.unlink(missing_ok=True)
    raise StackError(f"the supervisor (pid {current.supervisor_pid}) did not answer the "
                     f"request to restart {unit} within {timeout:.0f}s",
                     hint="`prefectstack status`; its log: logs/supervisor.log")


def serve(state_dir: Path, restart: Callable[[str], str | None]) -> list[str]:
    """The supervisor's side, on SIGUSR1: act on every pending request (`restart(unit)`
    returns why it cannot, or None) and answer it. Returns what was done, for its log."""
    where = control_dir(state_dir)
    try:
        names = sorted(p.name for p in where.iterdir() if p.name.endswith(REQUEST_SUFFIX))
    except FileNotFoundError:
        return []
    done: list[str] = []
    for name in names:
        path = where / name
        request = _take(path)
        if request is None:
            continue
        unit = request.get("unit")
        if request.get("action") != "restart" or not isinstance(unit, str):
            outcome: str | None = "not a request this supervisor knows"
        else:
            outcome = restart(unit)
        answer = Answer(outcome is None, outcome or f"restarting {unit}")
        with contextlib.suppress(OSError):
            write_atomic(path.with_name(name.removesuffix(REQUEST_SUFFIX) + ANSWER_SUFFIX),
                         json.dumps({"ok": answer.ok, "message": answer.message}))
        done.append(f"control request: {answer.message}")
    return done


def _take(path: Path) -> dict[str, object] | None:
    """The request in `path` (removed), if it is a small regular file of our own user."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() \
                or info.st_size > MAX_REQUEST_BYTES:
            return None
        data = os.read(fd, MAX_REQUEST_BYTES)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None
