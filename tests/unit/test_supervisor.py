"""The supervisor's state machine, driven with a fake clock, fake processes and a fake prober:
no real process is started and nothing sleeps."""

from __future__ import annotations

import signal
from collections.abc import Iterable

from prefectstack import topology
from prefectstack.runtime.supervisor import (
    ALIVE_READY_SECONDS,
    HEALTH_INTERVAL_SECONDS,
    STARTING_PROBE_SECONDS,
    STOP_POLL_SECONDS,
    Supervisor,
)
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
    def __init__(self, pid: int, name: str, log: list[tuple[str, int]], exits_on: set[int]):
        self.pid = pid
        self.name = name
        self.code: int | None = None
        self.signals: list[int] = []
        self._log = log
        self._exits_on = exits_on

    def poll(self) -> int | None:
        return self.code

    def send(self, sig: int) -> None:
        self.signals.append(sig)
        self._log.append((self.name, sig))
        if sig in self._exits_on and self.code is None:
            self.code = -sig

    def exit(self, code: int) -> None:
        self.code = code


class FakeLauncher:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.procs: dict[str, list[FakeProc]] = {}
        self.signals: list[tuple[str, int]] = []  # every signal sent, in order
        # by default a process exits on its stop signal; tests can make one stubborn
        self.exits_on: dict[str, set[int]] = {}

    def start(self, svc: Service) -> FakeProc:
        self.started.append(svc.name)
        exits_on = self.exits_on.get(svc.name, {SIGTERM, SIGINT, SIGKILL})
        proc = FakeProc(100 + len(self.started), svc.name, self.signals, exits_on)
        self.procs.setdefault(svc.name, []).append(proc)
        return proc

    def proc(self, name: str) -> FakeProc:
        return self.procs[name][-1]


class FakeProber:
    def __init__(self) -> None:
        self.ready: set[str] = set()

    def check(self, svc: Service) -> bool:
        return svc.name in self.ready


def daemon(name: str, *deps: str, **kw: object) -> Service:
    return Service(name=name, role="worker", kind="daemon", argv=(name,), depends_on=deps,
                   probe=Probe("http", port=1), **kw)  # type: ignore[arg-type]


def oneshot(name: str, *deps: str, **kw: object) -> Service:
    return Service(name=name, role="pools", kind="oneshot", argv=(name,), depends_on=deps,
                   probe=Probe("exit"), **kw)  # type: ignore[arg-type]


class Rig:
    def __init__(self, services: Iterable[Service], grace: float = 20.0) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.prober = FakeProber()
        self.sup = Supervisor(list(services), self.launcher, self.prober, self.clock,
                              stop_grace_seconds=grace)

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.sup.tick()

    def state(self, name: str) -> str:
        return self.sup.units[name].state


def small_stack() -> list[Service]:
    """db ← init (one-shot) ← api ← worker: a chain like postgres ← migrate ← api ← worker."""
    return [
        daemon("db", stop_signal="SIGINT"),
        oneshot("init", "db"),
        daemon("api", "init"),
        daemon("worker", "api"),
    ]


def bring_up(rig: Rig) -> None:
    rig.tick()
    rig.prober.ready.add("db")
    rig.tick()
    rig.launcher.proc("init").exit(0)
    rig.tick()
    rig.prober.ready.update({"api", "worker"})
    rig.tick(2)
    assert rig.sup.phase == "ready"


# -- start ------------------------------------------------------------------------------


def test_starts_in_dependency_order_waiting_for_readiness() -> None:
    rig = Rig(small_stack())
    rig.tick()
    assert rig.launcher.started == ["db"]
    assert rig.state("db") == "starting" and rig.state("init") == "pending"
    rig.tick(3)
    assert rig.launcher.started == ["db"], "init must wait until db is ready"

    rig.prober.ready.add("db")
    rig.tick()
    assert rig.state("db") == "ready"
    assert rig.launcher.started == ["db", "init"]
    rig.tick(3)
    assert rig.launcher.started == ["db", "init"], "api must wait for the one-shot to finish"

    rig.launcher.proc("init").exit(0)
    rig.tick()
    assert rig.state("init") == "completed"
    assert rig.launcher.started == ["db", "init", "api"]
    assert rig.sup.phase == "starting"

    rig.prober.ready.add("api")
    rig.tick()
    assert rig.launcher.started == ["db", "init", "api", "worker"]
    assert rig.sup.phase == "starting"
    rig.prober.ready.add("worker")
    rig.tick()
    assert rig.sup.phase == "ready"
    assert "stack ready" in rig.sup.events
    assert rig.launcher.started == ["db", "init", "api", "worker"]  # nothing started twice


