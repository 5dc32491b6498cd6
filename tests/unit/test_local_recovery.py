"""The local backend's recovery paths: a supervisor bug stops what it started, a full disk
does not kill the supervisor, a spawn is on disk before anything waits, and the cleanup
after a dead supervisor stops its leftovers cleanly and waits for them before it forgets
them. Fake supervisors where the state machine is the subject; real processes for cleanup."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import local, state
from prefectstack.runtime.supervisor import Supervisor
from prefectstack.stack.loader import LoadedStack
from prefectstack.stack.model import Stack
from prefectstack.topology import Probe, RestartPolicy, Service

SIGTERM, SIGINT, SIGKILL = signal.SIGTERM, signal.SIGINT, signal.SIGKILL


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProc:
    """Exits on the signals in `exits_on`; records every signal in the launcher's log."""

    def __init__(self, pid: int, name: str, log: list[tuple[str, int]]) -> None:
        self.pid, self.name, self._log = pid, name, log
        self.code: int | None = None
        self.signals: list[int] = []
        self.exits_on = {SIGTERM, SIGINT, SIGKILL}

    def poll(self) -> int | None:
        return self.code

    def send(self, sig: int) -> None:
        self.signals.append(sig)
        self._log.append((self.name, sig))
        if sig in self.exits_on and self.code is None:
            self.code = -sig


class FakeLauncher:
    def __init__(self) -> None:
        self.procs: dict[str, FakeProc] = {}
        self.signals: list[tuple[str, int]] = []

    def start(self, svc: Service) -> FakeProc:
        self.procs[svc.name] = FakeProc(100 + len(self.procs), svc.name, self.signals)
        return self.procs[svc.name]

    def proc(self, name: str) -> FakeProc:
        return self.procs[name]


class FakeProber:
    def __init__(self) -> None:
        self.ready: set[str] = set()

    def check(self, svc: Service) -> bool:
        return svc.name in self.ready


