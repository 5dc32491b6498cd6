"""The supervisor's state machine: start in dependency order, wait for readiness, restart
with backoff, restart a daemon whose probe keeps failing (liveness), give up on a crash
loop, stop in reverse order; restart one unit on request (`upgrade`): a daemon gets its stop
signal and, once it has exited, starts again without counting a failure; a completed one-shot
runs again.

A unit that is given up on is `failed` and stays so. Only an `essential` one (what the
rest of the stack needs) fails the stack; the units that depend on a failed one are
`blocked` (never started), and everything else keeps running, as systemd or Kubernetes do.

It never touches real processes or time itself: a `Launcher`, a `Prober` and a clock are
injected, so the machine is unit-tested with fakes and driven for real by `runtime.local`.
That driver does not poll: it calls `tick` when something happened (a child exited, a signal
came) or at `next_deadline`, the earliest time at which a timer of the machine is due (a
probe, the end of a backoff, a readiness timeout, a stop's grace period).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prefectstack.errors import StackError
from prefectstack.topology import Service

UnitState = Literal[
    "pending", "starting", "ready", "completed", "backoff", "failed", "blocked", "stopping",
    "stopped",
]
Phase = Literal["starting", "ready", "stopping", "stopped", "failed"]

HEALTH_INTERVAL_SECONDS = 5.0
ALIVE_READY_SECONDS = 2.0  # an `alive` probe passes once the process has stayed up this long
STARTING_PROBE_SECONDS = 0.2  # how often a starting daemon is probed until it is ready
# How often processes being stopped are looked at: a service is stopped only once its
# descendants (a worker's flow runs, which are not our children) are gone too, and their
# exit wakes nobody.
STOP_POLL_SECONDS = 0.2


class Proc(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send(self, sig: int) -> None: ...


class Launcher(Protocol):
    def start(self, svc: Service) -> Proc: ...


class Prober(Protocol):
    def check(self, svc: Service) -> bool: ...


@dataclass
class Unit:
    svc: Service
    state: UnitState = "pending"
    proc: Proc | None = None
    started_at: float | None = None
    restarts: int = 0
    failures: list[float] = field(default_factory=list)
    next_start_at: float = 0.0
    last_exit: int | None = None
    healthy: bool | None = None
    last_health_at: float = 0.0
    stop_sent_at: float | None = None
    unhealthy_since: float | None = None  # when the probe of a ready daemon began failing
    kill_reason: str | None = None  # killed on purpose (liveness, timeout): why, once reaped
    # Asked to restart (`request_restart`): its exit is not a failure, and a one-shot run
    # again that fails is reported `failed` without failing the stack (the old processes
    # keep serving; `upgrade` says what went wrong).
    restart_requested: bool = False
    rerun: bool = False

    @property
    def satisfied(self) -> bool:
        """Dependents may start: a daemon is ready, a one-shot has completed."""
        return self.state in ("ready", "completed")


class Supervisor:
    def __init__(
        self,
        services: list[Service],
        launcher: Launcher,
        prober: Prober,
        clock: Callable[[], float],
        *,
        stop_grace_seconds: float = 20.0,
    ) -> None:
        self.units = {s.name: Unit(s) for s in services}
        self.order = [s.name for s in services]
        self.launcher = launcher
        self.prober = prober
        self.clock = clock
        self.stop_grace_seconds = stop_grace_seconds
        self.phase: Phase = "starting"
        self.message = ""
        self.events: list[str] = []  # human-readable log of transitions, drained by the caller
        # Called right after each process starts, before anything can wait: the caller
        # records its pid, so a supervisor that dies next leaves nothing it cannot find.
        self.on_spawn: Callable[[Unit], None] | None = None

    # -- driving -------------------------------------------------------------------------

    def tick(self) -> None:
        if self.phase in ("stopping", "failed"):
            self._tick_stop()
            return
        if self.phase == "stopped":
            return
        now = self.clock()
        for name in self.order:
            self._reap(self.units[name], now)
            if self.phase != "starting" and self.phase != "ready":
                return self._tick_stop()
        for name in self.order:
            self._advance(self.units[name], now)
            if self.phase not in ("starting", "ready"):
                return self._tick_stop()
        if self.phase == "starting" and all(
            u.satisfied or (u.state in ("failed", "blocked") and not u.svc.essential)
            for u in self.units.values()
        ):
            self.phase = "ready"
            self._event("stack ready")

    def begin_stop(self, reason: str = "stop requested") -> None:
        if self.phase in ("starting", "ready"):
            self.phase = "stopping"
            self._event(reason)
        for unit in self.units.values():
            if unit.state in ("pending", "backoff"):
                unit.state = "stopped"

    def next_deadline(self) -> float | None:
        """The clock time by which `tick` must run again although no child exits and no
        signal comes: the earliest timer due (a probe, the end of a backoff, a readiness
        timeout, a stop to check on). None when only an event can change anything."""
        if self.done or self.phase == "stopped":
            return None
        now = self.clock()
        if self.phase in ("stopping", "failed"):
            return now + STOP_POLL_SECONDS
        due: list[float] = []
        for unit in self.units.values():
            svc = unit.svc
            if unit.state == "pending" and (self._deps_ready(svc) or self._blocked_by(svc)):
                due.append(now)
            elif unit.state == "backoff":
                due.append(unit.next_start_at)
            elif unit.state == "starting" and unit.started_at is not None:
                # `_advance` gives up once the timeout is strictly exceeded
                due.append(unit.started_at + svc.ready_timeout_seconds + 0.001)
                if svc.kind == "daemon" and svc.probe.kind == "alive":
                    due.append(unit.started_at + ALIVE_READY_SECONDS)
                elif svc.kind == "daemon":
                    due.append(now + STARTING_PROBE_SECONDS)
            elif unit.state == "ready":
                due.append(unit.last_health_at + HEALTH_INTERVAL_SECONDS)
            elif unit.state == "stopping" and unit.proc is not None:
                due.append(now + STOP_POLL_SECONDS)
        return min(due, default=None)

    @property
    def done(self) -> bool:
        return self.phase == "stopped" or (
            self.phase == "failed"
            and all(u.proc is None for u in self.units.values())
        )

    def request_restart(self, name: str) -> str | None:
        """Restart one unit of a running stack: a ready daemon is sent its stop signal (a
        graceful stop: an API process finishes the requests in flight) and started again
        once it has exited (SIGKILL after the grace period); a one-shot that completed or
        failed runs again. Returns why it cannot, or None when the restart has begun."""
        unit = self.units.get(name)
        if unit is None:
            return f"no unit named {name!r}"
        if self.phase != "ready":
            return f"the stack is {self.phase}, not ready"
        now = self.clock()
        if unit.svc.kind == "oneshot":
            if unit.state not in ("completed", "failed"):
                return f"{name} is {unit.state}; only a finished one-shot runs again"
            unit.state = "pending"
            unit.rerun = True
            unit.restarts += 1
            unit.failures = []
            self._event(f"{name} runs again on request")
            return None
        if unit.state != "ready" or unit.proc is None:
            return f"{name} is {unit.state}, not ready; it is not restarted"
        unit.restart_requested = True
        unit.state = "stopping"
        unit.healthy = False
        unit.stop_sent_at = now
        unit.proc.send(getattr(signal, unit.svc.stop_signal))
        self._event(f"{name} restarting on request (sent {unit.svc.stop_signal})")
        return None

    # -- start side ----------------------------------------------------------------------

    def _reap(self, unit: Unit, now: float) -> None:
        if unit.proc is None:
            return
        code = unit.proc.poll()
        if code is None:
            return
        unit.proc = None
        unit.last_exit = code
        if unit.restart_requested:
            unit.restart_requested = False
            unit.kill_reason = None
            unit.restarts += 1
            self._event(f"{unit.svc.name} stopped (code {code}); starting it again")
            self._start(unit, now)
            return
        if unit.svc.kind == "oneshot" and code == 0 and unit.kill_reason is None:
            unit.state = "completed"
            unit.rerun = False
            self._event(f"{unit.svc.name} completed")
            return
        if unit.kill_reason is not None:  # we killed it: the reason is the failure
            why, unit.kill_reason = unit.kill_reason, None
        else:
            why = f"exited with code {code}"
            self._event(f"{unit.svc.name} {why}")
        if unit.rerun:
            # Run again on request, while the stack runs on: not retried, and no reason to
            # stop the stack, whatever the unit is (the caller reports it).
            unit.rerun = False
            unit.state = "failed"
            unit.healthy = False
            self._event(f"{unit.svc.name} failed on its requested run: {why}")
            return
        self._failed(unit, now, why)

    def _failed(self, unit: Unit, now: float, why: str) -> None:
        policy = unit.svc.restart
        unit.failures = [t for t in unit.failures if now - t < policy.window_seconds] + [now]
        if not policy.enabled or len(unit.failures) > policy.max_restarts:
            unit.state = "failed"
            unit.healthy = False
            gave_up = (f"{unit.svc.name} {why}; gave up after {len(unit.failures)} failures "
                       f"in {policy.window_seconds:.0f}s")
            if unit.svc.essential:
                self.phase = "failed"
                self.message = gave_up
            else:
                # Like systemd or Kubernetes: one failed worker is reported, not allowed to
                # take the database, the API and the other workers down with it.
                failed = [n for n, u in self.units.items() if u.state == "failed"]
                self.message = f"{gave_up}; the rest keeps running (failed: {', '.join(failed)})"
            self._event(self.message if unit.svc.essential else gave_up)
            return
        delay = min(
            policy.backoff_seconds * 2 ** (len(unit.failures) - 1), policy.max_backoff_seconds
        )
        unit.state = "backoff"
        unit.next_start_at = now + delay
        unit.healthy = False
        self._event(f"{unit.svc.name} {why}; restarting in {delay:.1f}s")

    def _advance(self, unit: Unit, now: float) -> None:
        svc = unit.svc
        if unit.state in ("pending", "backoff") and self._blocked_by(svc):
            self._block(unit, self._blocked_by(svc))
        elif unit.state == "pending" and self._deps_ready(svc):
            self._start(unit, now)
        elif unit.state == "backoff" and now >= unit.next_start_at:
            unit.restarts += 1
            self._start(unit, now)
        elif unit.state == "starting" and svc.kind == "daemon":
            if self._probe(unit, now):
                unit.state = "ready"
                unit.healthy = True
                unit.last_health_at = now
                self._event(f"{svc.name} ready")
            elif unit.started_at is not None and now - unit.started_at > svc.ready_timeout_seconds:
                self._kill(unit, now, f"not ready after {svc.ready_timeout_seconds:.0f}s")
        elif unit.state == "starting" and svc.kind == "oneshot":
            if unit.started_at is not None and now - unit.started_at > svc.ready_timeout_seconds:
                self._kill(unit, now, f"did not finish in {svc.ready_timeout_seconds:.0f}s")
        elif unit.state == "ready" and now - unit.last_health_at >= HEALTH_INTERVAL_SECONDS:
            self._check_liveness(unit, now)
        elif (unit.state == "stopping" and unit.proc is not None and unit.stop_sent_at is not None
              and now - unit.stop_sent_at > self.stop_grace_seconds):
            sent = "SIGKILL" if unit.kill_reason is not None else svc.stop_signal
            self._event(f"{svc.name} still runs {self.stop_grace_seconds:.0f}s after {sent}; "
                        "sending SIGKILL")
            unit.stop_sent_at = now
            unit.proc.send(signal.SIGKILL)

    def _check_liveness(self, unit: Unit, now: float) -> None:
        """Re-probe a ready daemon; one whose probe has failed for `liveness_seconds` (hung,
        stopped, deadlocked: alive but useless) is killed and restarted like a crash."""
        unit.healthy = self._probe(unit, now)
        unit.last_health_at = now
        if unit.healthy:
            unit.unhealthy_since = None
            return
        if unit.unhealthy_since is None:
            unit.unhealthy_since = now
        limit = unit.svc.restart.liveness_seconds
        if limit and now - unit.unhealthy_since >= limit:
            self._event(f"{unit.svc.name} failed its probe for {limit:.0f}s; restarting it")
            self._kill(unit, now, f"unhealthy for {limit:.0f}s")

    def _deps_ready(self, svc: Service) -> bool:
        return all(self.units[d].satisfied for d in svc.depends_on)

    def _blocked_by(self, svc: Service) -> list[str]:
        """Its dependencies that failed or are blocked themselves (the order is topological,
        so blocking spreads down the graph within one tick)."""
        return [d for d in svc.depends_on if self.units[d].state in ("failed", "blocked")]

    def _block(self, unit: Unit, by: list[str]) -> None:
        unit.state = "blocked"
        unit.healthy = None
        why = f"{unit.svc.name} blocked: {', '.join(by)} failed"
        if unit.svc.essential:
            self.phase = "failed"
            self.message = why
        self._event(why)

    def _start(self, unit: Unit, now: float) -> None:
        try:
            unit.proc = self.launcher.start(unit.svc)
        except (OSError, StackError) as exc:
            # e.g. a program the service's OS user may not execute: a failed start, retried
            # and given up on like a crash, never an exception that leaves the rest orphaned.
            unit.proc = None
            self._event(f"{unit.svc.name} could not start: {exc}")
            self._failed(unit, now, f"could not start ({exc})")
            return
        unit.state = "starting"
        unit.started_at = now
        unit.healthy = None
        unit.unhealthy_since = None
        unit.stop_sent_at = None
        unit.kill_reason = None
        self._event(f"{unit.svc.name} started (pid {unit.proc.pid})")
        if self.on_spawn is not None:
            self.on_spawn(unit)

    def _probe(self, unit: Unit, now: float) -> bool:
        if unit.svc.probe.kind == "alive":
            return unit.started_at is not None and now - unit.started_at >= ALIVE_READY_SECONDS
        return self.prober.check(unit.svc)

    def _kill(self, unit: Unit, now: float, why: str) -> None:
        """SIGKILL it (a hung process would not act on a gentler signal) and count the
        failure once it has exited: its replacement never races it for its port."""
        assert unit.proc is not None
        unit.proc.send(signal.SIGKILL)
        unit.state = "stopping"
        unit.healthy = False
        unit.stop_sent_at = now
        unit.kill_reason = why
        self._reap(unit, now)

    # -- stop side -----------------------------------------------------------------------

    def _tick_stop(self) -> None:
        now = self.clock()
        for unit in self.units.values():
            if unit.proc is not None and unit.proc.poll() is not None:
                unit.last_exit = unit.proc.poll()
                unit.proc = None
                unit.state = "stopped" if unit.state != "failed" else "failed"
                self._event(f"{unit.svc.name} stopped")
            elif unit.proc is None and unit.state not in ("failed", "completed", "blocked"):
                unit.state = "stopped"
        for name in reversed(self.order):
            unit = self.units[name]
            if unit.proc is None:
                continue
            if any(self.units[d].proc is not None for d in self._dependents(name)):
                continue  # dependents go first
            if unit.stop_sent_at is None:
                unit.stop_sent_at = now
                unit.state = "stopping"
                unit.proc.send(getattr(signal, unit.svc.stop_signal))
            elif now - unit.stop_sent_at > self.stop_grace_seconds:
                self._event(f"{unit.svc.name} did not stop in time; killing it")
                unit.proc.send(signal.SIGKILL)
        if all(u.proc is None for u in self.units.values()) and self.phase == "stopping":
            self.phase = "stopped"
            self._event("stack stopped")

    def _dependents(self, name: str) -> set[str]:
        """Units that depend on `name` directly or transitively: the APIs use postgres through
        migrate and db-init, which have exited, so direct dependents alone are not enough."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {n for n, u in self.units.items() if frontier & set(u.svc.depends_on)}
            frontier -= found
            found |= frontier
        return found

    def _event(self, text: str) -> None:
        self.events.append(text)
