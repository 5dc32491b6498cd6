"""`service_health`: which loops of `prefect server services start` keep failing.

The log excerpts below are real output, not typed by hand: a script called Prefect's
`setup_logging()` (the `standard` formatter the services process uses), started a docket
`Worker` on a `memory://` docket and let it run tasks that raise, with stderr sent to a
file as the supervisor does. Only the clock times are moved by the tests that need it.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.runtime import state
from prefectstack.runtime.service_health import (
    TAIL_BYTES,
    ServicesHealth,
    assess,
    read_tail,
)

# A perpetual `schedule_deployments` that raises SQLAlchemy's InvalidRequestError on every
# loop (logged by docket's Perpetual handler, `docket.dependencies`), and one failure of a
# plain docket task (`docket.worker`), as `mark_flow_run_late` would log it.
FAILING_SCHEDULER = """\
13:31:34.841 | ERROR   | docket.worker - ↩ [     0ms] mark_flow_run_late(...){late-1}
Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/worker.py", line 1134, in _execute
    result = await execution.function(
             ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/tmp/svchealth/produce.py", line 37, in mark_flow_run_late
    raise RuntimeError("database is gone")
RuntimeError: database is gone
13:31:34.862 | ERROR   | docket.dependencies - ↩ [     3ms] schedule_deployments(){schedule_deployments}
Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 1054, in _do_pre_synchronize_evaluate
    eval_condition = cls._eval_condition_from_statement(
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 985, in _eval_condition_from_statement
    eval_condition = evaluator_compiler.process(*crit)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 73, in process
    return meth(clause)
           ^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 168, in visit_binary
    return meth(clause.operator, eval_left, eval_right, clause)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 228, in visit_custom_op_binary_op
    raise UnevaluatableError(
sqlalchemy.orm.evaluator.UnevaluatableError: Custom operator '~' can't be evaluated in Python unless it specifies a callable using `.python_impl`.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/worker.py", line 1134, in _execute
    result = await execution.function(
             ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/tmp/svchealth/produce.py", line 30, in schedule_deployments
    session.execute(
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/session.py", line 2373, in execute
    return self._execute_internal(
           ^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/session.py", line 2250, in _execute_internal
    ) = compile_state_cls.orm_pre_session_exec(
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 753, in orm_pre_session_exec
    update_options = cls._do_pre_synchronize_evaluate(
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 1059, in _do_pre_synchronize_evaluate
    raise sa_exc.InvalidRequestError(
sqlalchemy.exc.InvalidRequestError: Could not evaluate current criteria in Python: "Custom operator '~' can't be evaluated in Python unless it specifies a callable using `.python_impl`.". Specify 'fetch' or False for the synchronize_session execution option.
13:31:35.096 | WARNING | docket.docket - 'schedule_deployments' is stricken, skipping schedule of 'schedule_deployments'
13:31:35.098 | ERROR   | docket.dependencies - ↩ [     2ms] schedule_deployments(){schedule_deployments}
Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 1054, in _do_pre_synchronize_evaluate
    eval_condition = cls._eval_condition_from_statement(
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 985, in _eval_condition_from_statement
    eval_condition = evaluator_compiler.process(*crit)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 73, in process
    return meth(clause)
           ^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 168, in visit_binary
    return meth(clause.operator, eval_left, eval_right, clause)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/evaluator.py", line 228, in visit_custom_op_binary_op
    raise UnevaluatableError(
sqlalchemy.orm.evaluator.UnevaluatableError: Custom operator '~' can't be evaluated in Python unless it specifies a callable using `.python_impl`.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/worker.py", line 1134, in _execute
    result = await execution.function(
             ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/tmp/svchealth/produce.py", line 30, in schedule_deployments
    session.execute(
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/session.py", line 2373, in execute
    return self._execute_internal(
           ^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/session.py", line 2250, in _execute_internal
    ) = compile_state_cls.orm_pre_session_exec(
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 753, in orm_pre_session_exec
    update_options = cls._do_pre_synchronize_evaluate(
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/sqlalchemy/orm/bulk_persistence.py", line 1059, in _do_pre_synchronize_evaluate
    raise sa_exc.InvalidRequestError(
sqlalchemy.exc.InvalidRequestError: Could not evaluate current criteria in Python: "Custom operator '~' can't be evaluated in Python unless it specifies a callable using `.python_impl`.". Specify 'fetch' or False for the synchronize_session execution option.
"""  # noqa: E501

# A perpetual service that succeeds (PREFECT_SERVER_LOGGING_LEVEL=INFO), and docket's
# harmless warning when the worker stops.
HEALTHY = """\
13:34:06.499 | INFO    | prefect.server.services.late_runs - Finished monitoring for late runs.
13:34:06.750 | INFO    | prefect.server.services.late_runs - Finished monitoring for late runs.
13:34:07.003 | INFO    | prefect.server.services.late_runs - Finished monitoring for late runs.
13:34:07.004 | WARNING | docket.docket - 'mark_late_runs' is stricken, skipping schedule of 'mark_late_runs'
"""  # noqa: E501

# A `Service`-style loop logging its errors under `prefect.server.events.services.*`.
FAILING_SERVICE_LOOP = """\
13:34:12.109 | ERROR   | prefect.server.events.services.event_persister - Error trimming events and resources
Traceback (most recent call last):
  File "/tmp/svchealth/produce2.py", line 43, in main
    raise OSError("disk full")
OSError: disk full
13:34:12.121 | ERROR   | prefect.server.events.services.event_persister - Error trimming events and resources
Traceback (most recent call last):
  File "/tmp/svchealth/produce2.py", line 43, in main
    raise OSError("disk full")
OSError: disk full
"""  # noqa: E501

# A perpetual task whose dependency raises: docket wraps it in an ExceptionGroup.
FAILING_DEPENDENCY = """\
13:34:01.398 | ERROR   | docket.dependencies - ↩ [     1ms] foreman(){foreman}
  + Exception Group Traceback (most recent call last):
  |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/worker.py", line 1101, in _execute
  |     raise ExceptionGroup(
  | ExceptionGroup: Failed to resolve dependencies for parameter(s): db (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/dependencies/_resolution.py", line 232, in resolved_dependencies
    |     arguments[parameter] = await frame.resolve(parameter)
    |                            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/frames.py", line 88, in resolve
    |     value = await _stack.get().enter_async_context(dependency)
    |             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 650, in enter_async_context
    |     result = await _enter(cm)
    |              ^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/functional.py", line 121, in __aenter__
    |     resolved_value = await self._resolve_factory_value(stack, raw_value)
    |                      ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/functional.py", line 54, in _resolve_factory_value
    |     return await cast(Awaitable[R], raw_value)
    |            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/tmp/svchealth/produce2.py", line 18, in broken_db
    |     raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    | ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)
    +------------------------------------
13:34:01.648 | WARNING | docket.docket - 'foreman' is stricken, skipping schedule of 'foreman'
13:34:01.649 | ERROR   | docket.dependencies - ↩ [     0ms] foreman(){foreman}
  + Exception Group Traceback (most recent call last):
  |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/worker.py", line 1101, in _execute
  |     raise ExceptionGroup(
  | ExceptionGroup: Failed to resolve dependencies for parameter(s): db (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/docket/dependencies/_resolution.py", line 232, in resolved_dependencies
    |     arguments[parameter] = await frame.resolve(parameter)
    |                            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/frames.py", line 88, in resolve
    |     value = await _stack.get().enter_async_context(dependency)
    |             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 650, in enter_async_context
    |     result = await _enter(cm)
    |              ^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/functional.py", line 121, in __aenter__
    |     resolved_value = await self._resolve_factory_value(stack, raw_value)
    |                      ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/uncalled_for/functional.py", line 54, in _resolve_factory_value
    |     return await cast(Awaitable[R], raw_value)
    |            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    |   File "/tmp/svchealth/produce2.py", line 18, in broken_db
    |     raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    | ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)
    +------------------------------------
"""  # noqa: E501

_CLOCK = re.compile(r"^(\d{2}:\d{2}:\d{2}\.\d{3})(?= \| )", re.MULTILINE)
_RECORD_START = re.compile(r"^(?=\d{2}:\d{2}:\d{2}\.\d{3} \| )", re.MULTILINE)
DAY = datetime(2024, 5, 1)


def retimed(log: str, last: datetime) -> str:
    """The log with its clock times moved so its last record is at `last`, gaps kept."""
    clocks = [datetime.strptime(c, "%H:%M:%S.%f") for c in _CLOCK.findall(log)]
    shift = last - datetime.combine(last.date(), clocks[-1].time())

    def move(match: re.Match[str]) -> str:
        moved = datetime.strptime(match[1], "%H:%M:%S.%f").replace(
            year=last.year, month=last.month, day=last.day
        ) + shift
        return moved.strftime("%H:%M:%S.%f")[:-3]

    return _CLOCK.sub(move, log)


def records(log: str) -> list[str]:
    """The log cut into its records, each with its traceback."""
    return [r for r in _RECORD_START.split(log) if r]


def at(clock: str) -> datetime:
    return datetime.combine(DAY, datetime.strptime(clock, "%H:%M:%S").time())


# -- assess ---------------------------------------------------------------------------------


def test_a_perpetual_service_failing_every_loop_is_reported() -> None:
    health = assess(FAILING_SCHEDULER, at("13:32:00"))
    assert health.failing == ("schedule_deployments",)  # mark_flow_run_late failed only once
    assert health.degraded
    assert health.last_error.startswith(
        "InvalidRequestError: Could not evaluate current criteria in Python: "
    )
    assert len(health.last_error) <= 200
    assert health.describe().startswith("failing: schedule_deployments (InvalidRequestError: ")


def test_a_plain_docket_task_failing_twice_is_reported() -> None:
    record = records(FAILING_SCHEDULER)[0]  # the `docket.worker` one
    health = assess(record + record, at("13:32:00"))
    assert health == ServicesHealth(("mark_flow_run_late",), "RuntimeError: database is gone")


def test_a_healthy_log_is_healthy() -> None:
    log = "--- prefectstack: starting services at 2024-05-01 13:33:20 ---\n\n" + (
        "Starting services... Press CTRL+C to stop\n\n" + HEALTHY
    )
    health = assess(log, at("13:35:00"))
    assert health == ServicesHealth()
    assert not health.degraded
    assert health.describe() == ""
    assert assess("", at("13:35:00")) == ServicesHealth()


def test_a_service_loop_logging_under_prefect_server_is_reported() -> None:
    health = assess(FAILING_SERVICE_LOOP, at("13:35:00"))
    assert health == ServicesHealth(("event_persister",), "OSError: disk full")


def test_an_exception_group_reports_the_error_inside_it() -> None:
    health = assess(FAILING_DEPENDENCY, at("13:35:00"))
    assert health.failing == ("foreman",)
    assert health.last_error == (
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )


def test_the_docket_worker_failing_its_own_loop_is_reported() -> None:
    # built by hand from worker.py's `logger.exception("Error in scheduler loop")`: when it
    # fails, no perpetual service runs and none of them logs a failure of its own
    record = (
        "13:33:{s}.000 | ERROR   | docket.worker - Error in scheduler loop\n"
        "Traceback (most recent call last):\n"
        '  File "docket/worker.py", line 893, in _scheduler_loop\n'
        "redis.exceptions.ConnectionError: Error 111 connecting to localhost:6379.\n"
    )
    health = assess(record.format(s="10") + record.format(s="20"), at("13:35:00"))
    assert health == ServicesHealth(
        ("docket.worker",), "ConnectionError: Error 111 connecting to localhost:6379."
    )


def test_failures_older_than_the_window_are_forgotten() -> None:
    assert not assess(FAILING_SCHEDULER, at("13:42:00")).degraded
    assert assess(FAILING_SCHEDULER, at("13:42:00"), window=timedelta(minutes=11)).degraded


def test_one_failure_inside_the_window_and_one_before_it_is_not_a_pattern() -> None:
    one_failure = records(FAILING_SERVICE_LOOP)[0]
    log = retimed(one_failure, at("13:20:00")) + retimed(one_failure, at("13:33:00"))
    assert log.count("| ERROR") == 2
    assert not assess(log, at("13:35:00")).degraded


def test_failures_before_the_last_restart_belong_to_a_process_that_is_gone() -> None:
    log = FAILING_SCHEDULER + "--- prefectstack: starting services at 2024-05-01 13:31:40 ---\n"
    assert not assess(log, at("13:32:00")).degraded


def test_a_log_running_across_midnight_is_dated_backwards_from_now() -> None:
    # the two scheduler failures fall at 23:59:59.864 and 00:00:00.100
    log = retimed(FAILING_SCHEDULER, datetime(2024, 5, 2, 0, 0, 0, 100_000))
    assert "23:59:59.864 | ERROR" in log
    assert assess(log, datetime(2024, 5, 2, 0, 5)).failing == ("schedule_deployments",)


def test_a_clock_later_than_now_is_yesterday() -> None:
    # 13:31 read at 13:30 is nearly a day old, not a minute in the future
    assert not assess(FAILING_SCHEDULER, at("13:30:00")).degraded


def test_colour_codes_do_not_hide_a_failure() -> None:
    coloured = FAILING_SERVICE_LOOP.replace("| ERROR   |", "| \x1b[31mERROR\x1b[0m   |")
    assert assess(coloured, at("13:35:00")).failing == ("event_persister",)


# -- read_tail ------------------------------------------------------------------------------


def test_read_tail_reads_whole_lines_from_the_end_only(tmp_path: Path) -> None:
    log = tmp_path / "services.log"
    filler = "13:00:00.000 | INFO    | prefect.server - " + "x" * 60 + "\n"
    log.write_text(filler * (2 * TAIL_BYTES // len(filler)) + FAILING_SCHEDULER)
    tail = read_tail(log, datetime.now())
    assert len(tail.encode()) <= TAIL_BYTES
    assert tail.startswith("13:00:00.000 | INFO")
    assert tail.endswith(FAILING_SCHEDULER)


def test_read_tail_of_a_missing_or_quiet_log_is_empty(tmp_path: Path) -> None:
    log = tmp_path / "services.log"
    assert read_tail(log, datetime.now()) == ""
    log.write_text(FAILING_SCHEDULER)
    quiet_since = (datetime.now() - timedelta(minutes=30)).timestamp()
    os.utime(log, (quiet_since, quiet_since))
    assert read_tail(log, datetime.now()) == ""


# -- `prefectstack status` ------------------------------------------------------------------


def _running_stack(tmp_path: Path, services_log: str) -> Path:
    """A state dir as a live supervisor leaves it: this test process plays every service."""
    (tmp_path / "stack.yaml").write_text("version: 1\nstate_dir: st\n")
    state_dir = tmp_path / "st"
    (state_dir / "logs").mkdir(parents=True)
    (state_dir / "logs" / "services.log").write_text(services_log)
    me = psutil.Process()
    services = [
        state.ServiceState(name=name, kind="daemon", state="ready", pid=me.pid,
                           pid_started=me.create_time(), started_at=me.create_time(),
                           healthy=True)
        for name in ("api", "services")
    ]
    state.write(state_dir, state.StackState(
        stack="demo", source=str(tmp_path / "stack.yaml"), supervisor_pid=me.pid,
        supervisor_started=me.create_time(), phase="ready", services=services,
    ))
    return state_dir


def _status(tmp_path: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["status", "-f", str(tmp_path / "stack.yaml"), *args])
    assert result.exit_code in (0, 4, 6), result.output  # healthy, degraded, stale
    return result.stdout


def test_status_reports_a_degraded_services_process(tmp_path: Path) -> None:
    log = retimed(FAILING_SCHEDULER, datetime.now() - timedelta(seconds=2))
    lock = state.SupervisorLock(_running_stack(tmp_path, log))
    assert lock.try_acquire()  # the supervisor is alive while someone holds its lock
    try:
        data = json.loads(_status(tmp_path, "--json"))
        text = _status(tmp_path)
    finally:
        lock.release()
    api, services = data["services"]
    assert (api["degraded"], api["detail"]) == (False, "")
    assert services["degraded"] is True
    assert services["detail"].startswith("failing: schedule_deployments (InvalidRequestError: ")
    assert services["healthy"] is True  # the probe's verdict is kept; `degraded` adds to it
    assert re.search(r"^services\s.*\bdegraded$", text, re.MULTILINE)
    assert re.search(r"^api\s.*\bhealthy$", text, re.MULTILINE)
    assert "  services: failing: schedule_deployments (InvalidRequestError: " in text


def test_status_of_a_healthy_or_stale_stack_is_not_degraded(tmp_path: Path) -> None:
    state_dir = _running_stack(tmp_path, retimed(HEALTHY, datetime.now()))
    lock = state.SupervisorLock(state_dir)
    assert lock.try_acquire()
    try:
        healthy = json.loads(_status(tmp_path, "--json"))
    finally:
        lock.release()
    failing = retimed(FAILING_SCHEDULER, datetime.now())
    (state_dir / "logs" / "services.log").write_text(failing)
    stale = json.loads(_status(tmp_path, "--json"))  # nobody holds the lock: no supervisor
    for data in (healthy, stale):
        assert [(s["degraded"], s["detail"]) for s in data["services"]] == [(False, "")] * 2
    assert stale["stale"] is True
