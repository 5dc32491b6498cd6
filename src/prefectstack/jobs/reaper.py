"""Run a stock Prefect process worker so that its flow runs never outlive it.

`python -m prefectstack.jobs.reaper -m prefect worker start ...` runs the worker (this
interpreter with those arguments) as its child and becomes a child subreaper
(`PR_SET_CHILD_SUBREAPER`): a flow-run process whose worker died is handed to this process,
not to init. When the worker exits, for whatever reason, or when this process is told to
stop (the supervisor's stop signal, or the parent-death signal the supervisor's spawn sets,
so also when the supervisor is killed with -9), every process left below it gets SIGTERM
(Prefect's engine then reports its run Crashed while the API is there to hear it), and
SIGKILL after a grace period. Then it exits with the worker's code, and the supervisor
restarts the unit as usual. A stop signal from the living supervisor is not passed on: the
supervisor signals every process below the unit itself (once each), and waits for them.

The warm worker needs none of this: its forkserver's children die with it. Containers
don't either: when a container's main process ends, everything in it is stopped.

Written by hand (about 100 lines): tini and dumb-init reap but do not stop orphans of a
dead child, and neither is a Python dependency.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import psutil

from prefectstack import tools

PR_SET_CHILD_SUBREAPER = 36
GRACE_ENV = "PREFECTSTACK_REAPER_GRACE"
DEFAULT_GRACE_SECONDS = 10.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    """Collect every child that has exited (the worker's orphans end up as ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _below() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: psutil.Process, sig: int) -> None:
    """`sig` to the process, and to its process group when it leads one (a flow run runs
    in a session of its own, with its own children in it)."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


def stop_everything_below(grace: float) -> None:
    """SIGTERM to every process below this one, SIGKILL to what is left after `grace`."""
    for proc in _below():
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not _below():
            return
        time.sleep(0.1)
    for proc in _below():
        _signal(proc, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _below() and time.monotonic() < deadline:
        _reap()
        time.sleep(0.05)
    _reap()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m prefectstack.jobs.reaper PYTHON-ARGS...", file=sys.stderr)
        return 2
    grace = float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS)
    become_subreaper()
    supervisor = os.getppid()
    # A process group of its own: the supervisor's group-wide stop signal reaches us only.
    # It gets SIGTERM if we are killed (-9 included), so the supervisor's restart never
    # meets a worker of the old unit still running.
    worker = subprocess.Popen([sys.executable, *argv],
                              preexec_fn=tools.die_with_parent(signal.SIGTERM),
                              process_group=0)
    stopped_by_supervisor = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped_by_supervisor
        if os.getppid() == supervisor:
            # The supervisor stopping the unit signals every process below us itself
            # (tools.Process.send): a second SIGTERM would cut Prefect's worker's own
            # shutdown short (its KeyboardInterrupt, logged at ERROR). Nothing to add.
            stopped_by_supervisor = True
            return
        try:  # our parent is gone (its parent-death signal): we stop the worker
            worker.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, on_signal)
    while True:  # waitpid is retried after each signal handler (PEP 475)
        pid, status = os.waitpid(-1, 0)
        if pid == worker.pid:
            code = os.waitstatus_to_exitcode(status)
            break
    worker.returncode = code
    if stopped_by_supervisor:
        wait_for_everything_below()  # signalled already; the supervisor escalates itself
    else:
        stop_everything_below(grace)
    return code if code >= 0 else 128 - code


def wait_for_everything_below() -> None:
    while _below():
        _reap()
        time.sleep(0.1)
    _reap()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
