"""`prefectstack upgrade`: bring a running local stack onto the Prefect (and prefectstack)
installed now, without stopping it.

1. Refuse a downgrade before touching anything: the database's alembic revision must be one
   the installed Prefect knows (a revision it does not know was made by a newer Prefect).
2. Back up (`runtime.backup.create`).
3. Run the migrations: the supervisor runs its `migrate` one-shot again.
4. Restart the API processes one at a time: drain one first (its health check fails, so
   the edge stops sending it requests), then the supervisor sends it its stop signal
   (uvicorn stops accepting connections and finishes the requests in flight), starts it
   again once it has exited, and the next one waits until it is ready and the edge's
   active health check has seen it answer again.
5. Restart the services process, then drain and restart each worker: its work pool is
   paused (it takes no new runs), the pool's runs in flight are waited for, the worker is
   restarted, the pool resumed (unless it was paused before).

The supervisor itself, the edge, the auth service and the other units keep running as
they are (`down` and `up` restart those). Planning is pure (`steps`, `check_revision`);
the rest talks to the supervisor (runtime/control.py) and, for the drain, to the API.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prefectstack import topology
from prefectstack.errors import StackError
from prefectstack.jobs.api_server import DRAIN_SIGNAL
from prefectstack.runtime import backend, control, secret_store, state
from prefectstack.runtime.logfiles import tail_lines
from prefectstack.stack.loader import LoadedStack
from prefectstack.stack.model import Stack
from prefectstack.topology import Service, stack_secrets

if TYPE_CHECKING:
    from prefectstack.prefect_api import PrefectApi, Target

Action = Literal["backup", "migrate", "restart", "drain"]

# The edge's active health check (topology/caddyfile.py: `health_interval 5s`, `health_timeout
# 3s`, a test keeps them in step): an API process the check marked down while it restarted is
# back in the rotation, at the latest, one interval plus one timeout after it is ready.
EDGE_HEALTH_INTERVAL_SECONDS = 5.0
EDGE_HEALTH_TIMEOUT_SECONDS = 3.0
EDGE_RECHECK_SECONDS = EDGE_HEALTH_INTERVAL_SECONDS + EDGE_HEALTH_TIMEOUT_SECONDS + 1.0
UNIT_TIMEOUT_SECONDS = 900.0  # a migration may take long on a big database
DRAIN_TIMEOUT_SECONDS = 6 * 3600.0
POLL_SECONDS = 0.3
DRAIN_POLL_SECONDS = 2.0
IN_FLIGHT = ["PENDING", "RUNNING", "CANCELLING"]
MIGRATE = "migrate"


@dataclass(frozen=True)
class Step:
    action: Action
    unit: str
    note: str


@dataclass(frozen=True)
class Plan:
    stack: str
    prefect_version: str
    database_revision: str
    head_revision: str
    steps: list[Step]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Done:
    step: Step
    seconds: float
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- planning (pure) ---------------------------------------------------------------------------


def check_revision(revision: str, known: set[str], prefect_version: str) -> None:
    """Refuse a database that a newer Prefect has migrated: its schema cannot go back."""
    if revision in known:
        return
    raise StackError(
        f"the database is at migration {revision}, which the installed Prefect "
        f"{prefect_version} does not know: a newer Prefect migrated it. A database is never "
        "migrated down; nothing was changed",
        hint="install the newer Prefect that migrated it (the manifest of the latest backup "
             "names its version: `prefectstack backup list`), or restore a backup taken "
             "before that migration",
    )


def steps(services: Iterable[Service], running: Iterable[str]) -> list[Step]:
    """What an upgrade does to the stack's units that run now, in order."""
    present = set(running)
    units = [s for s in services if s.name in present]
    apis = [s for s in units if s.role == "api"]
    alone = " (the only one: the API is unavailable while it restarts)" if len(apis) < 2 else ""
    out = [Step("backup", "", "back up the database, auth store, CA, secrets, stack file")]
    out += [Step("migrate", s.name, "run Prefect's migrations (`prefect server database "
                 "upgrade`) again") for s in units if s.role == "migrate"]
    out += [Step("restart", s.name, "restart when the previous one is ready again" + alone)
            for s in apis]
    out += [Step("restart", s.name, "restart (background loops)")
            for s in units if s.role == "services"]
    out += [Step("drain", s.name, "pause its work pool, wait for the runs in flight, "
                 "restart, resume") for s in units if s.role == "worker"]
    return out