def test_independent_services_start_together() -> None:
    rig = Rig([daemon("a"), daemon("b"), daemon("c", "a", "b")])
    rig.tick()
    assert rig.launcher.started == ["a", "b"]
    rig.prober.ready.add("a")
    rig.tick()
    assert rig.launcher.started == ["a", "b"], "c needs both a and b"
    rig.prober.ready.add("b")
    rig.tick()
    assert rig.launcher.started == ["a", "b", "c"]


def test_alive_probe_passes_after_the_process_stays_up() -> None:
    rig = Rig([Service(name="loop", role="worker", kind="daemon", argv=("x",),
                       probe=Probe("alive"))])
    rig.tick()
    rig.clock.advance(ALIVE_READY_SECONDS / 2)
    rig.tick()
    assert rig.state("loop") == "starting"
    rig.clock.advance(ALIVE_READY_SECONDS / 2)
    rig.tick()
    assert rig.state("loop") == "ready" and rig.sup.phase == "ready"


def test_failed_oneshot_is_retried_and_dependents_wait() -> None:
    rig = Rig([oneshot("migrate"), daemon("api", "migrate")])
    rig.tick()
    rig.launcher.proc("migrate").exit(1)
    rig.tick()
    assert rig.state("migrate") == "backoff"
    assert rig.sup.units["migrate"].last_exit == 1
    rig.clock.advance(1)
    rig.tick()
    assert rig.launcher.started == ["migrate", "migrate"]
    rig.launcher.proc("migrate").exit(0)
    rig.tick()
    assert rig.launcher.started == ["migrate", "migrate", "api"]


def test_health_is_rechecked_while_ready() -> None:
    rig = Rig([daemon("api")])
    rig.prober.ready.add("api")
    rig.tick()
    rig.tick()
    assert rig.sup.units["api"].healthy is True
    rig.prober.ready.clear()
    rig.clock.advance(HEALTH_INTERVAL_SECONDS - 0.5)
    rig.tick()
    assert rig.sup.units["api"].healthy is True, "not re-probed before the interval"
    rig.clock.advance(0.5)
    rig.tick()
    assert rig.sup.units["api"].healthy is False
    assert rig.state("api") == "ready"  # unhealthy is reported, not restarted


# -- restart and give up ------------------------------------------------------------------


def crash_and_measure_delay(rig: Rig, name: str) -> float:
    """Crash the running process; return the backoff delay the supervisor chose, then wait
    exactly that long and check the restart happens then and not before."""
    starts = rig.launcher.started.count(name)
    rig.launcher.proc(name).exit(1)
    rig.tick()
    unit = rig.sup.units[name]
    assert unit.state == "backoff"
    delay = unit.next_start_at - rig.clock.now
    rig.clock.advance(delay - 0.01)
    rig.tick()
    assert rig.launcher.started.count(name) == starts, "restarted before its backoff"
    rig.clock.advance(0.01)
    rig.tick()
    assert rig.launcher.started.count(name) == starts + 1
    return delay


def test_unexpected_exit_restarts_with_exponential_backoff() -> None:
    policy = RestartPolicy(backoff_seconds=1, max_backoff_seconds=30, max_restarts=10,
                           window_seconds=1000)
    rig = Rig([daemon("api", restart=policy)])
    rig.prober.ready.add("api")
    rig.tick(2)
    delays = [crash_and_measure_delay(rig, "api") for _ in range(4)]
    assert delays == [1, 2, 4, 8]
    assert rig.sup.units["api"].restarts == 4
    assert any("api exited with code 1" in e for e in rig.sup.events)
    rig.tick()
    assert rig.state("api") == "ready"


