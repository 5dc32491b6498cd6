"""No orphans: a service dies with the supervisor that spawned it, even of `kill -9`; what a
dead supervisor left behind is found (leader, descendants, process group) and stopped.
Real OS processes; readiness through pid files, no fixed sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from prefectstack import tools

ENV = {"PATH": "/usr/bin:/bin"}

# A tiny supervisor: spawns one service through tools.spawn, writes the service's pid, waits.
PARENT = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from prefectstack import tools

    out, user, sig, script = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3]), sys.argv[4]
    with open(out.with_suffix(".log"), "wb") as log:
        proc = tools.spawn(["sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, log=log,
                           cwd=out.parent, user=user, death_signal=sig)
    out.with_suffix(".tmp").write_text(str(proc.pid))
    out.with_suffix(".tmp").rename(out)
    time.sleep(120)
""")
SLEEPER = "while :; do sleep 0.1; done"


def wait_until(predicate: Callable[[], object], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_parent(tmp_path: Path, *, user: str = "", sig: int = signal.SIGKILL,
                 script: str = SLEEPER) -> tuple[subprocess.Popen[bytes], int]:
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pidfile), user, str(sig),
                               script])
    try:
        wait_until(lambda: pidfile.exists() or parent.poll() is not None)
        assert parent.poll() is None, "the parent died before spawning"
        child = int(pidfile.read_text())
        assert running(child)
    except BaseException:
        parent.kill()
        raise
    return parent, child


def kill9_and_expect_child_gone(parent: subprocess.Popen[bytes], child: int) -> None:
    try:
        assert psutil.Process(child).ppid() == parent.pid
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not running(child))
    finally:
        tools.kill_group(child)


def test_a_service_dies_with_a_supervisor_killed_with_sigkill(tmp_path: Path) -> None:
    parent, child = start_parent(tmp_path)
    kill9_and_expect_child_gone(parent, child)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_a_service_run_as_another_user_dies_with_the_supervisor_too(tmp_path: Path) -> None:
    """The setting is cleared by a change of credentials: it must be made after setuid."""
    tmp_path.chmod(0o777)
    parent, child = start_parent(tmp_path, user="nobody")
    assert psutil.Process(child).username() == "nobody"
    kill9_and_expect_child_gone(parent, child)


def test_the_death_signal_is_the_one_asked_for(tmp_path: Path) -> None:
    """A graceful signal (the service's stop signal) lets it shut down cleanly."""
    marker = tmp_path / "got-term"
    script = f"trap 'echo term > {marker}; exit 0' TERM; {SLEEPER}"
    parent, child = start_parent(tmp_path, sig=signal.SIGTERM, script=script)
    kill9_and_expect_child_gone(parent, child)
    wait_until(marker.exists)


def test_spawn_from_another_thread_does_not_tie_the_service_to_that_thread(
    tmp_path: Path,
) -> None:
    """The kernel signals when the forking *thread* exits: no death signal from a thread."""
    procs: list[tools.Process] = []
    with open(tmp_path / "log", "wb") as log:
        thread = threading.Thread(target=lambda: procs.append(
            tools.spawn(["sh", "-c", SLEEPER], env=ENV, log=log, cwd=tmp_path)))
        thread.start()
        thread.join()
    proc = procs[0]
    try:
        time.sleep(0.3)  # a death signal would be delivered at once; give it a moment
        assert running(proc.pid)
    finally:
        proc.send(signal.SIGKILL)
        wait_until(lambda: proc.poll() is not None)


def test_spawn_of_a_program_we_may_not_execute_is_a_stack_error(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o600)
    with open(tmp_path / "log", "wb") as log, pytest.raises(tools.StackError) as caught:
        tools.spawn([str(script)], env=ENV, log=log, cwd=tmp_path)
    assert "permission denied" in str(caught.value)


# -- leftovers of a dead supervisor ------------------------------------------------------------


def test_leftovers_include_group_members_whose_leader_is_gone(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    leader = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {pidfile}.tmp; "
                               f"mv {pidfile}.tmp {pidfile}"], start_new_session=True)
    started = psutil.Process(leader.pid).create_time()
    leader.wait()
    wait_until(pidfile.exists)
    member = int(pidfile.read_text())
    try:
        found = tools.leftovers(leader.pid, started)
        assert list(found) == [member]
        assert tools.stop_processes(found, signal.SIGTERM, grace=10) == {}
        assert not running(member)
    finally:
        tools.kill_group(leader.pid)


def test_leftovers_of_a_reused_pid_are_nothing() -> None:
    me = psutil.Process()
    assert tools.leftovers(me.pid, me.create_time() - 100) == {}
    assert tools.leftovers(None, None) == {}


def test_leftovers_of_a_live_leader_include_detached_descendants(tmp_path: Path) -> None:
    pidfile = tmp_path / "detached.pid"
    script = (f"setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
              f"{SLEEPER}' & {SLEEPER}")
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        wait_until(pidfile.exists)
        detached = int(pidfile.read_text())
        found = tools.leftovers(leader.pid, psutil.Process(leader.pid).create_time())
        assert {leader.pid, detached} <= set(found)
        assert tools.stop_processes(found, signal.SIGTERM, grace=10) == {}
        assert not running(detached) and not running(leader.pid)
    finally:
        tools.kill_group(leader.pid)
        leader.wait()


def test_a_process_that_ignores_the_signal_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "trapped"
    stubborn = subprocess.Popen(
        ["sh", "-c", f"trap '' TERM; touch {marker}; {SLEEPER}"], start_new_session=True)
    try:
        wait_until(marker.exists)
        found = {stubborn.pid: psutil.Process(stubborn.pid).create_time()}
        began = time.monotonic()
        assert tools.stop_processes(found, signal.SIGTERM, grace=0.5) == {}
        assert time.monotonic() - began >= 0.5, "it waited for the grace period first"
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
    finally:
        tools.kill_group(stubborn.pid)