def daemon(name: str, *deps: str, **kw: object) -> Service:
    return Service(name=name, role="worker", kind="daemon", argv=(name,), depends_on=deps,
                   probe=Probe("http", port=1), **kw)  # type: ignore[arg-type]


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedStack:
    stack = Stack.model_validate({"version": 1, "name": "demo", "state_dir": "st"})
    found = LoadedStack(stack=stack, base_dir=tmp_path, source=str(tmp_path / "stack.yaml"))
    found.state_dir.mkdir()
    (found.state_dir / "logs").mkdir()
    return found


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    """`_loop` installs SIGTERM/SIGINT handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def rig(services: list[Service]) -> tuple[Supervisor, FakeLauncher, FakeProber, FakeClock]:
    clock, launcher, prober = FakeClock(), FakeLauncher(), FakeProber()
    return Supervisor(services, launcher, prober, clock, stop_grace_seconds=1), launcher, \
        prober, clock


# -- a bug in the supervisor stops what it started ---------------------------------------------


class Boom(RuntimeError):
    pass


def test_an_unexpected_error_in_the_loop_stops_everything_in_reverse_order(
    loaded: LoadedStack, capsys: pytest.CaptureFixture[str],
) -> None:
    sup, launcher, prober, _clock = rig([daemon("db", stop_signal="SIGINT"),
                                         daemon("api", "db"), daemon("worker", "api")])
    prober.ready.update({"db", "api", "worker"})
    calls = {"n": 0}

    def on_ready() -> None:
        calls["n"] += 1
        raise Boom("a bug")

    code = local._loop(loaded, sup, Layout(loaded.state_dir), False, on_ready)
    assert code == 1 and calls["n"] == 1
    assert launcher.signals == [("worker", SIGTERM), ("api", SIGTERM), ("db", SIGINT)]
    assert sup.done and sup.phase == "failed"
    written = state.read(loaded.state_dir)
    assert written is not None and written.phase == "failed"
    assert "Boom: a bug" in written.message
    err = capsys.readouterr().err
    assert "the supervisor failed (Boom: a bug)" in err


def test_when_the_state_machine_itself_breaks_the_processes_are_signalled_directly() -> None:
    sup, launcher, prober, _clock = rig([daemon("db", stop_signal="SIGINT"),
                                         daemon("api", "db")])
    prober.ready.update({"db", "api"})
    for _ in range(3):
        sup.tick()
    launcher.proc("api").exits_on = {SIGKILL}  # a stubborn api: killed after the grace

    def broken() -> None:
        raise Boom("state machine bug")

    sup.tick = broken  # type: ignore[method-assign]
    ticks = iter(range(1000))
    local.abort(sup, "bug", grace=3, clock=lambda: float(next(ticks)), pause=0)
    assert launcher.signals == [("api", SIGTERM), ("api", SIGKILL), ("db", SIGINT)]
    assert all(u.proc is None for u in sup.units.values())


def test_abort_is_bounded_when_a_process_never_exits() -> None:
    sup, launcher, prober, _clock = rig([daemon("db")])
    prober.ready.add("db")
    sup.tick()
    launcher.proc("db").exits_on = set()
    now = [0.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    local.abort(sup, "bug", grace=3, clock=clock, pause=0)  # returns: never hangs
    assert launcher.proc("db").signals[0] == SIGTERM and SIGKILL in launcher.proc("db").signals


# -- the loop sleeps on events, not on a poll period --------------------------------------------


class RealProc:
    """A real child, as the loop sees it: its exit must wake the loop (SIGCHLD)."""

    def __init__(self, argv: list[str]) -> None:
        self._popen = subprocess.Popen(argv)
        self.pid = self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(sig)


class RealLauncher:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.procs: list[RealProc] = []

    def start(self, svc: Service) -> RealProc:
        self.procs.append(RealProc(self.argv))
        return self.procs[-1]


def test_a_child_exit_wakes_the_loop_at_once_without_polling(
    loaded: LoadedStack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A one-shot has no timer but its (long) timeout: only its exit can wake the loop, which
    would otherwise sleep for a minute. Then a SIGTERM to ourselves wakes it to stop."""
    monkeypatch.setattr(local, "MAX_WAIT_SECONDS", 60.0)
    job = Service(name="job", role="pools", kind="oneshot", argv=("job",),
                  probe=Probe("exit"), ready_timeout_seconds=600)
    launcher = RealLauncher(["sleep", "0.3"])
    ticks: list[float] = []
    sup = Supervisor([job], launcher, FakeProber(), time.monotonic)
    real_tick = sup.tick

    def counted() -> None:
        ticks.append(time.monotonic())
        real_tick()

    sup.tick = counted  # type: ignore[method-assign]
    began = time.monotonic()
    seen: dict[str, float] = {}

    def on_ready() -> None:  # the job completed: the stack is ready
        seen["ready"] = time.monotonic() - began
        os.kill(os.getpid(), signal.SIGTERM)  # `down`: must wake the loop too

    assert local._loop(loaded, sup, Layout(loaded.state_dir), False, on_ready) == 0
    stopped = time.monotonic() - began
    assert sup.phase == "stopped" and sup.units["job"].state == "completed"
    assert seen["ready"] < 10, "the exit was noticed when it happened, not after a timeout"
    assert stopped < 15, "the stop signal woke the loop"
    assert len(ticks) <= 6, f"ticked on events only, not on a poll period: {len(ticks)} ticks"
    assert signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, signal.SIG_IGN, None), \
        "the SIGCHLD handler is given back"
    assert signal.set_wakeup_fd(-1) == -1, "the wakeup fd is given back"


def test_the_waker_returns_on_a_signal_and_sleeps_out_its_timeout_otherwise() -> None:
    with local.Waker() as waker:
        assert waker.signals
        began = time.monotonic()
        assert waker.wait(0.05) is False
        assert time.monotonic() - began >= 0.04
        child = subprocess.Popen(["sleep", "0.2"])
        began = time.monotonic()
        assert waker.wait(30) is True, "SIGCHLD woke it"
        assert time.monotonic() - began < 10
        child.wait()
        os.kill(os.getpid(), signal.SIGCHLD)  # a signal that came before the wait...
        assert waker.wait(30) is True, "...is not lost"
        assert waker.wait(0) is False, "the pipe was drained"


