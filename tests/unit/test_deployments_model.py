"""The deployments-as-code sections of the stack file: shapes, defaults and rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prefectstack.errors import StackError
from prefectstack.stack.deployments import (
    MANAGED_TAG,
    DeploymentConfig,
    ScheduleConfig,
    SecretConfig,
    SourceConfig,
    VariableConfig,
    WorkPoolConfig,
)
from prefectstack.stack.loader import parse_stack
from prefectstack.stack.model import CURRENT_VERSION, Stack


def stack(**data: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **data})


def deployment(**data: Any) -> DeploymentConfig:
    base = {"name": "daily", "entrypoint": "flows/etl.py:etl", "work_pool": "default"}
    return DeploymentConfig.model_validate({**base, **data})


def message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(e["msg"] for e in exc.value.errors())


FULL = """\
version: 1
work_pools:
  - name: docker-pool
    type: docker
    concurrency_limit: 5
    base_job_template: {image: "python:3.11"}
    queues:
      - {name: high, priority: 1, concurrency_limit: 2}
deployments:
  - name: nightly
    entrypoint: flows/etl.py:etl
    source: {git: "https://github.com/org/repo.git", branch: main, credentials: gh-token}
    work_pool: docker-pool
    work_queue: high
    schedules:
      - {cron: "0 2 * * *", timezone: Europe/Berlin}
      - {interval: 3600, anchor_date: "2024-01-01T00:00:00", active: false}
      - {rrule: "FREQ=WEEKLY;BYDAY=MO"}
    parameters: {limit: 10}
    tags: [etl]
    concurrency_limit: 1
    collision_strategy: CANCEL_NEW
    job_variables: {env: {A: "1"}}
concurrency_limits:
  - {name: database, limit: 3}
variables:
  - {name: region, value: eu-west-1}
secrets:
  - {name: gh-token, env: GITHUB_TOKEN}
  - {name: db-password, file: secrets/db.txt}
