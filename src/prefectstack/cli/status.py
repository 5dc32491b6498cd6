"""`prefectstack status`: each service with pid, state, uptime, restarts and health."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from prefectstack import console
from prefectstack.cli.options import json_flag, stack_file
from prefectstack.layout import Layout

if TYPE_CHECKING:
    from prefectstack.runtime.backend import Record

_LIVE_STATES = ("starting", "ready")

# Exit codes, like `systemctl is-active` and LSB init scripts' `status` (1 and 2 stay the
# CLI's own: an error, a bad stack file):
EXIT_HEALTHY = 0  # the stack runs and every unit is ready (or completed) and healthy
EXIT_NOT_RUNNING = 3  # no stack runs (LSB: "program is not running")
EXIT_DEGRADED = 4  # it runs, but a unit is starting, restarting, unhealthy, blocked or stopping
EXIT_FAILED = 5  # a unit failed for good (its restart budget is spent), or the stack failed
EXIT_STALE = 6  # the supervisor is gone (crashed, killed) and left its state behind
HEALTH_EXIT_CODES = {
    "healthy": EXIT_HEALTHY, "stopped": EXIT_NOT_RUNNING, "degraded": EXIT_DEGRADED,
    "failed": EXIT_FAILED, "stale": EXIT_STALE,
}


def _uptime(started: float | None, now: float) -> str:
    if not started:
        return "-"
    secs = int(now - started)
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 60}m{secs % 60:02d}s"


def _health(svc: dict[str, Any]) -> str:
    if svc["state"] in ("failed", "backoff", "blocked", "gone", "orphaned", "stopped"):
        return "-" if svc["healthy"] is None else "unhealthy"
    if svc["degraded"]:
        return "degraded"
    value: bool | None = svc["healthy"]
    return {True: "healthy", False: "unhealthy", None: "-"}[value]


def _check_services_log(svc: dict[str, Any], state_dir: Path) -> None:
    """Mark the services process degraded when its log shows loops failing again and again."""
    from datetime import datetime

    from prefectstack.runtime import service_health

    now = datetime.now()
    log_path = Layout(state_dir).log(svc["name"])
    health = service_health.assess(service_health.read_tail(log_path, now), now)
    svc["degraded"] = health.degraded
    svc["detail"] = health.describe()


def snapshot(state_dir: Any) -> dict[str, Any]:
    """What `status --json` prints for a stack of the local backend."""
    from dataclasses import asdict

    from prefectstack.runtime import state

    current = state.read(state_dir)
    alive = state.supervisor_alive(state_dir)
    if current is None:
        return {"running": False, "stale": False, "phase": "stopped", "services": [],
                "health": "stopped"}
    # The process running `prefect server services start` stays alive and passes its probe
    # even while every loop in it fails, so its log is read as well. (Imported only once a
    # stack has run: a stopped stack's status is answered without the topology.)
    from prefectstack.topology import SERVICES_PROCESS

    data = asdict(current)
    data["running"] = alive
    data["stale"] = not alive
    if not alive:
        data["phase"] = "stale"
    for svc in data["services"]:
        svc["degraded"], svc["detail"] = False, ""
        if svc["pid"] and not state.same_process(svc["pid"], svc["pid_started"]):
            svc["state"], svc["healthy"] = "gone", None
        elif not alive and svc["pid"]:
            # Nobody watches it any more: what it last reported is no longer known.
            svc["state"], svc["healthy"] = "orphaned", None
        if svc["state"] == "backoff" and svc["restarts"]:
            svc["detail"] = f"restarting (restart {svc['restarts']})"
        if alive and svc["name"] == SERVICES_PROCESS and svc["state"] in _LIVE_STATES:
            _check_services_log(svc, Path(state_dir))
    data["health"] = stack_health(data, gave_up=current.phase == "failed")
    return data


def stack_health(data: dict[str, Any], *, gave_up: bool = False) -> str:
    """One word for the whole stack, and through HEALTH_EXIT_CODES the exit code. A
    supervisor that gave up on the stack, stopped everything and exited is `failed`; one
    that vanished without doing so is `stale`."""
    if not data["services"] and not data.get("stale"):
        return "stopped"
    if data["stale"]:
        orphans = any(u["state"] == "orphaned" for u in data["services"])
        return "failed" if gave_up and not orphans else "stale"
    units = data["services"]
    if data["phase"] == "failed" or any(u["state"] == "failed" for u in units):
        return "failed"
    healthy = all(
        u["state"] == "completed"
        or (u["state"] == "ready" and u["healthy"] is not False and not u["degraded"])
        for u in units
    )
    return "healthy" if healthy and data["phase"] == "ready" else "degraded"


@click.command()
@stack_file
@json_flag
def status(stack_path: str | None, as_json: bool) -> None:
    """Show whether the stack runs, and the state of each service.

    \b
    Exit codes (like `systemctl is-active`), with --json too:
      0  running, every service ready (one-shots completed) and healthy
      3  not running
      4  degraded: running, but a service is starting, restarting (backoff),
         unhealthy, blocked by a failed one, or the stack is stopping
      5  failed: a service gave up after its restarts, or the stack failed
      6  stale: the supervisor died and left processes or state behind
         (`prefectstack down` cleans up)
    """
    from prefectstack.runtime import backend
    from prefectstack.stack.loader import locate_state_dir

    state_dir = locate_state_dir(stack_path)
    record = backend.read(state_dir)
    if record.backend == backend.COMPOSE:
        data = _show_compose(state_dir, record, as_json)
    else:
        data = snapshot(state_dir)
        from prefectstack.cli.backup import last_backup, last_backup_line

        if (backup := last_backup(state_dir)) is not None:
            data["last_backup"] = backup  # only once a backup was attempted
        _show_local(data, as_json)
        if not as_json and (line := last_backup_line(state_dir)):
            console.out(line)
    code = HEALTH_EXIT_CODES[data["health"]]
    if code:
        # SystemExit, not ctx.exit: the CLI runs click with standalone_mode=False, which
        # turns ctx.exit's code into a return value that `main` does not pass on.
        sys.exit(code)


def _show_local(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.json_out(data)
        return
    if not data["services"]:
        console.out("stack is not running")
        return
    if data["stale"] and data["health"] == "failed":
        console.warn("the stack failed and its supervisor stopped it; "
                     "`prefectstack down` clears its state")
    elif data["stale"]:
        console.warn(
            "the supervisor is gone (crashed or killed); `prefectstack down` cleans up"
        )
    console.out(f"stack `{data['stack']}`: {data['phase']}   UI: {data['ui_url']}")
    if data.get("message"):
        console.out(f"  {data['message']}")
    now = time.time()
    rows = [
        [
            s["name"], s["kind"], s["state"], str(s["pid"] or "-"),
            _uptime(s["started_at"], now) if s["pid"] else "-",
            str(s["restarts"]), _health(s),
        ]
        for s in data["services"]
    ]
    console.table(["service", "kind", "state", "pid", "uptime", "restarts", "health"], rows)
    for s in data["services"]:
        if s["detail"]:
            console.out(f"  {s['name']}: {s['detail']}")
    if data["health"] != "healthy":
        console.out(f"health: {data['health']}")


def _show_compose(state_dir: Path, record: Record, as_json: bool) -> dict[str, Any]:
    from prefectstack.runtime import compose

    data = compose.snapshot(state_dir, record)
    if as_json:
        console.json_out(data)
        return data
    if not data["services"]:
        console.out("stack is not running (Docker Compose)")
        return data
    console.out(f"stack `{data['stack']}` (Docker Compose): {data['phase']}   "
                f"UI: {data['ui_url']}")
    rows = [[s["service"], s["name"], s["state"], s["health"] or "-", s["status"]]
            for s in data["services"]]
    console.table(["service", "container", "state", "health", "status"], rows)
    if data["health"] != "healthy":
        console.out(f"health: {data['health']}")
    return data


COMMANDS = [status]