# -- checks ------------------------------------------------------------------------------------


def plan(loaded: LoadedStack) -> Plan:
    """The plan for the running stack, after every check that needs nothing changed."""
    from prefectstack.runtime import backup

    state_dir = loaded.state_dir
    if backend.read(state_dir).backend == backend.COMPOSE:
        raise StackError("`prefectstack upgrade` works on a stack run by the local backend",
                         hint="with Docker Compose: pull the new images and "
                              "`docker compose up -d` (its migrate service runs first)")
    current = running_state(loaded)
    backup.require_local_postgres(loaded, "upgrade")
    known, head = backup.known_revisions()
    version = prefect_version()
    revision = asyncio.run(database_revision(loaded))
    check_revision(revision, known, version)
    return Plan(loaded.stack.name, version, revision, head,
                steps(topology.build(loaded.stack), (s.name for s in current.services)))


def running_state(loaded: LoadedStack) -> state.StackState:
    current = state.read(loaded.state_dir)
    if current is None or not state.supervisor_alive(loaded.state_dir):
        raise StackError(f"the stack in {loaded.state_dir} is not running; `upgrade` works on "
                         "a running stack (a stopped one just starts on the new version)",
                         hint="`prefectstack up --detach`", exit_code=3)
    if current.phase != "ready":
        raise StackError(f"the stack is {current.phase}, not ready; nothing was changed",
                         hint="`prefectstack status` shows why", exit_code=3)
    return current


def prefect_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("prefect")


async def database_revision(loaded: LoadedStack) -> str:
    import asyncpg

    pg = loaded.stack.postgres
    password = secret_store.load(loaded.state_dir)[stack_secrets.POSTGRES_SUPERUSER_PASSWORD]
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="postgres",
                                     password=password, database=pg.database, timeout=10)
        try:
            revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise StackError(f"cannot read the database's migration revision on port {pg.port}: "
                         f"{type(exc).__name__}: {exc}; nothing was changed",
                         hint="`prefectstack status`; `prefectstack logs postgres`") from None
    if revision is None:
        raise StackError("the database has no migration revision; is it Prefect's?")
    return str(revision)


# -- applying ----------------------------------------------------------------------------------


def apply(loaded: LoadedStack, the_plan: Plan, target: Target | None,
          on_step: Callable[[str], None] = lambda _text: None) -> list[Done]:
    """Carry the plan out, step by step; stops at the first step that fails (raising)."""
    from prefectstack.runtime import backup

    done: list[Done] = []
    for step in the_plan.steps:
        on_step(f"{step.action} {step.unit}".rstrip())
        started = time.monotonic()
        result = Done(step, 0.0)
        if step.action == "backup":
            made = backup.create(loaded)
            result.detail = str(made.path)
        elif step.action == "migrate":
            restart_unit(loaded, step.unit, "completed")
            result.detail = "; ".join(tail_lines(loaded.state_dir / "logs" /
                                                 f"{step.unit}.log", 1))
        elif step.action == "restart":
            api = _is_api(loaded, step.unit)
            if api and drains_first(loaded.stack):
                result.extra["drained"] = drain_api(loaded, step.unit)
            result.extra["ready_seconds"] = restart_unit(loaded, step.unit, "ready")
            if api:
                time.sleep(EDGE_RECHECK_SECONDS)  # the edge's health check sees it back
        else:
            if target is None:
                raise StackError(f"draining {step.unit} needs the stack's API")
            result.extra = asyncio.run(_drain_and_restart(loaded, step.unit, target, on_step))
        result.seconds = round(time.monotonic() - started, 2)
        done.append(result)
    return done


def _is_api(loaded: LoadedStack, unit: str) -> bool:
    return any(s.name == unit and s.role == "api" for s in topology.build(loaded.stack))


def drains_first(stack: Stack) -> bool:
    """Drain an API process before its restart only when another one takes its requests:
    with one, draining would only make the API unavailable 9 s longer."""
    return sum(1 for s in topology.build(stack) if s.role == "api") > 1