def test_backoff_is_capped() -> None:
    policy = RestartPolicy(backoff_seconds=1, max_backoff_seconds=3, max_restarts=10,
                           window_seconds=1000)
    rig = Rig([daemon("api", restart=policy)])
    rig.tick()
    assert [crash_and_measure_delay(rig, "api") for _ in range(4)] == [1, 2, 3, 3]


def test_failures_outside_the_window_are_forgotten() -> None:
    policy = RestartPolicy(backoff_seconds=1, max_restarts=1, window_seconds=60)
    rig = Rig([daemon("api", restart=policy)])
    rig.tick()
    for _ in range(5):
        rig.clock.advance(61)  # each crash comes after the previous one left the window
        assert crash_and_measure_delay(rig, "api") == 1
    assert rig.sup.phase != "failed"
    assert rig.sup.units["api"].restarts == 5


def test_crash_loop_fails_the_stack_and_stops_the_others() -> None:
    policy = RestartPolicy(backoff_seconds=1, max_restarts=2, window_seconds=120)
    rig = Rig([daemon("db", stop_signal="SIGINT"), daemon("api", "db", restart=policy)])
    rig.prober.ready.update({"db", "api"})
    rig.tick(3)
    assert rig.sup.phase == "ready"
    crash_and_measure_delay(rig, "api")
    crash_and_measure_delay(rig, "api")
    assert rig.sup.phase == "ready"
    rig.launcher.proc("api").exit(1)  # third failure inside the window: more than 2
    rig.tick()
    assert rig.sup.phase == "failed"
    assert rig.state("api") == "failed"
    assert "api" in rig.sup.message and "3 failures" in rig.sup.message
    assert rig.launcher.proc("db").signals == [SIGINT], "the rest of the stack is stopped"
    assert not rig.sup.done
    rig.tick()
    assert rig.sup.done
    assert rig.sup.phase == "failed"
    assert rig.state("db") == "stopped"
    assert rig.launcher.started.count("api") == 3


def test_restart_disabled_fails_on_first_exit() -> None:
    rig = Rig([daemon("api", restart=RestartPolicy(enabled=False))])
    rig.tick()
    rig.launcher.proc("api").exit(3)
    rig.tick()
    assert rig.sup.phase == "failed"
    assert "api exited with code 3" in rig.sup.message


def test_ready_timeout_kills_and_fails() -> None:
    svc = daemon("api", ready_timeout_seconds=10, restart=RestartPolicy(enabled=False))
    rig = Rig([svc])
    rig.tick()
    rig.clock.advance(10)
    rig.tick()
    assert rig.state("api") == "starting", "the timeout is not yet exceeded"
    proc = rig.launcher.proc("api")
    rig.clock.advance(0.5)
    rig.tick()
    assert proc.signals == [SIGKILL]
    assert rig.sup.phase == "failed"
    assert "api not ready after 10s" in rig.sup.message
    assert rig.sup.done


def test_ready_timeout_with_restarts_backs_off_and_retries() -> None:
    rig = Rig([daemon("api", ready_timeout_seconds=10)])
    rig.tick()
    rig.clock.advance(11)
    rig.tick()
    assert rig.state("api") == "backoff"
    rig.clock.advance(1)
    rig.tick()
    assert rig.launcher.started == ["api", "api"]
    rig.prober.ready.add("api")
    rig.tick()
    assert rig.sup.phase == "ready"


def test_oneshot_that_never_finishes_times_out() -> None:
    rig = Rig([oneshot("migrate", ready_timeout_seconds=30,
                       restart=RestartPolicy(enabled=False))])
    rig.tick()
    rig.clock.advance(31)
    rig.tick()
    assert rig.launcher.proc("migrate").signals == [SIGKILL]
    assert rig.sup.phase == "failed"
    assert "migrate did not finish in 30s" in rig.sup.message


# -- stop ---------------------------------------------------------------------------------


