"""The Docker Compose backend: `up --backend compose` renders the stack's Compose project
into its state dir and runs `docker compose` there; `down`, `status` and `logs` find the
project in the same place. Every program runs through tools.py; the argv builders and the
reading of `docker compose ps` are pure, so tests check them without a Docker engine."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefectstack import console, tools
from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import backend

if TYPE_CHECKING:
    from prefectstack.stack.loader import LoadedStack

COMPOSE_FILE = "docker-compose.yml"
UP_TIMEOUT_SECONDS = 3600  # the first `up` builds the image
DOWN_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Container:
    """One line of `docker compose ps`."""

    service: str
    name: str
    state: str  # created | running | restarting | paused | exited | dead | removing
    health: str  # healthy | unhealthy | starting | "" (no healthcheck)
    exit_code: int
    status: str  # Docker's own words, e.g. "Up 3 minutes (healthy)"


def compose_argv(docker: str, project: Path, *args: str) -> list[str]:
    # -f: compose then takes the file's directory as the project directory (and its .env).
    return [docker, "compose", "-f", str(project / COMPOSE_FILE), *args]


def down_argv(docker: str, project: Path, *, volumes: bool) -> list[str]:
    return compose_argv(docker, project, "down", *(["--volumes"] if volumes else []))


def logs_argv(docker: str, project: Path, service: str | None, lines: int,
              follow: bool) -> list[str]:
    args = ["logs", "--tail", str(lines), *(["--follow"] if follow else [])]
    return compose_argv(docker, project, *args, *([service] if service else []))


def check_docker() -> str:
    """The docker CLI, once we know it reaches an engine and has the compose plugin."""
    docker = shutil.which("docker")
    if docker is None:
        raise StackError("docker is not installed",
                         hint="install Docker Engine, or use the local backend: prefectstack up")
    try:
        tools.run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except StackError as exc:
        raise StackError(
            "no Docker engine is reachable (`docker info` failed: "
            f"{exc.message.splitlines()[-1].strip()})",
            hint="start the Docker daemon (e.g. sudo systemctl start docker), or use the "
                 "local backend: prefectstack up",
        ) from None
    try:
        tools.run([docker, "compose", "version"], timeout=30)
    except StackError:
        raise StackError("the Docker Compose plugin is missing (`docker compose version` failed)",
                         hint="install docker-compose-plugin") from None
    return docker


def write_project(loaded: LoadedStack, out_dir: Path) -> list[Path]:
    """Render the stack's Compose project (secrets from the state dir's store) into
    `out_dir`; for `render compose` and for `up`."""
    from prefectstack.render import compose
    from prefectstack.runtime import secret_store
    from prefectstack.runtime.bundle import write_bundle

    stack = loaded.stack
    values = secret_store.ensure(loaded.state_dir, compose.secret_names(stack))
    try:
        bundle = compose.render(stack, values)
    except ValueError as exc:
        raise StackError(f"cannot render the stack: {exc}") from None
    return write_bundle(bundle, out_dir)


def up(loaded: LoadedStack) -> Path:
    """Render into the state dir, record the backend, then `docker compose up -d --build`;
    returns the project directory."""
    from prefectstack import topology

    docker = check_docker()  # fail before writing anything when there is no engine
    project = Layout(loaded.state_dir).compose_dir
    write_project(loaded, project)
    # Recorded before starting: a start that fails halfway still leaves containers to stop.
    backend.write(loaded.state_dir, backend.Record(
        backend.COMPOSE, stack=loaded.stack.name, ui_url=topology.public_url(loaded.stack)))
    console.event(f"docker compose up -d --build in {project}")
    tools.run(compose_argv(docker, project, "up", "-d", "--build"), timeout=UP_TIMEOUT_SECONDS)
    console.event("started; `prefectstack status` shows health, `prefectstack logs -f` logs")
    return project


def project_dir(state_dir: Path) -> Path | None:
    """The rendered project, or None when `up --backend compose` never got as far."""
    project = Layout(state_dir).compose_dir
    return project if (project / COMPOSE_FILE).is_file() else None


def volumes(state_dir: Path) -> list[str]:
    """The project's named volumes (what `down --volumes` deletes), as Compose sees them."""
    project = project_dir(state_dir)
    if project is None:
        return []
    result = tools.run(compose_argv(check_docker(), project, "config", "--volumes"))
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def down(state_dir: Path, *, volumes: bool) -> bool:
    """`docker compose down` (with `--volumes`: delete the project's volumes too); False when
    there is no project to stop."""
    project = project_dir(state_dir)
    if project is None:
        return False
    tools.run(down_argv(check_docker(), project, volumes=volumes),
              timeout=DOWN_TIMEOUT_SECONDS)
    return True