def drain_api(loaded: LoadedStack, unit: str) -> bool:
    """Take an API process out of the edge's rotation before it restarts: its health check
    answers 503 from the drain signal on (jobs/api_server.py), and the edge's next check,
    one interval plus one timeout later at the latest, stops sending it requests. Whatever it
    was already handling is finished by uvicorn's graceful stop. False if it was not running
    (nothing to drain)."""
    svc = _service(running_state(loaded), unit)
    if svc.state != "ready" or not state.same_process(svc.pid, svc.pid_started):
        return False
    assert svc.pid is not None
    try:
        os.kill(svc.pid, DRAIN_SIGNAL)
    except ProcessLookupError:
        return False
    time.sleep(EDGE_RECHECK_SECONDS)
    return True


def restart_unit(loaded: LoadedStack, unit: str, want: str,
                 timeout: float = UNIT_TIMEOUT_SECONDS) -> float:
    """Have the supervisor restart `unit` and wait until it is `want` (`ready`, or
    `completed` for a one-shot) again; the seconds that took."""
    state_dir = loaded.state_dir
    before = _service(running_state(loaded), unit)
    started = time.monotonic()
    answer = control.ask_restart(state_dir, unit)
    if not answer.ok:
        raise StackError(f"the supervisor would not restart {unit}: {answer.message}")
    deadline = started + timeout
    while time.monotonic() < deadline:
        current = state.read(state_dir)
        if current is None or not state.supervisor_alive(state_dir):
            raise StackError(f"the supervisor stopped while {unit} restarted",
                             hint="`prefectstack status`; logs/supervisor.log")
        now = _service(current, unit)
        if now.restarts > before.restarts and now.state == want:
            return round(time.monotonic() - started, 2)
        if now.restarts > before.restarts and now.state == "failed":
            tail = tail_lines(state_dir / "logs" / f"{unit}.log", 15)
            raise StackError(f"{unit} failed while it restarted (exit code {now.last_exit}); "
                             "the steps after it were not done. Its last lines:\n    "
                             + "\n    ".join(tail),
                             hint=f"`prefectstack logs {unit}`; the backup taken first "
                                  "restores the data as it was (`prefectstack restore`)")
        time.sleep(POLL_SECONDS)
    raise StackError(f"{unit} was not {want} again {timeout:.0f}s after its restart",
                     hint=f"`prefectstack status`; `prefectstack logs {unit}`")


def _service(current: state.StackState, unit: str) -> state.ServiceState:
    for svc in current.services:
        if svc.name == unit:
            return svc
    raise StackError(f"the running stack has no unit {unit}")


async def _drain_and_restart(loaded: LoadedStack, unit: str, target: Target,
                             on_step: Callable[[str], None]) -> dict[str, Any]:
    """Pause the worker's pool, wait until none of its runs is in flight, restart the
    worker, resume the pool (unless it was paused already)."""
    from prefectstack import prefect_api

    pool = next(w.pool for w in loaded.stack.workers if w.name == unit)
    async with prefect_api.connect(target) as api:
        found = await api.read_work_pool(pool)
        was_paused = bool(found and found.get("is_paused"))
        if not was_paused:
            await api.update_work_pool(pool, {"is_paused": True})
        try:
            started = time.monotonic()
            waited_for = await _wait_drained(api, pool, on_step)
            drained = round(time.monotonic() - started, 2)
            ready = await asyncio.to_thread(restart_unit, loaded, unit, "ready")
        finally:
            if not was_paused:
                await api.update_work_pool(pool, {"is_paused": False})
    return {"pool": pool, "runs_waited_for": waited_for, "drain_seconds": drained,
            "ready_seconds": ready}


async def _wait_drained(api: PrefectApi, pool: str, on_step: Callable[[str], None]) -> int:
    """Until the pool has no run pending, running or cancelling; how many there were."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    seen: set[str] = set()
    shown = -1
    while time.monotonic() < deadline:
        runs = [r for r in await api.read_flow_runs_in(IN_FLIGHT)
                if r.get("work_pool_name") == pool]
        seen |= {r["id"] for r in runs}
        if not runs:
            return len(seen)
        if len(runs) != shown:
            shown = len(runs)
            on_step(f"  waiting for {shown} run(s) in flight in pool {pool}")
        await asyncio.sleep(DRAIN_POLL_SECONDS)
    raise StackError(f"pool {pool} still had runs in flight after "
                     f"{DRAIN_TIMEOUT_SECONDS:.0f}s; its worker was not restarted")
