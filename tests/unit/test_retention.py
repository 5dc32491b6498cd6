"""The `retention` section: its defaults and limits, the settings it gives Prefect's vacuum
(read back through Prefect's own settings classes, so a misspelt name, which Prefect would
silently ignore, fails here), and the audit retention it gives the auth service.

That the vacuum then deletes what it should is proven on a real stack
(tests/integration/test_deploy.py::test_the_vacuum_deletes_history_past_its_retention)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from prefectstack import topology
from prefectstack.auth.audit import AuditLog, Record, read, retention_days_from
from prefectstack.stack.data_safety import RetentionConfig
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.topology.service import Service


def stack(**retention: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, "retention": retention})


def role(stack: Stack, name: str) -> Service:
    return next(s for s in topology.build(stack) if s.role == name)


def test_retention_defaults() -> None:
    config = stack().retention
    assert config == RetentionConfig()
    assert (config.flow_runs_days, config.events_days, config.vacuum_interval_seconds,
            config.audit_days) == (30, 7, 3600, 90)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"flow_runs_days": 0}, "flow_runs_days"),
        ({"events_days": 0}, "events_days"),
        ({"vacuum_interval_seconds": 0}, "vacuum_interval_seconds"),
        ({"vacuum_interval_seconds": 86401}, "vacuum_interval_seconds"),
        ({"audit_days": 0}, "audit_days"),
        ({"flow_run_days": 30}, "flow_run_days"),
    ],
)
def test_bad_retention_settings_name_their_path(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        stack(**data)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("retention", field)]


def prefect_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """What Prefect's own settings classes make of `env` (the process's own PREFECT_*
    variables removed first)."""
    from prefect.settings.models.server.events import ServerEventsSettings
    from prefect.settings.models.server.services import ServerServicesDBVacuumSettings

    for name in [n for n in os.environ if n.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServerServicesDBVacuumSettings(), ServerEventsSettings()


def test_prefect_reads_the_retention_the_services_process_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Values unlike Prefect's defaults (flow runs kept forever, 90 days, an hour, 7 days).
    env = role(stack(flow_runs_days=12, events_days=3, vacuum_interval_seconds=45),
               "services").env
    vacuum, events = prefect_settings(dict(env), monkeypatch)
    assert vacuum.enabled_vacuum_types == {"events", "flow_runs", "orphans"}
    assert vacuum.retention_period == timedelta(days=12)
    assert vacuum.loop_seconds == 45
    assert events.retention_period == timedelta(days=3)


def test_flow_runs_kept_forever_leave_only_the_event_vacuum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = role(stack(flow_runs_days=None), "services").env
    assert "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD" not in env
    vacuum, events = prefect_settings(dict(env), monkeypatch)
    assert vacuum.enabled_vacuum_types == {"events"}
    assert vacuum.loop_seconds == 3600
    assert events.retention_period == timedelta(days=7)


def test_every_server_process_gets_the_same_retention() -> None:
    # The vacuum runs in the services process; the API and the migration get the same
    # settings so that no process of the stack disagrees about them.
    built = stack(events_days=2)
    keys = [k for k in role(built, "services").env if "VACUUM" in k or "RETENTION" in k]
    assert len(keys) == 4
    for name in ("api", "migrate"):
        env = role(built, name).env
        assert {k: env[k] for k in keys} == {k: role(built, "services").env[k] for k in keys}


def test_the_auth_service_prunes_its_audit_log_at_the_stack_files_retention(
        tmp_path: Path) -> None:
    env = role(stack(audit_days=10), "auth").env
    days = retention_days_from(env)
    assert days == 10
    path = tmp_path / "audit.log"
    now = datetime(2026, 3, 1, tzinfo=UTC)

    def line(age_days: float) -> Record:
        moment = now - timedelta(days=age_days)
        return Record(time=moment.isoformat(timespec="milliseconds"), identity="ada",
                      role="admin", method="POST", path=f"/api/{age_days}", status=200,
                      client="127.0.0.1")

    writer = AuditLog(path)  # as the CLI writes: no retention
    for age in (30, 11, 9, 1):
        writer.write(line(age))
    AuditLog(path, retention_days=days, clock=now.timestamp)  # the service starting
    assert [r.path for r in read(path)] == ["/api/9", "/api/1"]


def test_without_the_variable_the_auth_service_keeps_90_days() -> None:
    assert retention_days_from({}) == 90