def test_stop_goes_in_reverse_dependency_order() -> None:
    rig = Rig(small_stack())
    bring_up(rig)
    rig.sup.begin_stop()
    assert rig.sup.phase == "stopping"
    rig.tick()
    assert rig.launcher.signals == [("worker", SIGTERM)]
    rig.tick()
    assert rig.launcher.signals == [("worker", SIGTERM), ("api", SIGTERM)]
    # db has no *running* direct dependent (init completed) but api still uses it: db must
    # wait until api has exited.
    rig.tick()
    assert rig.launcher.signals == [("worker", SIGTERM), ("api", SIGTERM), ("db", SIGINT)]
    assert rig.sup.phase == "stopping"
    rig.tick()
    assert rig.sup.phase == "stopped" and rig.sup.done
    assert "stack stopped" in rig.sup.events
    assert {rig.state(n) for n in ("db", "api", "worker")} == {"stopped"}
    assert rig.state("init") == "completed"


def test_stubborn_process_gets_sigkill_after_the_grace_period() -> None:
    rig = Rig([daemon("api")], grace=5)
    rig.launcher.exits_on["api"] = {SIGKILL}
    rig.prober.ready.add("api")
    rig.tick(2)
    rig.sup.begin_stop()
    rig.tick()
    proc = rig.launcher.proc("api")
    assert proc.signals == [SIGTERM]
    rig.clock.advance(5)
    rig.tick()
    assert proc.signals == [SIGTERM], "not killed within the grace period"
    rig.clock.advance(0.5)
    rig.tick()
    assert proc.signals == [SIGTERM, SIGKILL]
    rig.tick()
    assert rig.sup.phase == "stopped"


def test_stop_before_start_completes_never_starts_the_rest() -> None:
    rig = Rig(small_stack())
    rig.tick()
    rig.sup.begin_stop("bye")
    assert "bye" in rig.sup.events
    assert rig.state("init") == "stopped" and rig.state("worker") == "stopped"
    rig.prober.ready.add("db")
    rig.tick(3)
    assert rig.launcher.started == ["db"]
    assert rig.launcher.signals == [("db", SIGINT)]
    assert rig.sup.phase == "stopped"


def test_stop_during_backoff_does_not_restart() -> None:
    rig = Rig([daemon("api")])
    rig.tick()
    rig.launcher.proc("api").exit(1)
    rig.tick()
    assert rig.state("api") == "backoff"
    rig.sup.begin_stop()
    rig.clock.advance(60)
    rig.tick(2)
    assert rig.launcher.started == ["api"]
    assert rig.sup.phase == "stopped"


def test_real_topology_starts_and_stops_in_order() -> None:
    services = topology.build(Stack.model_validate({"version": 1, "api": {"replicas": 2}}))
    rig = Rig(services)
    rig.prober.ready.update(s.name for s in services if s.kind == "daemon")
    for _ in range(20):
        for name in rig.launcher.started:
            unit = rig.sup.units[name]
            if unit.svc.kind == "oneshot" and unit.proc is not None:
                rig.launcher.proc(name).exit(0)
        rig.clock.advance(1)
        rig.tick()
    assert rig.sup.phase == "ready"
    started = rig.launcher.started
    assert sorted(started) == sorted(s.name for s in services)
    for svc in services:
        for dep in svc.depends_on:
            assert started.index(dep) < started.index(svc.name), f"{svc.name} before {dep}"

    rig.sup.begin_stop()
    exited: set[str] = set()
    for _ in range(20):
        before = len(rig.launcher.signals)
        rig.tick()
        for name, _sig in rig.launcher.signals[before:]:
            users = _transitive_dependents(services, name)
            running = {u for u in users if rig.sup.units[u].svc.kind == "daemon"} - exited
            assert not running, f"{name} stopped while {running} still run"
        exited.update(n for n, _ in rig.launcher.signals)
    assert rig.sup.phase == "stopped"
    sent = dict(rig.launcher.signals)
    assert sent["postgres"] == SIGINT
    assert sent["api-1"] == SIGTERM
    assert set(sent) == {s.name for s in services if s.kind == "daemon"}


def _transitive_dependents(services: list[Service], name: str) -> set[str]:
    found: set[str] = set()
    frontier = {name}
    while frontier:
        frontier = {s.name for s in services if set(s.depends_on) & frontier} - found
        found |= frontier
    return found


def test_tick_after_stopped_is_a_no_op() -> None:
    rig = Rig([daemon("api")])
    rig.tick()
    rig.sup.begin_stop()
    rig.tick(2)
    assert rig.sup.phase == "stopped"
    events = list(rig.sup.events)
    rig.clock.advance(100)
    rig.tick(3)
    assert rig.launcher.started == ["api"] and rig.sup.phase == "stopped"
    assert rig.sup.events == events


