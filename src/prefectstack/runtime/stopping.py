"""Stopping a locally supervised stack from outside: ask its supervisor, wait for it, and
clean up whatever a dead supervisor left behind. Used by `down` (and anything else that
must stop a stack first)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from prefectstack.errors import StackError
from prefectstack.runtime import local, state

STOP_TIMEOUT_SECONDS = 90


def stop(state_dir: Path) -> tuple[bool, list[str]]:
    """Stop the stack in `state_dir`. Returns (whether a live supervisor was stopped, the
    leftover processes of a dead one that were stopped instead)."""
    current = state.read(state_dir)
    if state.supervisor_alive(state_dir) and current is not None:
        stop_supervisor(current.supervisor_pid, state_dir)
        return True, []
    # Waits until every leftover process has exited (PostgreSQL after a clean shutdown).
    return False, local.cleanup_stale(state_dir)


def stop_supervisor(pid: int, state_dir: Path,
                    timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM the supervisor (it stops its services in reverse dependency order), wait for
    it; SIGKILL it at the deadline and clean up after it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not state.supervisor_alive(state_dir):
            # It lets go of its lock just before it exits: wait for the exit itself, so
            # that when this returns no process of the stack is left, the supervisor's
            # own included.
            wait_gone(pid, deadline)
            local.cleanup_stale(state_dir)  # normally nothing is left; make sure
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    local.cleanup_stale(state_dir)
    raise StackError(f"the supervisor (pid {pid}) did not stop in time and was killed")


def wait_gone(pid: int, deadline: float) -> None:
    """Until `pid` has exited (a zombie counts: its parent, gone too, may never reap it);
    SIGKILL at the deadline."""
    import psutil

    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
