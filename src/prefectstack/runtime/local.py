"""The local backend: run a stack's topology as supervised processes on this host."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from prefectstack import console, tools, topology
from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import (
    control,
    pgdata,
    ports,
    programs,
    secret_store,
    service_health,
    state,
    unprivileged,
)
from prefectstack.runtime.binaries import postgres_bin_dir, resolve_argv
from prefectstack.runtime.logfiles import LogFollower, tail_lines
from prefectstack.runtime.probes import RealProber
from prefectstack.runtime.supervisor import HEALTH_INTERVAL_SECONDS, Supervisor
from prefectstack.stack.loader import LoadedStack
from prefectstack.topology import LOOPBACK, Service, placeholders, stack_secrets

TICK_SECONDS = 0.2  # the pause of the fallback loops (abort) and of a loop without signals
# The supervisor sleeps until a child exits, a signal comes or a timer of the state machine is
# due; it also wakes this often whatever happens, a safety net that costs nothing at idle.
MAX_WAIT_SECONDS = HEALTH_INTERVAL_SECONDS
FOLLOW_SECONDS = 0.25  # in the foreground, how often new log lines are echoed
LOG_ROTATE_BYTES = 20 * 1024 * 1024
# Stale cleanup: how long each leftover service gets to act on its stop signal (PostgreSQL's
# fast shutdown, a worker marking its runs) before SIGKILL.
STALE_STOP_GRACE_SECONDS = 20.0


class Resolver:
    """Fill in the topology's placeholders with this host's values."""

    def __init__(
        self, layout: Layout, secret_values: dict[str, str], paths: dict[str, str],
        ports: dict[str, int], edge_url: str = "",
    ) -> None:
        self.layout = layout
        self.secrets = secret_values
        self.paths = paths
        self.ports = ports
        self.edge_url = edge_url

    def value(self, kind: str, name: str) -> str:
        if kind == "secret":
            return self.secrets[name]
        if kind == "dir":
            return str(self.layout.volume(name))
        if kind == "path":
            return self.paths[name]
        if kind == "addr":
            return f"{LOOPBACK}:{self.ports[name]}"
        if kind == "port":
            return str(self.ports[name])
        if kind == "bind":
            return LOOPBACK
        if kind == "url" and name == "edge" and self.edge_url:
            return self.edge_url
        raise StackError(f"no local value for ${{{kind}.{name}}}")

    def __call__(self, text: str) -> str:
        return placeholders.substitute(text, self.value)


class LocalLauncher:
    def __init__(self, loaded: LoadedStack, layout: Layout, resolve: Resolver,
                 program_paths: dict[str, str] | None = None) -> None:
        self.stack = loaded.stack
        self.layout = layout
        self.resolve = resolve
        self.program_paths = program_paths or {}
        self.run_as = pgdata.is_root()
        self._logs: dict[str, IO[bytes]] = {}

    def start(self, svc: Service) -> tools.Process:
        argv = resolve_argv(
            tuple(self.resolve(a) for a in programs.argv(svc)), self.stack.postgres.mode,
            self.stack.redis.mode, programs.paths_for(svc, self.program_paths),
        )
        base = _inherited_env() if svc.inherit_env else _base_env()
        env = base | {k: self.resolve(v) for k, v in programs.env(svc).items()}
        log = self._log(svc.name)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError):  # a full disk must not stop a restart
            log.write(f"{service_health.RESTART_MARKER}{svc.name} at {stamp} ---\n".encode())
            log.flush()
        user = svc.run_as if (svc.run_as and self.run_as) else None
        cwd = self.layout.volume(svc.volumes[0]) if svc.volumes else self.layout.root
        env = unprivileged.launch_env(svc, self.layout, env, user)  # TMPDIR, a run_as's HOME
        # If we die (even of SIGKILL) it gets its own stop signal: PostgreSQL shuts down
        # cleanly; whatever ignores it is stopped by the next `up` or `down` (cleanup_stale).
        return tools.spawn(argv, env=env, log=log, cwd=cwd, user=user,
                           death_signal=getattr(signal, svc.stop_signal))

    def _log(self, name: str) -> IO[bytes]:
        if name not in self._logs:
            path = self.layout.log(name)
            if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(path, path.with_suffix(".log.1"))
            self._logs[name] = open(path, "ab")  # noqa: SIM115 - lives as long as the service
        return self._logs[name]


def _base_env() -> dict[str, str]:
    """A clean environment: nothing from the user's Prefect profile leaks into the stack."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "VIRTUAL_ENV")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _inherited_env() -> dict[str, str]:
    """The supervisor's environment, as `up` had it, less the user's Prefect settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare(
    loaded: LoadedStack, services: list[Service],
) -> tuple[Layout, Resolver, dict[str, str]]:
    """Everything that must exist before the first process starts. Returns the layout, the
    placeholder resolver and the programs to run from elsewhere (logical name -> path)."""
    layout = Layout(loaded.state_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700 if not pgdata.is_root() else 0o711)
    layout.logs.mkdir(exist_ok=True)
    layout.data.mkdir(exist_ok=True)
    external = topology.external_values(loaded.stack)
    needed = topology.generated_secret_names(loaded.stack)
    values = secret_store.ensure(layout.root, needed | _extra_secrets(loaded)) | external
    flows = flows_dir(loaded)
    reachable = unprivileged.Reachable()
    if pgdata.is_root():
        for account in {svc.run_as for svc in services if svc.run_as}:
            pgdata.ensure_os_user(account)
        reachable = unprivileged.prepare(loaded.stack, services, layout, flows)
    source = Path(loaded.source)
    paths = {"flows": str(reachable.flows or flows),
             "stack_file": str(source.resolve()) if source.is_file() else "",
             "stack_base": str(loaded.base_dir)}
    resolve = Resolver(
        layout, values, paths,
        {svc.name: svc.ports[0] for svc in services if svc.ports},
        topology.public_url(loaded.stack) if loaded.stack.edge.enabled else "",
    )
    for svc in services:
        owner = svc.run_as if (svc.run_as and pgdata.is_root()) else None
        for volume in svc.volumes:
            if svc.prepare != "pgdata":
                layout.volume(volume).mkdir(parents=True, exist_ok=True)
                if owner:
                    pgdata.chown_tree(layout.volume(volume), owner)
        for rel, content in programs.files(svc).items():
            secret_store.write_private(layout.data / rel, resolve(content))
            if owner:
                pgdata.chown_tree(layout.data / rel, owner)
        if svc.prepare == "pgdata":
            layout.data.mkdir(parents=True, exist_ok=True)
            pgdata.prepare(
                layout.volume("pgdata"),
                reachable.postgres_bin or postgres_bin_dir(loaded.stack.postgres.mode),
                svc.run_as,
                values[stack_secrets.POSTGRES_SUPERUSER_PASSWORD],
            )
    return layout, resolve, reachable.programs


def flows_dir(loaded: LoadedStack) -> Path:
    if loaded.stack.edge.flows_dir:
        return (loaded.base_dir / loaded.stack.edge.flows_dir).resolve()
    return Path(__file__).resolve().parent.parent / "flows"


def _extra_secrets(loaded: LoadedStack) -> set[str]:
    local = loaded.stack.postgres.mode != "external"
    return {stack_secrets.POSTGRES_SUPERUSER_PASSWORD} if local else set()


def check_not_running(state_dir: Path) -> None:
    if state.supervisor_alive(state_dir):
        current = state.read(state_dir)
        pid = current.supervisor_pid if current else "?"
        raise StackError(
            f"the stack in {state_dir} is already running (supervisor pid {pid})",
            hint="`prefectstack status` shows it; `prefectstack down` stops it",
        )
    cleanup_stale(state_dir)


def cleanup_stale(state_dir: Path, grace: float = STALE_STOP_GRACE_SECONDS) -> list[str]:
    """A supervisor that died left processes and a state file: stop what is ours the way
    the supervisor would (its stop signal, PostgreSQL's SIGINT included, in reverse order,
    SIGKILL after `grace`), and wait for every process of each service (descendants and
    process group too) to exit. Only then is the state file removed: a port is free for the
    next `up`, and a process we could not stop is never forgotten."""
    old = state.read(state_dir)
    if old is None:
        return []
    cleaned, stuck = [], []
    for svc in reversed(old.services):
        family = tools.leftovers(svc.pid, svc.pid_started)
        if not family:
            continue
        sig = getattr(signal, svc.stop_signal, signal.SIGTERM)
        survivors = tools.stop_processes(family, sig, grace)
        cleaned.append(f"{svc.name} (pid {svc.pid})")
        stuck += [f"{svc.name} (pid {pid})" for pid in survivors]
    if stuck:
        raise StackError(
            "these processes of a dead supervisor did not exit even after SIGKILL: "
            + ", ".join(stuck),
            hint=f"they are still recorded in {state_dir / 'state.json'}; "
                 "`prefectstack down` tries again",
        )
    state.remove(state_dir)
    return cleaned


def run(
    loaded: LoadedStack, *, foreground: bool, on_ready: Callable[[], None],
    on_state: Callable[[state.StackState], None] | None = None,
) -> int:
    """Supervise the stack until it is stopped; returns the process exit code. `on_state`
    sees each new state (what state.json gets), e.g. to show the start's progress."""
    services = topology.build(loaded.stack)
    state_dir = loaded.state_dir
    lock = state.SupervisorLock(state_dir)
    if not lock.try_acquire():
        check_not_running(state_dir)  # raises with the running pid
    cleanup_stale(state_dir)
    try:
        ports.check_free(services, loaded.stack.edge.listen_addresses)
        layout, resolve, program_paths = prepare(loaded, services)
        launcher = LocalLauncher(loaded, layout, resolve, program_paths)
        prober = RealProber({s.name: layout.volume("pgdata") / "postmaster.pid"
                             for s in services if s.prepare == "pgdata"})
        sup = Supervisor(services, launcher, prober, time.monotonic)
        return _loop(loaded, sup, layout, foreground, on_ready, on_state)
    finally:
        lock.release()


