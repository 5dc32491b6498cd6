"""`up`, `down`, `status` and `logs` act on the backend the state dir records.

There is no Docker engine here: a fake `docker` on PATH records its arguments and answers
`compose ps` and `compose config --volumes` with canned output, so these tests check what
would run, not a real Compose project.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from prefectstack.cli import cli
from prefectstack.errors import StackError
from prefectstack.runtime import backend

STACK = "version: 1\nname: demo\nstate_dir: state\n"
PS = [
    {"Service": "edge", "Name": "demo-edge-1", "State": "running", "Health": "healthy",
     "ExitCode": 0, "Status": "Up 5 minutes (healthy)"},
    {"Service": "migrate", "Name": "demo-migrate-1", "State": "exited", "Health": "",
     "ExitCode": 0, "Status": "Exited (0) 5 minutes ago"},
]


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(STACK)
    return path


@pytest.fixture
def state_dir(stack_file: Path) -> Path:
    return stack_file.parent / "state"


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake docker CLI on PATH; yields the file its argument lines are appended to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker-calls"
    (tmp_path / "ps.json").write_text("\n".join(json.dumps(row) for row in PS) + "\n")
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'case "$*" in\n'
        f'  *" ps "*) cat {tmp_path / "ps.json"} ;;\n'
        "  *\"config --volumes\"*) printf 'pgdata\\nredis\\n' ;;\n"
        "esac\n"
    )
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield log


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def compose_calls(log: Path) -> list[str]:
    """The `docker compose ...` calls after `-f FILE`, without the engine checks."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [" ".join(line.split()[3:]) for line in lines
            if line.startswith("compose -f ")]


def started(stack_file: Path, state_dir: Path) -> None:
    """A Compose stack as `up --backend compose` leaves it (without running `up`)."""
    project = state_dir / "compose"
    project.mkdir(parents=True)
    (project / "docker-compose.yml").write_text("services: {}\n")
    backend.write(state_dir, backend.Record(backend.COMPOSE, stack="demo",
                                            ui_url="https://localhost:4200"))


def test_up_compose_records_the_backend(stack_file: Path, state_dir: Path, calls: Path) -> None:
    result = invoke("up", "--backend", "compose", "-f", str(stack_file))
    assert result.exit_code == 0, result.output
    assert compose_calls(calls) == ["up -d --build"]
    assert backend.read(state_dir) == backend.Record(
        backend.COMPOSE, stack="demo", ui_url="https://localhost:4200")
    assert (state_dir / "compose" / "docker-compose.yml").is_file()


def test_local_up_is_refused_while_compose_runs_the_stack(
    stack_file: Path, state_dir: Path, calls: Path,
) -> None:
    started(stack_file, state_dir)
    result = invoke("up", "-f", str(stack_file))
    assert isinstance(result.exception, StackError)
    assert "was started with Docker Compose" in result.exception.message
    assert compose_calls(calls) == []


def test_status_of_a_compose_stack(stack_file: Path, state_dir: Path, calls: Path) -> None:
    started(stack_file, state_dir)
    result = invoke("status", "--json", "-f", str(stack_file))
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert compose_calls(calls) == ["ps --all --format json"]
    assert {k: v for k, v in data.items() if k != "services"} == {
        "backend": "compose", "stack": "demo", "ui_url": "https://localhost:4200",
        "project_dir": str(state_dir / "compose"), "running": True, "phase": "ready",
        "health": "healthy"}
    assert data["services"][0] == {
        "service": "edge", "name": "demo-edge-1", "state": "running", "health": "healthy",
        "exit_code": 0, "status": "Up 5 minutes (healthy)"}
    human = invoke("status", "-f", str(stack_file))
    assert human.exit_code == 0, human.output
    assert "stack `demo` (Docker Compose): ready" in human.stdout
    assert "demo-migrate-1" in human.stdout


def test_status_of_a_failed_compose_stack_exits_5(
    stack_file: Path, state_dir: Path, calls: Path, tmp_path: Path
) -> None:
    """The exit codes of `status` mean the same for both backends: a migration that exited
    with an error is a failed stack (5), not a running one (0)."""
    started(stack_file, state_dir)
    rows = [PS[0], PS[1] | {"ExitCode": 1, "Status": "Exited (1) 5 minutes ago"}]
    (tmp_path / "ps.json").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    result = invoke("status", "--json", "-f", str(stack_file))
    assert result.exit_code == 5, result.output
    assert json.loads(result.stdout)["health"] == "failed"
    human = invoke("status", "-f", str(stack_file))
    assert human.exit_code == 5
    assert "health: failed" in human.stdout


def test_logs_of_a_compose_stack(stack_file: Path, state_dir: Path, calls: Path) -> None:
    started(stack_file, state_dir)
    result = invoke("logs", "--file", str(stack_file), "edge", "-n", "20", "-f")
    assert result.exit_code == 0, result.output
    assert compose_calls(calls) == ["logs --tail 20 --follow edge"]


def test_down_stops_a_compose_stack_and_forgets_it(
    stack_file: Path, state_dir: Path, calls: Path,
) -> None:
    started(stack_file, state_dir)
    result = invoke("down", "-f", str(stack_file))
    assert result.exit_code == 0, result.output
    assert "stack stopped (Docker Compose)" in result.stdout
    assert compose_calls(calls) == ["down"]
    assert not (state_dir / "backend.json").exists()
    assert backend.read(state_dir).backend == backend.LOCAL


def test_down_volumes_names_them_and_asks(
    stack_file: Path, state_dir: Path, calls: Path,
) -> None:
    started(stack_file, state_dir)
    refused = invoke("down", "--volumes", "-f", str(stack_file))  # stdin is no tty: "no"
    assert isinstance(refused.exception, StackError)
    assert "pgdata" in refused.stdout and "redis" in refused.stdout
    assert compose_calls(calls) == ["config --volumes"]
    assert backend.read(state_dir).backend == backend.COMPOSE, "nothing was stopped"
    result = invoke("down", "--volumes", "--yes", "-f", str(stack_file))
    assert result.exit_code == 0, result.output
    assert compose_calls(calls)[-1] == "down --volumes"


def test_down_without_docker_keeps_the_record(
    stack_file: Path, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    started(stack_file, state_dir)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = invoke("down", "-f", str(stack_file))
    assert isinstance(result.exception, StackError)
    assert result.exception.message == "docker is not installed"
    assert backend.read(state_dir).backend == backend.COMPOSE


def test_down_of_a_local_stack_forgets_its_record(stack_file: Path, state_dir: Path) -> None:
    backend.write(state_dir, backend.Record(backend.LOCAL, stack="demo"))
    result = invoke("down", "-f", str(stack_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == "stack is not running\n"
    assert not (state_dir / "backend.json").exists()
