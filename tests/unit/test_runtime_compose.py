"""The Compose backend's pure parts (the argv it builds, its reading of `docker compose ps`)
and the state dir's record of which backend started a stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import backend, compose, state
from prefectstack.runtime.compose import Container

PROJECT = Path("/srv/state/compose")
FILE = str(PROJECT / "docker-compose.yml")


def test_argv_runs_compose_on_the_rendered_file() -> None:
    assert compose.compose_argv("docker", PROJECT, "up", "-d") == [
        "docker", "compose", "-f", FILE, "up", "-d"]
    assert compose.down_argv("docker", PROJECT, volumes=False) == [
        "docker", "compose", "-f", FILE, "down"]
    assert compose.down_argv("docker", PROJECT, volumes=True)[-2:] == ["down", "--volumes"]


def test_logs_argv() -> None:
    assert compose.logs_argv("docker", PROJECT, None, 50, False)[4:] == ["logs", "--tail", "50"]
    assert compose.logs_argv("docker", PROJECT, "edge", 10, True)[4:] == [
        "logs", "--tail", "10", "--follow", "edge"]


ROWS = [
    {"Service": "postgres", "Name": "demo-postgres-1", "State": "running",
     "Health": "healthy", "ExitCode": 0, "Status": "Up 2 minutes (healthy)"},
    {"Service": "migrate", "Name": "demo-migrate-1", "State": "exited", "Health": "",
     "ExitCode": 0, "Status": "Exited (0) 1 minute ago"},
]


@pytest.mark.parametrize("text", [
    "\n".join(json.dumps(r) for r in ROWS) + "\n",  # Compose >= 2.21: one object per line
    json.dumps(ROWS),  # older releases: one array
], ids=["ndjson", "array"])
def test_parse_ps(text: str) -> None:
    assert compose.parse_ps(text) == [
        Container("postgres", "demo-postgres-1", "running", "healthy", 0,
                  "Up 2 minutes (healthy)"),
        Container("migrate", "demo-migrate-1", "exited", "", 0, "Exited (0) 1 minute ago"),
    ]


def test_parse_ps_empty_and_garbled() -> None:
    assert compose.parse_ps("") == []
    with pytest.raises(StackError, match="docker compose ps"):
        compose.parse_ps("{not json")


def _c(state_: str, health: str = "", exit_code: int = 0) -> Container:
    return Container("svc", "demo-svc-1", state_, health, exit_code, "")


@pytest.mark.parametrize(("containers", "expected"), [
    ([], "stopped"),
    ([_c("exited"), _c("exited", exit_code=1)], "stopped"),
    ([_c("running", "healthy"), _c("exited")], "ready"),  # a one-shot job that finished
    ([_c("running"), _c("running", "starting")], "starting"),
    ([_c("running"), _c("created")], "starting"),
    ([_c("running"), _c("running", "unhealthy")], "degraded"),
    ([_c("running"), _c("restarting")], "degraded"),
    ([_c("running"), _c("exited", exit_code=2)], "degraded"),
])
def test_phase(containers: list[Container], expected: str) -> None:
    assert compose.phase(containers) == expected


@pytest.mark.parametrize(("containers", "expected"), [
    ([], "stopped"),
    ([_c("exited"), _c("exited", exit_code=1)], "stopped"),
    ([_c("running", "healthy"), _c("exited")], "healthy"),  # a finished one-shot job
    ([_c("running"), _c("running", "starting")], "degraded"),
    ([_c("running"), _c("restarting")], "degraded"),
    ([_c("running"), _c("running", "unhealthy")], "degraded"),
    ([_c("running"), _c("exited", exit_code=2)], "failed"),  # e.g. migrations failed
    ([_c("running"), _c("dead")], "failed"),
])
def test_health_words_match_the_local_backend(containers: list[Container],
                                              expected: str) -> None:
    """`status` exits with the same codes for a Compose stack as for a local one."""
    from prefectstack.cli.status import HEALTH_EXIT_CODES

    assert compose.health(containers) == expected
    assert expected in HEALTH_EXIT_CODES


def test_without_a_rendered_project_there_is_nothing_to_run(tmp_path: Path) -> None:
    assert compose.project_dir(tmp_path) is None
    assert compose.containers(tmp_path) == []  # docker is not even asked
    assert compose.down(tmp_path, volumes=True) is False
    with pytest.raises(StackError, match="no Compose project"):
        compose.logs(tmp_path, None, 10, False)


# -- the backend record ---------------------------------------------------------------------


def test_no_record_means_the_local_backend(tmp_path: Path) -> None:
    assert backend.read(tmp_path / "missing") == backend.Record(backend.LOCAL)


def test_record_round_trip_and_clear(tmp_path: Path) -> None:
    record = backend.Record(backend.COMPOSE, stack="demo", ui_url="https://localhost:4200")
    backend.write(tmp_path / "state", record)
    assert Layout(tmp_path / "state").backend_file.is_file()
    assert backend.read(tmp_path / "state") == record
    backend.clear(tmp_path / "state")
    backend.clear(tmp_path / "state")  # idempotent
    assert backend.read(tmp_path / "state").backend == backend.LOCAL


@pytest.mark.parametrize("text", ["{", '{"backend": "k8s"}', '{"backend": "local", "x": 1}'])
def test_a_bad_record_is_a_clear_error(tmp_path: Path, text: str) -> None:
    Layout(tmp_path).backend_file.write_text(text)
    with pytest.raises(StackError, match="backend"):
        backend.read(tmp_path)


def test_a_compose_stack_must_be_stopped_before_a_local_start(tmp_path: Path) -> None:
    backend.write(tmp_path, backend.Record(backend.COMPOSE))
    backend.check_can_start(tmp_path, backend.COMPOSE)  # compose updates its project
    with pytest.raises(StackError, match="started with Docker Compose") as caught:
        backend.check_can_start(tmp_path, backend.LOCAL)
    assert caught.value.hint == "stop it first: prefectstack down"


def test_a_running_local_stack_must_be_stopped_before_a_compose_start(tmp_path: Path) -> None:
    backend.check_can_start(tmp_path, backend.COMPOSE)  # nothing runs
    backend.check_can_start(tmp_path, backend.LOCAL)
    lock = state.SupervisorLock(tmp_path)
    assert lock.try_acquire()  # this process plays a running supervisor
    try:
        with pytest.raises(StackError, match="already runs with the local backend"):
            backend.check_can_start(tmp_path, backend.COMPOSE)
        backend.check_can_start(tmp_path, backend.LOCAL)  # the local backend says so itself
    finally:
        lock.release()
