"""The `monitoring` section: its defaults and limits, and what it changes in the topology
(the API processes' metrics endpoint, and nothing else)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from prefectstack import topology
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.stack.monitoring import MonitoringConfig

METRICS = "PREFECT_SERVER_METRICS_ENABLED"
ON = {"enabled": True}


def stack(**data: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **data})


def test_monitoring_is_off_by_default() -> None:
    config = stack().monitoring
    assert config == MonitoringConfig()
    assert not config.enabled
    assert config.scrape_interval_seconds == 60
    assert config.retention_days == 15
    assert config.grafana_port == 3000


def test_monitoring_takes_its_settings() -> None:
    config = stack(monitoring={"enabled": True, "scrape_interval_seconds": 15,
                               "retention_days": 30, "grafana_port": 3300}).monitoring
    assert (config.enabled, config.scrape_interval_seconds, config.retention_days,
            config.grafana_port) == (True, 15, 30, 3300)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scrape_interval_seconds": 14}, "scrape_interval_seconds"),
        ({"scrape_interval_seconds": 301}, "scrape_interval_seconds"),
        ({"retention_days": 0}, "retention_days"),
        ({"grafana_port": 0}, "grafana_port"),
        ({"grafana_port": 65536}, "grafana_port"),
        ({"grafana_prot": 3000}, "grafana_prot"),
    ],
)
def test_bad_monitoring_settings_name_their_path(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        stack(monitoring=data)
    assert [tuple(e["loc"]) for e in info.value.errors()] == [("monitoring", field)]


def test_monitoring_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        stack().monitoring.enabled = True  # type: ignore[misc]


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_api_process_serves_metrics_only_when_enabled(replicas: int) -> None:
    api = {"replicas": replicas}
    for enabled in (False, True):
        services = topology.build(stack(api=api, monitoring={"enabled": enabled}))
        apis = [s for s in services if s.name.startswith("api-")]
        assert len(apis) == replicas
        for svc in apis:
            assert (svc.env.get(METRICS) == "true") is enabled, svc.name
        others = [s for s in services if not s.name.startswith("api-")]
        assert all(METRICS not in s.env for s in others)


def test_monitoring_adds_no_local_service() -> None:
    names = [s.name for s in topology.build(stack())]
    assert [s.name for s in topology.build(stack(monitoring=ON))] == names


def test_the_metrics_setting_is_prefects(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name we set is the one the installed Prefect reads (an unknown PREFECT_* variable
    would be ignored silently and /api/metrics would not exist)."""
    from prefect.settings.models.server.root import ServerSettings

    monkeypatch.setenv(METRICS, "true")
    assert ServerSettings().metrics_enabled is True
    monkeypatch.setenv(METRICS, "false")
    assert ServerSettings().metrics_enabled is False
