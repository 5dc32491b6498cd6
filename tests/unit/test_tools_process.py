"""A supervised process and the descendants it started in sessions of their own (as
Prefect's worker starts flow runs): stopping it stops them too. Real OS processes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

from prefectstack import tools

# A parent whose child leaves the parent's session and ignores SIGTERM, like a flow run that
# is slow to handle its termination.
# It writes its pid to a file once it runs: the test's readiness signal.
SCRIPT = ("setsid sh -c 'echo $$ > detached.pid; trap \"\" TERM; while :; do sleep 0.1; done' "
          "& sleep 60")


def _wait(predicate: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_service_counts_as_stopped_only_once_its_detached_children_are_gone(
    tmp_path: Path,
) -> None:
    with open(tmp_path / "log", "wb") as log:
        proc = tools.spawn(["sh", "-c", SCRIPT], env={"PATH": "/usr/bin:/bin"}, log=log,
                           cwd=tmp_path)
    pid_file = tmp_path / "detached.pid"
    _wait(lambda: pid_file.exists() and pid_file.read_text().strip())
    detached = [psutil.Process(int(pid_file.read_text()))]
    assert detached[0].is_running()
    proc.send(signal.SIGTERM)
    _wait(lambda: proc._popen.poll() is not None)  # the parent itself is gone
    time.sleep(0.3)
    assert proc.poll() is None, "its detached child still runs: not stopped yet"
    proc.send(signal.SIGKILL)  # the supervisor's escalation after the grace period
    _wait(lambda: proc.poll() is not None)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in detached)


def test_programs_get_sigint_back_even_when_we_run_with_it_ignored(tmp_path: Path) -> None:
    """Started with SIGINT ignored (a background job, nohup, pytest-xdist), we must not pass
    the ignore on: Prefect's worker stops on SIGTERM by sending itself SIGINT, and with the
    ignore inherited `worker join` never stopped."""
    import os
    import sys

    probe = ("import signal, sys; open(sys.argv[1], 'w')"
             ".write(str(signal.getsignal(signal.SIGINT) is signal.SIG_IGN))")
    spawned, foreground = tmp_path / "spawned", tmp_path / "foreground"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with (tmp_path / "log").open("wb") as log:
            proc = tools.spawn([sys.executable, "-c", probe, str(spawned)],
                               env=dict(os.environ), log=log, cwd=tmp_path)
            _wait(lambda: proc._popen.poll() is not None, 60)
        code = tools.run_foreground([sys.executable, "-c", probe, str(foreground)],
                                    env=dict(os.environ))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert spawned.read_text() == "False"  # the ignore was not inherited
    assert code == 0
    assert foreground.read_text() == "False"
