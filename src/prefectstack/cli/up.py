"""`prefectstack up`: start the platform in the foreground or in the background."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from prefectstack import console
from prefectstack.cli.options import stack_file
from prefectstack.cli.progress import StartProgress
from prefectstack.errors import StackError
from prefectstack.layout import Layout

if TYPE_CHECKING:
    from prefectstack.runtime.state import StackState
    from prefectstack.stack.loader import LoadedStack

READY_TIMEOUT_SECONDS = 900
POLL_SECONDS = 0.3  # how often a detached `up` reads the state file while it waits


def summary(loaded: LoadedStack, detached: bool) -> None:
    from prefectstack import topology

    layout = Layout(loaded.state_dir)
    console.out("")
    console.out(f"prefectstack `{loaded.stack.name}` is ready.")
    console.out(f"  UI and API:   {topology.public_url(loaded.stack)}  (API at /api)")
    if not loaded.stack.edge.enabled:
        console.out("  API login:    user `prefectstack`, password `api_password` in the secrets "
                    "file (clients: PREFECT_API_AUTH_STRING=prefectstack:<password>)")
    if loaded.stack.edge.enabled:
        _edge_summary(loaded)
    console.out(f"  stack file:   {loaded.source}")
    console.out(f"  data:         {layout.data}")
    console.out(f"  logs:         {layout.logs}   (prefectstack logs [SERVICE] -f)")
    console.out(f"  secrets:      {layout.secrets_file} (0600; never printed but once: the")
    console.out("                first admin password)")
    console.out("  status:       prefectstack status")
    if detached:
        console.out("  stop:         prefectstack down")
    else:
        console.out("  stop:         Ctrl-C (or prefectstack down from another shell)")


def ready(loaded: LoadedStack, detached: bool) -> None:
    """Once the platform is ready: the summary, then the stack file's deployments. In the
    foreground the supervisor calls this from its loop, so they are applied on a thread
    (supervision goes on meanwhile); detached, before `up` returns, so errors are raised."""
    from prefectstack.deploy.apply import apply_on_up

    summary(loaded, detached)
    apply_on_up(loaded, background=not detached)


def _edge_summary(loaded: LoadedStack) -> None:
    from prefectstack.runtime import handover

    root = loaded.state_dir
    if loaded.stack.edge.internal_tls:
        ca = handover.export_ca(root)
        console.out(f"  CA cert:      {ca}  (clients: PREFECT_API_SSL_CERT_FILE={ca})")
    password = handover.admin_password_once(root)
    if password:
        console.out(f"  sign in:      user `admin`, password (shown this once): {password}")
        console.out("                change it: prefectstack users passwd admin")
    console.out("  access:       prefectstack users|keys|audit")


@click.command()
@stack_file
@click.option("-d", "--detach", is_flag=True, help="Run in the background and return when ready.")
@click.option(
    "--backend",
    "backend_name",
    type=click.Choice(["local", "compose"]),
    default="local",
    show_default=True,
    help="Supervised processes on this host, or Docker Compose (needs a Docker engine).",
)
def up(stack_path: str | None, detach: bool, backend_name: str) -> None:
    """Start every service of the stack, in dependency order, and wait until it is ready."""
    from prefectstack import topology
    from prefectstack.runtime import backend
    from prefectstack.stack.loader import load_stack

    loaded = load_stack(stack_path)
    topology.check_target(loaded.stack, "Docker Compose" if backend_name == backend.COMPOSE
                          else "`prefectstack up`")
    backend.check_can_start(loaded.state_dir, backend_name)
    if backend_name == backend.COMPOSE:
        from prefectstack.runtime import compose

        target = compose.up(loaded)
        console.out(f"started with Docker Compose from {target}")
        return
    from prefectstack.runtime import local

    backend.write(loaded.state_dir, backend.Record(
        backend.LOCAL, stack=loaded.stack.name, ui_url=topology.public_url(loaded.stack)))
    # In the foreground the services' log lines stream too: no spinner to draw over them.
    progress = StartProgress(spinner=detach)
    if not detach:
        def on_ready() -> None:
            progress.finish()
            ready(loaded, False)

        code = local.run(loaded, foreground=True, on_ready=on_ready, on_state=progress.update)
        progress.finish()  # a start that failed: what came up and what did not
        sys.exit(code)
    _up_detached(loaded, stack_path, progress)


def _up_detached(loaded: LoadedStack, stack_path: str | None, progress: StartProgress) -> None:
    from prefectstack import tools, topology
    from prefectstack.runtime import local, ports, state
    from prefectstack.runtime.logfiles import tail_lines

    state_dir = loaded.state_dir
    local.check_not_running(state_dir)
    ports.check_free(topology.build(loaded.stack), loaded.stack.edge.listen_addresses)
    layout = Layout(state_dir)
    layout.logs.mkdir(parents=True, exist_ok=True)
    source = str(click.format_filename(stack_path)) if stack_path else ""
    if source:
        from pathlib import Path

        source = str(Path(source).resolve())
    log_path = layout.supervisor_log
    with open(log_path, "ab") as log:
        pid = tools.spawn_detached(
            [sys.executable, "-m", "prefectstack.runtime.local", source],
            log=log,
            cwd=loaded.base_dir,
        )
    console.event(f"supervisor started in the background (pid {pid}); starting the stack")
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    seen_alive = False
    try:
        while time.monotonic() < deadline:
            current = state.read(state_dir)
            if current and current.supervisor_pid == pid:
                seen_alive = True
                progress.update(current)
                if current.phase == "ready":
                    progress.finish(current)
                    _raise_if_incomplete(current)
                    ready(loaded, True)
                    if current.message:
                        console.warn(current.message)
                    return
                if current.phase in ("failed", "stopped"):
                    break
            if not _pid_alive(pid):
                break
            time.sleep(POLL_SECONDS)
        else:
            raise StackError(
                f"the stack was not ready after {READY_TIMEOUT_SECONDS}s",
                hint="prefectstack status; prefectstack logs",
            )
    finally:
        progress.finish()
    tail = tail_lines(log_path, 20)
    what = "failed to start" if seen_alive else "supervisor exited before starting"
    raise StackError(
        f"the stack {what}; last lines of {log_path}:\n    " + "\n    ".join(tail)
    )


def incomplete(current: StackState) -> list[str]:
    """The units that gave up (`failed`) or never started (`blocked`), with why."""
    out = []
    for svc in current.services:
        if svc.state == "failed":
            code = f", last exit code {svc.last_exit}" if svc.last_exit is not None else ""
            out.append(f"{svc.name} failed after {svc.restarts} restarts{code}")
        elif svc.state == "blocked":
            out.append(f"{svc.name} blocked (a service it needs failed)")
    return out


def _raise_if_incomplete(current: StackState) -> None:
    """The stack runs, but not all of it: say so, and exit non-zero (the rest keeps running,
    as with systemd; `down` stops it)."""
    missing = incomplete(current)
    if not missing:
        return
    failed = [s.name for s in current.services if s.state == "failed"]
    raise StackError(
        "the stack started without: " + "; ".join(missing) + ". The rest keeps running.",
        hint=" ".join(f"`prefectstack logs {name}`;" for name in failed)
        + " fix it, then `prefectstack down` and `prefectstack up`",
        exit_code=5,
    )


def _pid_alive(pid: int) -> bool:
    import os

    from prefectstack.runtime import state

    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return state.same_process(pid, None)


COMMANDS = [up]