# -- one failing service never takes down the rest ------------------------------------------


def test_a_crash_looping_worker_fails_alone_and_the_rest_keeps_running() -> None:
    policy = RestartPolicy(backoff_seconds=1, max_restarts=1, window_seconds=120)
    rig = Rig([daemon("db", stop_signal="SIGINT"), daemon("api", "db"),
               daemon("worker", "api", restart=policy, essential=False)])
    rig.prober.ready.update({"db", "api", "worker"})
    rig.tick(4)
    assert rig.sup.phase == "ready"
    crash_and_measure_delay(rig, "worker")
    rig.launcher.proc("worker").exit(1)  # second failure: more than 1
    rig.tick()
    assert rig.state("worker") == "failed"
    assert rig.sup.phase == "ready", "the database and the API stay up"
    assert "worker" in rig.sup.message and "the rest keeps running" in rig.sup.message
    assert rig.launcher.proc("db").signals == [] and rig.launcher.proc("api").signals == []
    rig.clock.advance(300)
    rig.tick(3)
    assert rig.launcher.started.count("worker") == 2, "a failed unit is not restarted"
    rig.sup.begin_stop()
    rig.tick(4)
    assert rig.sup.done and rig.state("worker") == "failed"


def test_stack_becomes_ready_beside_a_worker_that_never_starts() -> None:
    rig = Rig([daemon("api"),
               daemon("worker", "api", essential=False, restart=RestartPolicy(enabled=False))])
    rig.prober.ready.add("api")
    rig.tick(2)
    rig.launcher.proc("worker").exit(2)
    rig.tick()
    assert rig.state("worker") == "failed" and rig.sup.phase == "ready"