def parse_ps(text: str) -> list[Container]:
    """`docker compose ps --format json`: one object per line (Compose ≥ 2.21) or one array
    (older releases)."""
    text = text.strip()
    if not text:
        return []
    try:
        rows: list[dict[str, Any]] = (
            json.loads(text) if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()])
    except json.JSONDecodeError as exc:
        raise StackError(f"cannot read the output of `docker compose ps`: {exc}") from None
    return [
        Container(service=str(row.get("Service", "")), name=str(row.get("Name", "")),
                  state=str(row.get("State", "")).lower(),
                  health=str(row.get("Health", "")).lower(),
                  exit_code=int(row.get("ExitCode") or 0), status=str(row.get("Status", "")))
        for row in rows
    ]


def phase(containers: list[Container]) -> str:
    """stopped: nothing runs; degraded: a container restarts, is unhealthy or exited with an
    error; starting: a healthcheck has not passed yet; ready otherwise (one-shot jobs that
    exited 0 are done, not down)."""
    if not any(c.state in ("running", "restarting", "paused") for c in containers):
        return "stopped"
    if any(c.state in ("restarting", "dead") or c.health == "unhealthy"
           or (c.state == "exited" and c.exit_code != 0) for c in containers):
        return "degraded"
    if any(c.state == "created" or c.health == "starting" for c in containers):
        return "starting"
    return "ready"


def health(containers: list[Container]) -> str:
    """The same words as a local stack's health, for the same exit codes of `status`:
    stopped (nothing runs), failed (a container exited with an error or is dead: Compose
    gave up on it or it was never meant to restart, like a failed migration), degraded
    (restarting, unhealthy or still starting), healthy otherwise."""
    current = phase(containers)
    if current == "stopped":
        return "stopped"
    if any(c.state == "dead" or (c.state == "exited" and c.exit_code != 0)
           for c in containers):
        return "failed"
    return "healthy" if current == "ready" else "degraded"


def containers(state_dir: Path) -> list[Container]:
    project = project_dir(state_dir)
    if project is None:
        return []
    argv = compose_argv(check_docker(), project, "ps", "--all", "--format", "json")
    return parse_ps(tools.run(argv, timeout=60).stdout)


def snapshot(state_dir: Path, record: backend.Record) -> dict[str, Any]:
    """What `status --json` prints for a Compose stack."""
    found = containers(state_dir)
    current = phase(found)
    return {
        "backend": backend.COMPOSE, "stack": record.stack, "ui_url": record.ui_url,
        "project_dir": str(Layout(state_dir).compose_dir), "running": current != "stopped",
        "phase": current, "health": health(found), "services": [asdict(c) for c in found],
    }


def logs(state_dir: Path, service: str | None, lines: int, follow: bool) -> int:
    """`docker compose logs` on this terminal until it ends (or Ctrl-C); its exit code."""
    project = project_dir(state_dir)
    if project is None:
        raise StackError("no Compose project in the state dir",
                         hint="start it: prefectstack up --backend compose")
    argv = logs_argv(check_docker(), project, service, lines, follow)
    return tools.run_foreground(argv, env=dict(os.environ))