def _loop(
    loaded: LoadedStack, sup: Supervisor, layout: Layout, foreground: bool,
    on_ready: Callable[[], None], on_state: Callable[[state.StackState], None] | None = None,
) -> int:
    stop_reason: list[str] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop_reason.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # A control request waits in the state dir (runtime/control.py); the signal only wakes
    # the loop, which looks for requests on every pass.
    signal.signal(signal.SIGUSR1, _on_wake)
    me = psutil.Process()
    with contextlib.suppress(OSError):  # then `upgrade` says requests are not served
        control.open_for_requests(loaded.state_dir, me.pid)
    snapshot = StateWriter(loaded, sup, me.pid, me.create_time())
    snapshot.on_change = on_state
    sup.on_spawn = lambda _unit: snapshot.write()
    with Waker() as waker:
        try:
            snapshot.write()
            return _supervise(loaded, sup, layout, foreground, on_ready, snapshot, stop_reason,
                              waker)
        except BaseException as exc:
            # A bug of ours (or an interpreter error) must not orphan what we started.
            if isinstance(exc, Exception):
                console.error(StackError(f"the supervisor failed ({type(exc).__name__}: "
                                         f"{exc}); stopping the stack"))
                for line in traceback.format_exc().splitlines():
                    console.event(line)
            abort(sup, f"supervisor error: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                snapshot.write()
            if not isinstance(exc, Exception):
                raise
            return 1


class Waker:
    """What the supervisor's loop sleeps on instead of polling: select(2) on a pipe that the
    interpreter writes a byte to whenever a signal arrives (`signal.set_wakeup_fd`), SIGCHLD
    (a child exited) and the stop signals included, with the state machine's next deadline
    as the timeout. A signal that lands between the loop's last look and its sleep is not
    lost: its byte waits in the pipe and the sleep returns at once.

    Outside the main thread (where signals cannot be routed) it degrades to sleeping for
    at most `TICK_SECONDS`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._read, selectors.EVENT_READ)
        self.signals = threading.current_thread() is threading.main_thread()
        self._old_fd = -1
        self._old_chld: Any = None
        if self.signals:
            # A Python-level handler is what makes the interpreter write the wakeup byte;
            # SIGCHLD's default disposition (ignore) would not.
            self._old_chld = signal.signal(signal.SIGCHLD, _on_sigchld)
            self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def wait(self, timeout: float | None) -> bool:
        """Sleep until a signal arrives or `timeout` seconds pass (None: no limit); True
        when a signal woke it."""
        if not self.signals:
            timeout = TICK_SECONDS if timeout is None else min(timeout, TICK_SECONDS)
        woke = bool(self._selector.select(timeout))
        if woke:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._read, 512):
                    pass
        return woke

    def close(self) -> None:
        if self.signals:
            signal.set_wakeup_fd(self._old_fd)
            if self._old_chld is not None:
                signal.signal(signal.SIGCHLD, self._old_chld)
        self._selector.close()
        os.close(self._read)
        os.close(self._write)

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _on_sigchld(_signum: int, _frame: FrameType | None) -> None:
    """Nothing to do here: the wakeup byte already woke the loop, which reaps."""


def _on_wake(_signum: int, _frame: FrameType | None) -> None:
    """SIGUSR1 (a control request): the wakeup byte woke the loop, which reads it."""


def _supervise(
    loaded: LoadedStack, sup: Supervisor, layout: Layout, foreground: bool,
    on_ready: Callable[[], None], snapshot: StateWriter, stop_reason: list[str],
    waker: Waker,
) -> int:
    follower = LogFollower(layout.logs) if foreground else None
    announced = False
    while not sup.done:
        if stop_reason and sup.phase in ("starting", "ready"):
            sup.begin_stop(f"received {stop_reason[0]}; stopping")
        elif sup.phase == "ready":
            sup.events.extend(control.serve(loaded.state_dir, sup.request_restart))
        sup.tick()
        for event in sup.events:
            console.event(event)
        sup.events.clear()
        snapshot.write()
        if follower:
            follower.pump()
        if sup.phase == "ready" and not announced:
            announced = True
            on_ready()
        if sup.done:
            break
        waker.wait(_timeout(sup, follower is not None))
    snapshot.write()
    if follower:
        follower.pump()
    if sup.phase == "failed":
        failed = next((u for u in sup.units.values() if u.state == "failed"), None)
        tail = tail_lines(layout.log(failed.svc.name), 15) if failed else []
        console.failure(sup.message, tail)
        return 1
    state.remove(loaded.state_dir)
    return 0


def _timeout(sup: Supervisor, following: bool) -> float:
    """How long the loop may sleep if nothing wakes it: until the machine's next deadline,
    at most `MAX_WAIT_SECONDS` (`FOLLOW_SECONDS` while echoing logs)."""
    limit = FOLLOW_SECONDS if following else MAX_WAIT_SECONDS
    deadline = sup.next_deadline()
    if deadline is None:
        return limit
    return min(limit, max(0.0, deadline - sup.clock()))


def abort(sup: Supervisor, reason: str, *, grace: float | None = None,
          clock: Callable[[], float] = time.monotonic, pause: float = TICK_SECONDS) -> None:
    """Stop everything the supervisor started after an unexpected error: through its own
    stop sequence (reverse order, stop signals, SIGKILL after the grace period) while that
    works, and if the machine itself is what fails, by signalling every process directly
    in reverse order. Never raises."""
    grace = sup.stop_grace_seconds if grace is None else grace
    deadline = clock() + grace + 5
    try:
        sup.phase, sup.message = "failed", reason
        sup.begin_stop(reason)
        while not sup.done and clock() < deadline:
            sup.tick()
            if not sup.done:
                time.sleep(pause)
        if sup.done:
            return
    except Exception:  # the fallback below must run whatever broke
        pass
    _kill_directly(sup, grace, clock, pause)


def _kill_directly(sup: Supervisor, grace: float, clock: Callable[[], float],
                   pause: float) -> None:
    for name in reversed(sup.order):
        unit = sup.units[name]
        proc = unit.proc
        if proc is None:
            continue
        with contextlib.suppress(Exception):
            proc.send(getattr(signal, unit.svc.stop_signal, signal.SIGTERM))
            deadline = clock() + grace
            while proc.poll() is None and clock() < deadline:
                time.sleep(pause)
            if proc.poll() is None:
                proc.send(signal.SIGKILL)
        unit.proc = None


class StateWriter:
    """Writes state.json when it changes. A failing write (a full disk, a read-only or
    vanished state dir) never stops the supervisor: it is reported once and retried on
    the next change or tick."""

    def __init__(self, loaded: LoadedStack, sup: Supervisor, pid: int, started: float) -> None:
        self.loaded, self.sup, self.pid, self.started = loaded, sup, pid, started
        self.last = ""
        self.shown = ""
        self.wall_offset = time.time() - time.monotonic()
        self.failing: int | None = None  # errno of the write that is failing, if one is
        self.on_change: Callable[[state.StackState], None] | None = None
        self._created: dict[int, float | None] = {}  # pid -> its start time, looked up once

    def write(self) -> None:
        # A pid is reused only once its process is reaped (and gone from its unit): forget
        # those, so a new process on an old pid is looked up afresh.
        live = {u.proc.pid for u in self.sup.units.values() if u.proc is not None}
        self._created = {p: t for p, t in self._created.items() if p in live}
        services = []
        for name in self.sup.order:
            unit = self.sup.units[name]
            pid = unit.proc.pid if unit.proc else None
            services.append(
                state.ServiceState(
                    name=name, kind=unit.svc.kind, state=unit.state, pid=pid,
                    pid_started=self._create_time(pid),
                    started_at=(unit.started_at + self.wall_offset) if unit.started_at else None,
                    restarts=unit.restarts, healthy=unit.healthy, last_exit=unit.last_exit,
                    ports=list(unit.svc.ports), probe=unit.svc.probe.describe(),
                    stop_signal=unit.svc.stop_signal, essential=unit.svc.essential,
                )
            )
        snap = state.StackState(
            stack=self.loaded.stack.name, source=self.loaded.source, supervisor_pid=self.pid,
            supervisor_started=self.started, phase=self.sup.phase, message=self.sup.message,
            ui_url=topology.public_url(self.loaded.stack), services=services,
        )
        text = snap.to_json()
        if text == self.last:
            return
        if self.on_change is not None and text != self.shown:
            self.shown = text
            with contextlib.suppress(Exception):  # a display must never stop the supervisor
                self.on_change(snap)
        try:
            state.write(self.loaded.state_dir, snap)
        except OSError as exc:
            if exc.errno != self.failing:
                self.failing = exc.errno
                console.warn(f"cannot write {self.loaded.state_dir / 'state.json'} "
                             f"({errno.errorcode.get(exc.errno or 0, 'error')}: "
                             f"{exc.strerror}); the stack keeps running, retrying")
            return
        if self.failing is not None:
            self.failing = None
            console.event("state.json is written again")
        self.last = text

    def _create_time(self, pid: int | None) -> float | None:
        if pid is None:
            return None
        if pid not in self._created:
            self._created[pid] = _create_time(pid)
        return self._created[pid]


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def supervise_main(source: str | None) -> int:
    """Entry point of the background supervisor (`up --detach`); cwd is the stack's base."""
    from prefectstack.stack.loader import load_stack

    return run(load_stack(source), foreground=False, on_ready=lambda: None)


if __name__ == "__main__":  # pragma: no cover - the background supervisor
    try:
        sys.exit(supervise_main(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None))
    except StackError as exc:
        console.error(exc)
        sys.exit(exc.exit_code)