class RefusingLauncher(FakeLauncher):
    """`Popen` failing, e.g. PermissionError on an interpreter in a 0700 directory."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    def start(self, svc: Service) -> FakeProc:
        if svc.name == self.refuse:
            raise PermissionError(13, "Permission denied", "/root/venv/bin/python3")
        return super().start(svc)


def test_a_program_that_cannot_be_started_is_a_failure_not_a_crash() -> None:
    services = [daemon("db", stop_signal="SIGINT"),
                daemon("api", "db", restart=RestartPolicy(backoff_seconds=1, max_restarts=1))]
    clock = FakeClock()
    launcher = RefusingLauncher("api")
    prober = FakeProber()
    prober.ready.add("db")
    sup = Supervisor(services, launcher, prober, clock)
    for _ in range(3):
        sup.tick()  # never raises
        clock.advance(5)
    assert sup.units["api"].state == "failed" and sup.phase == "failed"
    assert "could not start" in sup.message and "Permission denied" in sup.message
    sup.tick()
    assert launcher.proc("db").signals == [SIGINT], "what did start is stopped, not orphaned"


# -- failure isolation, blocked dependents, liveness, spawn records ---------------------------


def test_dependents_of_a_failed_unit_are_blocked_and_never_started() -> None:
    rig = Rig([daemon("api"),
               daemon("edge", "api", essential=False, restart=RestartPolicy(enabled=False)),
               daemon("worker", "edge", essential=False),
               oneshot("pools", "worker", essential=False),
               daemon("exporter", "api", essential=False)])
    rig.prober.ready.update({"api", "exporter"})
    rig.tick(2)
    rig.launcher.proc("edge").exit(1)
    rig.tick()
    assert rig.state("edge") == "failed"
    assert rig.state("worker") == "blocked" and rig.state("pools") == "blocked"
    assert "worker blocked: edge failed" in rig.sup.events
    assert rig.sup.phase == "ready", "the rest is up: blocked non-essential units do not hold it"
    assert rig.state("exporter") == "ready" and rig.state("api") == "ready"
    rig.clock.advance(600)
    rig.tick(3)
    assert "worker" not in rig.launcher.started and "pools" not in rig.launcher.started
    assert rig.launcher.proc("api").signals == []


def test_an_essential_unit_blocked_by_a_failed_one_fails_the_stack() -> None:
    rig = Rig([daemon("db"), daemon("aux", essential=False, restart=RestartPolicy(enabled=False)),
               daemon("api", "db", "aux")])
    rig.prober.ready.add("db")
    rig.tick()
    rig.launcher.proc("aux").exit(1)
    rig.tick()
    assert rig.state("api") == "blocked"
    assert rig.sup.phase == "failed" and "api blocked: aux failed" in rig.sup.message
    rig.tick()
    assert rig.launcher.proc("db").signals == [SIGTERM]


def test_a_unit_in_backoff_is_reported_as_backoff_with_its_restarts() -> None:
    rig = Rig([daemon("worker", essential=False)])
    rig.prober.ready.add("worker")
    rig.tick(2)
    crash_and_measure_delay(rig, "worker")
    rig.tick()
    rig.launcher.proc("worker").exit(1)
    rig.tick()
    unit = rig.sup.units["worker"]
    assert (unit.state, unit.restarts, unit.healthy) == ("backoff", 1, False)


def test_a_daemon_whose_probe_keeps_failing_is_restarted() -> None:
    policy = RestartPolicy(liveness_seconds=30)
    rig = Rig([daemon("db"), daemon("auth", "db", restart=policy)])
    rig.prober.ready.update({"db", "auth"})
    rig.tick(3)
    assert rig.state("auth") == "ready"
    hung = rig.launcher.proc("auth")
    hung._exits_on = set()  # like a stopped process: it exits only once we say so
    rig.prober.ready.discard("auth")
    for _ in range(6):  # probes every 5 s fail: 25 s of failures, not yet 30
        rig.clock.advance(HEALTH_INTERVAL_SECONDS)
        rig.tick()
    assert rig.state("auth") == "ready" and rig.sup.units["auth"].healthy is False
    assert hung.signals == []
    rig.clock.advance(HEALTH_INTERVAL_SECONDS)
    rig.tick()
    assert hung.signals == [SIGKILL]
    assert rig.state("auth") == "stopping"
    assert rig.launcher.started.count("auth") == 1, "no replacement while the old one runs"
    hung.exit(-9)
    rig.tick()
    assert rig.state("auth") == "backoff"
    assert any("auth unhealthy for 30s" in e for e in rig.sup.events)
    rig.prober.ready.add("auth")
    rig.clock.advance(1)
    rig.tick(2)
    assert rig.launcher.started.count("auth") == 2 and rig.state("auth") == "ready"
    assert rig.sup.units["auth"].restarts == 1
    assert rig.launcher.proc("db").signals == [] and rig.sup.phase == "ready"


def test_a_probe_that_recovers_resets_the_liveness_timer() -> None:
    rig = Rig([daemon("api", restart=RestartPolicy(liveness_seconds=30))])
    rig.prober.ready.add("api")
    rig.tick(2)
    for _ in range(5):
        rig.prober.ready.discard("api")
        for _ in range(5):  # 20 s failing
            rig.clock.advance(HEALTH_INTERVAL_SECONDS)
            rig.tick()
        rig.prober.ready.add("api")
        rig.clock.advance(HEALTH_INTERVAL_SECONDS)
        rig.tick()
    assert rig.launcher.started == ["api"] and rig.launcher.signals == []


def test_liveness_zero_only_reports() -> None:
    rig = Rig([daemon("api", restart=RestartPolicy(liveness_seconds=0))])
    rig.prober.ready.add("api")
    rig.tick(2)
    rig.prober.ready.clear()
    rig.clock.advance(3600)
    rig.tick(2)
    assert rig.launcher.signals == [] and rig.sup.units["api"].healthy is False


def test_a_kill_that_does_not_take_is_repeated_after_the_grace_period() -> None:
    rig = Rig([daemon("api", ready_timeout_seconds=10)], grace=5)
    rig.launcher.exits_on["api"] = set()
    rig.tick()
    rig.clock.advance(11)
    rig.tick()
    proc = rig.launcher.proc("api")
    assert proc.signals == [SIGKILL] and rig.state("api") == "stopping"
    rig.clock.advance(6)
    rig.tick()
    assert proc.signals == [SIGKILL, SIGKILL]
    proc.exit(-9)
    rig.tick()
    assert rig.state("api") == "backoff"


def test_each_spawn_is_announced_before_anything_can_wait() -> None:
    """The caller writes the new pid to state.json in on_spawn, before the next probe."""
    rig = Rig([daemon("db"), daemon("api", "db")])
    seen: list[tuple[str, int, set[str]]] = []

    class RecordingProber(FakeProber):
        def check(self, svc: Service) -> bool:
            assert seen and seen[-1][0] == svc.name, "probed before its spawn was recorded"
            return super().check(svc)

    rig.sup.prober = rig.prober = RecordingProber()
    rig.sup.on_spawn = lambda unit: seen.append(
        (unit.svc.name, unit.proc.pid if unit.proc else 0, set(rig.launcher.started)))
    rig.prober.ready.add("db")
    rig.tick(2)
    assert [(n, p) for n, p, _ in seen] == [("db", rig.launcher.proc("db").pid),
                                          ("api", rig.launcher.proc("api").pid)]


# -- timers: when the driver must tick although nothing happens -------------------------------


def test_a_ready_stack_sleeps_until_the_next_health_probe() -> None:
    rig = Rig(small_stack())
    bring_up(rig)
    probed = {n: rig.sup.units[n].last_health_at for n in ("db", "api", "worker")}
    assert rig.sup.next_deadline() == min(probed.values()) + HEALTH_INTERVAL_SECONDS
    rig.clock.advance(HEALTH_INTERVAL_SECONDS)
    rig.tick()
    assert rig.sup.next_deadline() == rig.clock.now + HEALTH_INTERVAL_SECONDS


def test_a_starting_daemon_is_probed_often_and_an_alive_one_once_its_time_is_up() -> None:
    rig = Rig([daemon("api"), Service(name="loop", role="worker", kind="daemon", argv=("x",),
                                      probe=Probe("alive"))])
    rig.tick()
    assert rig.sup.next_deadline() == rig.clock.now + STARTING_PROBE_SECONDS
    rig.prober.ready.add("api")
    rig.tick()
    started = rig.sup.units["loop"].started_at
    assert started is not None
    assert rig.sup.next_deadline() == started + ALIVE_READY_SECONDS


def test_a_oneshot_needs_no_timer_but_its_timeout_and_its_dependents_wait_for_its_exit() -> None:
    job = oneshot("migrate", ready_timeout_seconds=600)
    rig = Rig([job, daemon("api", "migrate")])
    rig.tick()
    started = rig.sup.units["migrate"].started_at
    assert started is not None
    deadline = rig.sup.next_deadline()
    assert deadline is not None and 600 < deadline - started < 601
    rig.clock.now = deadline
    rig.tick()
    assert rig.state("migrate") in ("stopping", "backoff", "failed"), "timed out at the deadline"


def test_a_backoff_wakes_the_driver_when_it_ends() -> None:
    rig = Rig([daemon("api")])
    rig.tick()
    rig.launcher.proc("api").exit(1)
    rig.tick()
    assert rig.state("api") == "backoff"
    assert rig.sup.next_deadline() == rig.sup.units["api"].next_start_at
    rig.clock.now = rig.sup.units["api"].next_start_at
    rig.tick()
    assert rig.launcher.started == ["api", "api"]


def test_a_pending_unit_whose_dependencies_are_ready_is_due_now() -> None:
    rig = Rig([daemon("db"), daemon("api", "db")])
    rig.tick()
    rig.prober.ready.add("db")
    db = rig.sup.units["db"]
    db.state, db.last_health_at = "ready", rig.clock.now  # as if it had passed outside a tick
    assert rig.sup.next_deadline() == rig.clock.now


def test_stopping_is_checked_on_a_short_period_and_a_stopped_stack_needs_no_timer() -> None:
    rig = Rig(small_stack())
    bring_up(rig)
    rig.launcher.exits_on["worker"] = set()
    rig.sup.begin_stop()
    rig.tick()
    assert rig.sup.next_deadline() == rig.clock.now + STOP_POLL_SECONDS
    rig.launcher.proc("worker").exit(0)
    rig.tick(4)
    assert rig.sup.done and rig.sup.next_deadline() is None


# -- restart on request (`upgrade`) -------------------------------------------------------------


def test_requested_restart_stops_gracefully_and_starts_again_without_a_failure() -> None:
    rig = Rig(small_stack())
    bring_up(rig)
    old = rig.launcher.proc("api")
    assert rig.sup.request_restart("api") is None
    assert old.signals == [SIGTERM], "its own stop signal, not SIGKILL"
    assert rig.state("api") == "stopping"
    assert rig.launcher.proc("worker").signals == [], "its dependents keep running"
    rig.prober.ready.discard("api")  # the new process is not ready at once
    rig.tick()
    new = rig.launcher.proc("api")
    assert new is not old and rig.state("api") == "starting"
    unit = rig.sup.units["api"]
    assert unit.restarts == 1 and unit.failures == [], "a requested restart is no failure"
    rig.prober.ready.add("api")
    rig.tick()
    assert rig.state("api") == "ready" and rig.sup.phase == "ready"


def test_requested_restart_waits_for_a_slow_exit_then_kills_after_the_grace() -> None:
    rig = Rig(small_stack(), grace=10.0)
    rig.launcher.exits_on["api"] = {SIGKILL}  # finishes its requests in flight first
    bring_up(rig)
    old = rig.launcher.proc("api")
    rig.sup.request_restart("api")
    rig.prober.ready.discard("api")
    rig.clock.advance(5)
    rig.tick()
    assert rig.launcher.proc("api") is old and rig.state("api") == "stopping"
    assert rig.sup.next_deadline() == rig.clock.now + STOP_POLL_SECONDS
    rig.clock.advance(6)
    rig.tick()
    assert old.signals == [SIGTERM, SIGKILL]
    rig.tick()
    assert rig.launcher.proc("api") is not old and rig.state("api") == "starting"
    assert rig.sup.units["api"].failures == []


def test_requested_run_of_a_completed_oneshot_runs_it_again() -> None:
    rig = Rig(small_stack())
    bring_up(rig)
    assert rig.sup.request_restart("init") is None
    rig.tick()
    assert rig.launcher.started.count("init") == 2 and rig.state("init") == "starting"
    assert rig.state("api") == "ready", "what depends on it keeps running"
    rig.launcher.proc("init").exit(0)
    rig.tick()
    assert rig.state("init") == "completed" and rig.sup.units["init"].restarts == 1


def test_a_failed_requested_run_is_reported_and_does_not_stop_the_stack() -> None:
    """An essential one-shot (migrate) that fails when run again: the stack keeps running on
    what it had, the unit is `failed`, nothing is retried or stopped."""
    rig = Rig(small_stack())
    bring_up(rig)
    rig.sup.request_restart("init")
    rig.tick()
    rig.launcher.proc("init").exit(1)
    rig.tick(3)
    assert rig.state("init") == "failed" and rig.sup.phase == "ready"
    assert rig.launcher.started.count("init") == 2, "not retried"
    assert all(rig.launcher.proc(n).signals == [] for n in ("db", "api", "worker"))
    assert rig.sup.request_restart("init") is None, "it may be run again"


def test_restart_is_refused_for_an_unknown_unit_a_starting_stack_or_a_busy_unit() -> None:
    rig = Rig(small_stack())
    rig.tick()
    assert "not ready" in (rig.sup.request_restart("db") or "")
    bring_up(rig)
    assert "no unit" in (rig.sup.request_restart("nope") or "")
    assert "only a finished one-shot" not in (rig.sup.request_restart("init") or "")
    assert "only a finished one-shot" in (rig.sup.request_restart("init") or "")
    rig.sup.request_restart("api")
    assert "stopping" in (rig.sup.request_restart("api") or "")
    assert rig.launcher.proc("api").signals == [SIGTERM], "asked once, signalled once"


def test_stop_during_a_requested_restart_does_not_start_it_again() -> None:
    rig = Rig(small_stack())
    rig.launcher.exits_on["api"] = {SIGKILL}
    bring_up(rig)
    rig.sup.request_restart("api")
    rig.sup.begin_stop()
    rig.clock.advance(25)
    for _ in range(10):
        rig.tick()
        for procs in rig.launcher.procs.values():
            for proc in procs:
                if proc.signals and proc.code is None and proc.name != "api":
                    proc.exit(0)
    assert rig.launcher.started.count("api") == 1
    assert rig.sup.phase == "stopped"