"""


def test_defaults_are_empty() -> None:
    s = stack()
    assert (s.work_pools, s.deployments, s.concurrency_limits, s.variables, s.secrets) == (
        [], [], [], [], [])


def test_a_full_file_parses() -> None:
    s = parse_stack(FULL, {})
    dep = s.deployments[0]
    assert dep.source.git and dep.source.branch == "main" and dep.source.credentials == "gh-token"
    assert [sch.cron for sch in dep.schedules] == ["0 2 * * *", None, None]
    assert dep.schedules[1].active is False and dep.schedules[1].interval == 3600
    assert s.work_pools[0].queues[0].priority == 1
    assert s.secrets[1].file == "secrets/db.txt"


def test_deployment_defaults() -> None:
    dep = deployment()
    assert dep.source == SourceConfig()
    assert dep.work_queue == "default" and dep.enforce_parameter_schema is True
    assert dep.collision_strategy == "ENQUEUE" and dep.schedules == [] and dep.paused is False


@pytest.mark.parametrize(("source", "expected"), [
    ({"path": ".", "git": "https://x/r.git"}, "either `path` or `git`"),
    ({"branch": "main"}, "only apply to a `git` source"),
    ({"git": "https://x/r.git", "branch": "a", "tag": "b"}, "either `branch` or `tag`"),
    ({"git": "not a url"}, "should match pattern"),
])
def test_source_rules(source: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        SourceConfig.model_validate(source)
    assert expected in message(exc)


@pytest.mark.parametrize(("schedule", "expected"), [
    ({}, "exactly one of"),
    ({"cron": "* * * * *", "interval": 60}, "exactly one of"),
    ({"cron": "* * * * *", "anchor_date": "2024-01-01T00:00:00"}, "only applies to an `interval`"),
    ({"interval": 60, "day_or": False}, "only applies to a `cron`"),
    ({"interval": 0}, "greater than 0"),
])
def test_schedule_rules(schedule: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ScheduleConfig.model_validate(schedule)
    assert expected in message(exc)


def test_entrypoint_must_name_a_python_file_and_function() -> None:
    for bad in ("flows/etl.py", "etl:run", "flows/etl.py:"):
        with pytest.raises(ValidationError):
            deployment(entrypoint=bad)


def test_the_managed_tag_is_reserved() -> None:
    with pytest.raises(ValidationError) as exc:
        deployment(tags=[MANAGED_TAG])
    assert "added by prefectstack" in message(exc)
    with pytest.raises(ValidationError):
        VariableConfig.model_validate({"name": "x", "value": 1, "tags": [MANAGED_TAG]})


def test_collision_strategy_needs_a_limit() -> None:
    with pytest.raises(ValidationError) as exc:
        deployment(collision_strategy="CANCEL_NEW")
    assert "needs a `concurrency_limit`" in message(exc)


def test_pool_names_starting_with_prefect_are_reserved() -> None:
    with pytest.raises(ValidationError) as exc:
        WorkPoolConfig.model_validate({"name": "prefect-pool"})
    assert "reserved" in message(exc)


def test_secret_needs_exactly_one_origin() -> None:
    for data in ({"name": "a"}, {"name": "a", "env": "A", "file": "a.txt"}):
        with pytest.raises(ValidationError):
            SecretConfig.model_validate(data)
    with pytest.raises(ValidationError):
        SecretConfig.model_validate({"name": "Bad_Name", "env": "A"})


def test_names_are_unique_per_section() -> None:
    with pytest.raises(StackError) as exc:
        parse_stack("version: 1\nvariables: [{name: a, value: 1}, {name: a, value: 2}]\n", {})
    assert "variables: variable names must be unique; repeated: a" in exc.value.message
    with pytest.raises(StackError) as exc:
        parse_stack("version: 1\nwork_pools: [{name: p, queues: [{name: q}, {name: q}]}]\n", {})
    assert "work_pools[0].queues: queue names must be unique" in exc.value.message


def test_a_flow_may_not_have_two_deployments_of_one_name() -> None:
    dep = {"name": "d", "entrypoint": "f.py:f", "work_pool": "p"}
    with pytest.raises(StackError) as exc:
        parse_stack(f"version: 1\ndeployments: [{dep}, {dep}]\n".replace("'", '"'), {})
    assert "deployment names must be unique" in exc.value.message
    other = {**dep, "entrypoint": "g.py:g"}
    assert len(parse_stack(f"version: 1\ndeployments: [{dep}, {other}]\n", {}).deployments) == 2


def test_errors_name_the_yaml_path_and_suggest_keys() -> None:
    text = "version: 1\ndeployments:\n  - {name: d, entrypoint: f.py:f, work_pol: p}\n"
    with pytest.raises(StackError) as exc:
        parse_stack(text, {})
    assert "deployments[0].work_pol: unknown key `work_pol`; did you mean `work_pool`?" in (
        exc.value.message)
    assert exc.value.exit_code == 2


def test_values_must_be_json() -> None:
    with pytest.raises(StackError) as exc:
        parse_stack("version: 1\nvariables: [{name: day, value: 2024-01-01}]\n", {})
    assert "variables[0].value: must be plain JSON data" in exc.value.message
    assert parse_stack("version: 1\nvariables: [{name: d, value: '2024-01-01'}]\n", {})
    with pytest.raises(StackError) as exc:
        parse_stack("version: 1\ndeployments: [{name: d, entrypoint: f.py:f, work_pool: p, "
                    "parameters: {when: 2024-01-01T10:00:00}}]\n", {})
    assert "deployments[0].parameters.when: must be plain JSON data" in exc.value.message


def test_models_are_frozen() -> None:
    dep = deployment()
    with pytest.raises(ValidationError):
        dep.name = "other"  # type: ignore[misc]


# Strings Prefect 3.8.8 accepts and refuses, for schedules: checked against Prefect's own
# validators below, so the stack file can never accept what the server would refuse.
CRONS = ["0 9 * * 1-5", "*/15 * * * *", "@daily", "0 0 1 1 *", "0 0 * * * 30",
         "61 * * * *", "not a cron", "", "* * * *", "R * * * *", "H * * * *", "0 25 * * *"]
RRULES = ["FREQ=WEEKLY;BYDAY=MO,WE,FR", "DTSTART:20260101T090000\nRRULE:FREQ=DAILY;COUNT=3",
          "FREQ=SOMETIMES", "FREQ=DAILY;BYDAY=XX", "every tuesday", "", "FREQ=DAILY;COUNT=x"]
TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Mars/Olympus", "europe/berlin", "",
             "CET", "EST5EDT"]


def prefect_accepts(check: Any, value: str) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def ours_accepts(key: str, value: str) -> bool:
    schedule = {key: value} if key != "timezone" else {"interval": 60, "timezone": value}
    try:
        ScheduleConfig.model_validate(schedule)
    except ValidationError as exc:
        assert [e["loc"] for e in exc.errors()] == [(key,)], exc
        return False
    return True


def test_schedules_are_read_as_prefect_reads_them() -> None:
    validators = pytest.importorskip("prefect._internal.schemas.validators")
    cases = [("cron", v, validators.validate_cron_string) for v in CRONS]
    cases += [("rrule", v, validators.validate_rrule_string) for v in RRULES]
    cases += [("timezone", v, validators.default_timezone) for v in TIMEZONES if v]
    disagree = [(key, value) for key, value, check in cases
                if ours_accepts(key, value) != prefect_accepts(check, value)]
    assert not disagree
    assert not ours_accepts("timezone", "")  # Prefect lets "" through as "no time zone"


def test_cron_is_read_by_prefects_own_croniter() -> None:
    # loaded from its file: `import prefect._vendor.croniter` would import all of Prefect
    import inspect
    from pathlib import Path

    from prefectstack.stack import values

    croniter = values._croniter()
    assert Path(inspect.getfile(croniter)).parts[-3:] == ("_vendor", "croniter", "croniter.py")
    assert "prefect" in Path(inspect.getfile(croniter)).parts


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ({"cron": "61 * * * *"}, "`61 * * * *` is not a valid cron expression"),
        ({"cron": "not a cron"}, "its 5 fields are minute (0-59)"),
        ({"interval": 60, "timezone": "Mars/Olympus"}, "`Mars/Olympus` is not an IANA time zone"),
        ({"interval": 60, "timezone": "Europe/Berln"}, "did you mean `Europe/Berlin`?"),
        ({"rrule": "FREQ=SOMETIMES"}, "`FREQ=SOMETIMES` is not a valid iCalendar recurrence"),
    ],
)
def test_schedule_errors_name_the_field(schedule: dict[str, Any], fragment: str) -> None:
    text = (
        "version: 1\ndeployments:\n  - name: d\n    entrypoint: f.py:f\n    work_pool: p\n"
        f"    schedules:\n      - {schedule}\n"
    ).replace("'", '"')
    with pytest.raises(StackError) as info:
        parse_stack(text, {})
    field = next(iter(k for k in schedule if k != "interval"))
    assert f"deployments[0].schedules[0].{field}: " in info.value.message
    assert fragment in info.value.message