def test_the_waker_outside_the_main_thread_falls_back_to_a_short_sleep() -> None:
    import threading

    found: dict[str, object] = {}

    def run() -> None:
        with local.Waker() as waker:
            found["signals"] = waker.signals
            began = time.monotonic()
            waker.wait(30)
            found["slept"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert found["signals"] is False
    assert isinstance(found["slept"], float) and found["slept"] < 5


def test_the_state_writer_shows_each_new_state_once_and_looks_up_start_times_once(
    loaded: LoadedStack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup, _launcher, prober, _clock = rig([daemon("db")])
    writer = local.StateWriter(loaded, sup, 1, 1.0)
    shown: list[str] = []
    writer.on_change = lambda snap: shown.append(snap.services[0].state)
    lookups: list[int] = []

    def create_time(pid: int) -> float:
        lookups.append(pid)
        return 5.0

    monkeypatch.setattr(local, "_create_time", create_time)
    sup.tick()
    for _ in range(3):
        writer.write()
    prober.ready.add("db")
    sup.tick()
    writer.write()
    assert shown == ["starting", "ready"]
    assert lookups == [sup.units["db"].proc.pid]  # type: ignore[union-attr]


# -- state.json: every spawn recorded at once; a full disk is survived ------------------------


def test_a_spawn_is_on_disk_before_the_first_probe(loaded: LoadedStack) -> None:
    seen: list[list[int | None]] = []

    class Prober(FakeProber):
        def check(self, svc: Service) -> bool:
            written = state.read(loaded.state_dir)
            assert written is not None
            seen.append([s.pid for s in written.services])
            return False

    sup, launcher, _prober, _clock = rig([daemon("db", stop_signal="SIGINT"),
                                          daemon("api", "db")])
    sup.prober = Prober()
    writer = local.StateWriter(loaded, sup, 1, 1.0)
    sup.on_spawn = lambda _unit: writer.write()
    sup.tick()
    assert state.read(loaded.state_dir) is not None, "written during the tick that spawned"
    sup.tick()
    assert seen == [[launcher.proc("db").pid, None]]
    written = state.read(loaded.state_dir)
    assert written is not None
    assert [(s.stop_signal, s.essential) for s in written.services] == [
        ("SIGINT", True), ("SIGTERM", True)]


def test_a_full_disk_is_reported_once_and_the_write_retried(
    loaded: LoadedStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    sup, _launcher, prober, clock = rig([daemon("db"), daemon("api", "db")])
    writer = local.StateWriter(loaded, sup, 1, 1.0)
    real_write = state.write
    attempts: list[str] = []

    def full(state_dir: Path, snap: state.StackState) -> None:
        attempts.append(snap.phase)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "write", full)
    sup.on_spawn = lambda _unit: writer.write()
    for _ in range(3):
        sup.tick()  # never raises
        writer.write()
        clock.advance(1)
    prober.ready.add("db")
    sup.tick()
    writer.write()
    assert len(attempts) >= 4, "each change is tried again"
    err = capsys.readouterr().err
    assert err.count("cannot write") == 1 and "ENOSPC" in err
    monkeypatch.setattr(state, "write", real_write)
    writer.write()
    written = state.read(loaded.state_dir)
    assert written is not None and written.services[0].state == "ready"
    assert "written again" in capsys.readouterr().err


def test_a_read_only_state_dir_is_survived_too(
    loaded: LoadedStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    sup, *_ = rig([daemon("db")])
    writer = local.StateWriter(loaded, sup, 1, 1.0)

    def read_only(state_dir: Path, snap: state.StackState) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(state, "write", read_only)
    writer.write()
    sup.tick()
    writer.write()
    assert capsys.readouterr().err.count("EROFS") == 1


# -- cleanup after a dead supervisor -----------------------------------------------------------

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


class Leftovers:
    """Processes started as a supervisor starts services (a session each), then recorded
    in a state file whose supervisor is gone."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.services: list[state.ServiceState] = []

    def start(self, name: str, script: str, stop_signal: str = "SIGTERM",
              ready: Path | None = None) -> subprocess.Popen[bytes]:
        # SIGINT back to its default: a shell can't trap a signal it was started with
        # ignored, and pytest-xdist's workers run with SIGINT ignored.
        proc = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.procs.append(proc)
        self.services.append(state.ServiceState(
            name=name, kind="daemon", state="ready", pid=proc.pid,
            pid_started=psutil.Process(proc.pid).create_time(), stop_signal=stop_signal))
        if ready is not None:
            wait_until(ready.exists)
        return proc

    def record(self) -> None:
        state.write(self.state_dir, state.StackState(
            stack="demo", source="stack.yaml", supervisor_pid=0, supervisor_started=0.0,
            phase="ready", services=self.services))

    def kill_all(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[Leftovers]:
    found = Leftovers(tmp_path)
    yield found
    found.kill_all()


def test_cleanup_stops_postgres_with_its_own_signal_and_waits_for_it(
    tmp_path: Path, leftovers: Leftovers,
) -> None:
    """PostgreSQL gets SIGINT (fast shutdown) and time to finish it, not SIGKILL."""
    got, ready = tmp_path / "got", tmp_path / "ready"
    slow_exit = (f"trap 'echo INT > {got}; sleep 0.5; exit 0' INT; trap '' TERM; "
                 f"touch {ready}; {SLEEPER}")
    pg = leftovers.start("postgres", slow_exit, "SIGINT", ready)
    api = leftovers.start("api-1", SLEEPER)
    leftovers.record()
    cleaned = local.cleanup_stale(tmp_path, grace=10)
    assert cleaned == [f"api-1 (pid {api.pid})", f"postgres (pid {pg.pid})"]
    assert got.read_text() == "INT\n"
    assert pg.poll() == 0, "it exited by itself, cleanly, before cleanup returned"
    assert api.poll() == -SIGTERM
    assert state.read(tmp_path) is None


def test_cleanup_waits_for_a_group_member_whose_leader_is_gone(
    tmp_path: Path, leftovers: Leftovers,
) -> None:
    """A flow-run child in the worker's group outlives the worker: it holds the port too."""
    child_pid = tmp_path / "child.pid"
    leader = leftovers.start(
        "worker-1", f"sh -c 'trap \"\" TERM; echo $$ > {child_pid}; {SLEEPER}' & sleep 60 & "
        f"wait")
    wait_until(child_pid.exists)
    child = int(child_pid.read_text())
    leftovers.record()
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    assert running(child)
    cleaned = local.cleanup_stale(tmp_path, grace=0.5)
    assert cleaned == [f"worker-1 (pid {leader.pid})"]
    assert not running(child), "the stubborn child got SIGKILL after the grace period"
    assert state.read(tmp_path) is None


def test_cleanup_of_processes_that_are_all_gone_only_removes_the_state(
    tmp_path: Path, leftovers: Leftovers,
) -> None:
    proc = leftovers.start("api-1", "exit 0")
    proc.wait()
    leftovers.record()
    assert local.cleanup_stale(tmp_path) == []
    assert state.read(tmp_path) is None


def test_a_process_that_survives_sigkill_keeps_the_state_file(
    tmp_path: Path, leftovers: Leftovers, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """E.g. stuck in the kernel: forgetting it would make the next `up` fail on its port."""
    proc = leftovers.start("api-1", SLEEPER)
    leftovers.record()
    monkeypatch.setattr(local.tools, "stop_processes",
                        lambda family, sig, grace: dict(family))
    with pytest.raises(StackError) as caught:
        local.cleanup_stale(tmp_path)
    assert f"api-1 (pid {proc.pid})" in caught.value.message
    assert state.read(tmp_path) is not None


def test_a_state_file_from_before_the_stop_signal_field_is_still_cleaned(
    tmp_path: Path, leftovers: Leftovers,
) -> None:
    proc = leftovers.start("api-1", SLEEPER)
    leftovers.record()
    path = tmp_path / "state.json"
    path.write_text(path.read_text().replace('"stop_signal": "SIGTERM",', "")
                    .replace('"essential": true,', ""))
    assert local.cleanup_stale(tmp_path) == [f"api-1 (pid {proc.pid})"]
    assert proc.poll() == -SIGTERM


def test_restart_policy_liveness_default() -> None:
    assert RestartPolicy().liveness_seconds == 30
