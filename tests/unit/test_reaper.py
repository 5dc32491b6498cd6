"""jobs/reaper.py with real processes: a worker's flow runs (children in sessions of their
own) never outlive it, whether it exits, is stopped, or its supervisor is killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

# A stand-in for Prefect's process worker: starts a "flow run" in a session of its own
# (as the process worker does), writes its pid, then waits for a signal or exits.
# On SIGTERM it notes the signal and exits 7 a second later, so a second SIGTERM would be
# noted too (Prefect's worker cuts its shutdown short on one).
WORKER = textwrap.dedent("""
    import signal, subprocess, sys, time
    run = subprocess.Popen([sys.executable, "-c", sys.argv[3]], start_new_session=True)
    open(sys.argv[1], "w").write(str(run.pid))
    got = []
    def on_term(*_):
        got.append(time.monotonic())
        with open(sys.argv[1] + ".signals", "a") as f:
            f.write("TERM\\n")
    signal.signal(signal.SIGTERM, on_term)
    if sys.argv[2] == "exit":
        sys.exit(3)
    while not got or time.monotonic() - got[0] < 1.0:
        time.sleep(0.05)
    sys.exit(7)
""")
RUN = "import time; time.sleep(300)"
STUBBORN_RUN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"


def reaper(tmp_path: Path, mode: str, run: str = RUN, grace: str = "10") -> subprocess.Popen[bytes]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PREFECTSTACK_REAPER_GRACE": grace}
    # a session of its own, as the supervisor starts every service
    return subprocess.Popen([sys.executable, "-m", "prefectstack.jobs.reaper", str(script),
                             str(tmp_path / "run.pid"), mode, run], env=env,
                            start_new_session=True)


def run_pid(tmp_path: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (tmp_path / "run.pid").read_text() if (tmp_path / "run.pid").exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError("the worker never started its run")


def gone(pid: int, within: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout=within)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def test_a_worker_that_exits_takes_its_runs_with_it(tmp_path: Path) -> None:
    proc = reaper(tmp_path, "exit")
    pid = run_pid(tmp_path)
    assert proc.wait(timeout=60) == 3  # the worker's own exit code
    assert gone(pid, 5)


def test_the_supervisors_stop_reaches_the_worker_once(tmp_path: Path) -> None:
    """The supervisor stops a unit by signalling every process below it and its process
    group (tools.Process.send): the worker must get that one SIGTERM, not a second one from
    the reaper, and the reaper waits for the run the supervisor signalled too."""
    proc = reaper(tmp_path, "wait")
    pid = run_pid(tmp_path)
    assert psutil.Process(pid).ppid() != proc.pid  # a grandchild, in its own session
    for below in psutil.Process(proc.pid).children(recursive=True):
        below.send_signal(signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 7  # the worker's own exit code
    assert (tmp_path / "run.pid.signals").read_text() == "TERM\n"
    assert gone(pid, 5)


def test_a_run_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    proc = reaper(tmp_path, "exit", run=STUBBORN_RUN, grace="1")
    pid = run_pid(tmp_path)
    assert proc.wait(timeout=60) == 3
    assert gone(pid, 5)


def test_runs_die_with_a_supervisor_killed_with_minus_9(tmp_path: Path) -> None:
    """The supervisor spawns the reaper with a parent-death signal (tools.spawn); killing
    the supervisor with -9 stops the worker and then its runs."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    supervisor = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, pathlib, signal, sys, time
        from prefectstack import tools
        tools.spawn([sys.executable, "-m", "prefectstack.jobs.reaper", {str(script)!r},
                     {str(tmp_path / "run.pid")!r}, "wait", {RUN!r}],
                    env=dict(os.environ), log=open(os.devnull, "wb"),
                    cwd=pathlib.Path({str(tmp_path)!r}), death_signal=signal.SIGTERM)
        time.sleep(300)
    """)])
    pid = run_pid(tmp_path)
    supervisor.kill()
    supervisor.wait(timeout=30)
    assert gone(pid, 15)


def test_a_reaper_killed_with_minus_9_takes_its_worker_with_it(tmp_path: Path) -> None:
    """The supervisor restarts the unit: no worker of the old one may still be running."""
    proc = reaper(tmp_path, "wait")
    run_pid(tmp_path)
    worker = next(p for p in psutil.Process(proc.pid).children() if p.pid != proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    assert gone(worker.pid, 15)
