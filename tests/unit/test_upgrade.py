"""`upgrade`'s pure parts (the plan, the downgrade refusal), the control requests a running
supervisor serves, and the command's answer for a stack that is not running. The rolling
upgrade itself, with real processes: test_promises_two_apis.py (the upgrade drill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefectstack import topology
from prefectstack.errors import StackError
from prefectstack.runtime import backup, control, state, upgrade
from prefectstack.stack.model import Stack
from prefectstack.topology.caddyfile import _proxy

WORKERS = [{"name": "w1", "pool": "p1"}, {"name": "w2", "pool": "p2"}]


def stack(replicas: int) -> Stack:
    return Stack.model_validate({"version": 1, "name": "t", "api": {"replicas": replicas},
                                 "workers": WORKERS})


def names(steps: list[upgrade.Step]) -> list[tuple[str, str]]:
    return [(s.action, s.unit) for s in steps]


def test_plan_backs_up_migrates_then_rolls_apis_services_and_workers_in_order() -> None:
    services = topology.build(stack(2))
    steps = upgrade.steps(services, [s.name for s in services])
    assert names(steps) == [("backup", ""), ("migrate", "migrate"), ("restart", "api-1"),
                            ("restart", "api-2"), ("restart", "services"), ("drain", "w1"),
                            ("drain", "w2")]
    assert not any("only one" in s.note for s in steps)


def test_plan_says_a_single_api_is_unavailable_while_it_restarts() -> None:
    services = topology.build(stack(1))
    steps = upgrade.steps(services, [s.name for s in services])
    api = next(s for s in steps if s.unit == "api-1")
    assert "unavailable" in api.note


def test_plan_leaves_out_units_that_do_not_run() -> None:
    services = topology.build(stack(2))
    running = [s.name for s in services if s.name not in ("w2", "services")]
    assert ("drain", "w2") not in names(upgrade.steps(services, running))
    assert ("restart", "services") not in names(upgrade.steps(services, running))


def test_a_database_migrated_by_a_newer_prefect_is_refused() -> None:
    known, head = backup.known_revisions()
    upgrade.check_revision(head, known, "3.8.8")  # the installed head: fine
    with pytest.raises(StackError) as refused:
        upgrade.check_revision("ffffffffffff", known, "3.8.8")
    assert "ffffffffffff" in str(refused.value) and "newer Prefect" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert refused.value.hint and "restore" in refused.value.hint


def test_the_edge_recheck_covers_the_edges_health_check() -> None:
    """The wait after an API restart is the edge's health interval plus its timeout."""
    text = _proxy(["127.0.0.1:1"])
    assert f"health_interval {upgrade.EDGE_HEALTH_INTERVAL_SECONDS:g}s" in text
    assert f"health_timeout {upgrade.EDGE_HEALTH_TIMEOUT_SECONDS:g}s" in text
    assert upgrade.EDGE_RECHECK_SECONDS > (upgrade.EDGE_HEALTH_INTERVAL_SECONDS
                                           + upgrade.EDGE_HEALTH_TIMEOUT_SECONDS)


# -- control requests ----------------------------------------------------------------------------


def request(where: Path, name: str, body: object) -> Path:
    path = where / f"{name}{control.REQUEST_SUFFIX}"
    path.write_text(json.dumps(body))
    return path


def test_supervisor_serves_a_restart_request_once_and_answers_it(tmp_path: Path) -> None:
    control.open_for_requests(tmp_path, os.getpid())
    where = control.control_dir(tmp_path)
    assert where.stat().st_mode & 0o777 == 0o700
    asked: list[str] = []

    def restart(unit: str) -> str | None:
        asked.append(unit)
        return None if unit == "api-1" else f"no unit named {unit!r}"

    request(where, "a", {"action": "restart", "unit": "api-1"})
    request(where, "b", {"action": "restart", "unit": "nope"})
    request(where, "c", {"action": "delete-everything", "unit": "api-1"})
    control.serve(tmp_path, restart)
    assert asked == ["api-1", "nope"]
    answers = {p.name: json.loads(p.read_text()) for p in where.glob("*.answer")}
    assert answers["a.answer"]["ok"] is True
    assert answers["b.answer"] == {"ok": False, "message": "no unit named 'nope'"}
    assert answers["c.answer"]["ok"] is False
    assert not list(where.glob("*.request")), "each request is taken once"
    control.serve(tmp_path, restart)
    assert asked == ["api-1", "nope"]


def test_supervisor_ignores_a_request_that_is_a_symlink(tmp_path: Path) -> None:
    control.open_for_requests(tmp_path, os.getpid())
    where = control.control_dir(tmp_path)
    target = request(tmp_path, "elsewhere", {"action": "restart", "unit": "api-1"})
    (where / f"x{control.REQUEST_SUFFIX}").symlink_to(target)
    asked: list[str] = []

    def restart(unit: str) -> str | None:
        asked.append(unit)
        return None

    control.serve(tmp_path, restart)
    assert asked == [] and target.exists()


def test_asking_a_supervisor_that_does_not_serve_requests_is_refused(tmp_path: Path) -> None:
    """SIGUSR1 would end a supervisor of an older version: it is never sent to one."""
    lock = state.SupervisorLock(tmp_path)
    assert lock.try_acquire()
    try:
        me = os.getpid()
        import psutil

        state.write(tmp_path, state.StackState("t", "", me, psutil.Process(me).create_time(),
                                               "ready"))
        with pytest.raises(StackError, match="older prefectstack"):
            control.ask_restart(tmp_path, "api-1")
    finally:
        lock.release()


def test_asking_a_stack_that_is_not_running_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="not running"):
        control.ask_restart(tmp_path, "api-1")


def test_upgrade_of_a_stack_that_is_not_running_says_so(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("version: 1\nname: idle\nstate_dir: state\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    result = subprocess.run([sys.executable, "-m", "prefectstack", "upgrade", "--yes"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 3, result.stderr
    assert "is not running" in result.stderr and "prefectstack up --detach" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_api_process_is_drained_first_only_when_another_takes_its_requests() -> None:
    from prefectstack.runtime.upgrade import drains_first
    from prefectstack.stack.model import CURRENT_VERSION, Stack

    def stack(replicas: int) -> Stack:
        return Stack.model_validate({"version": CURRENT_VERSION, "api": {"replicas": replicas}})

    assert not drains_first(stack(1))  # draining would only lengthen the outage
    assert drains_first(stack(2)) and drains_first(stack(3))
