"""Prometheus and Grafana in the compose project: present only with `monitoring.enabled`,
scraping every API process over the private network, Grafana on loopback only, the admin
password only in `.env`, and their configuration files where the mounts expect them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefectstack.render import compose
from prefectstack.render.common import Bundle
from prefectstack.stack.model import CURRENT_VERSION, Stack

PROMETHEUS_YML = "monitoring/prometheus/prometheus.yml"
ALERTS_YML = "monitoring/prometheus/alerts.yml"
DATASOURCE_YML = "monitoring/grafana/provisioning/datasources/prometheus.yml"
PROVIDER_YML = "monitoring/grafana/provisioning/dashboards/prefectstack.yml"
DASHBOARD_JSON = "monitoring/grafana/dashboards/prefectstack.json"
MONITORING_FILES = {PROMETHEUS_YML, ALERTS_YML, DATASOURCE_YML, PROVIDER_YML, DASHBOARD_JSON}


def render(**data: Any) -> tuple[Stack, Bundle, dict[str, Any]]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **data})
    secrets = {name: f"fake-{name}-s3cr3t" for name in compose.secret_names(stack)}
    bundle = compose.render(stack, secrets)
    return stack, bundle, yaml.safe_load(bundle.files["docker-compose.yml"])


def monitored(replicas: int = 2, **data: Any) -> tuple[Stack, Bundle, dict[str, Any]]:
    return render(api={"replicas": replicas}, monitoring={"enabled": True}, **data)


def test_nothing_is_added_when_monitoring_is_off() -> None:
    stack, bundle, doc = render(api={"replicas": 2})
    assert not {"prometheus", "grafana"} & set(doc["services"])
    assert not {"prometheus", "grafana"} & set(doc["volumes"])
    assert not any(rel.startswith("monitoring/") for rel in bundle.files)
    assert "grafana_admin_password" not in compose.secret_names(stack)
    assert "GRAFANA" not in bundle.files[".env"] and "Monitoring" not in bundle.files["README.md"]
    for name in ("api", "api-2"):
        assert "PREFECT_SERVER_METRICS_ENABLED" not in doc["services"][name]["environment"]


def test_monitoring_adds_prometheus_grafana_and_their_files() -> None:
    _, bundle, doc = monitored()
    assert {"prometheus", "grafana"} <= set(doc["services"])
    assert {"prometheus", "grafana"} <= set(doc["volumes"])
    assert set(bundle.files) >= MONITORING_FILES
    assert "## Monitoring" in bundle.files["README.md"]
    assert bundle.private == frozenset({".env"})


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_prometheus_scrapes_every_api_replica(replicas: int) -> None:
    """Every API container serves /api/metrics, and Prometheus finds each of them by DNS
    (a scaled service has one name for all its containers)."""
    _, bundle, doc = monitored(replicas)
    services = doc["services"]
    apis = [name for name in ("api", "api-2", "api-3") if name in services]
    assert len(apis) == replicas
    for name in apis:
        assert services[name]["environment"]["PREFECT_SERVER_METRICS_ENABLED"] == "true"
    config = yaml.safe_load(bundle.files[PROMETHEUS_YML])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["prefect-api"]
    assert api["metrics_path"] == "/api/metrics"
    assert api["dns_sd_configs"] == [
        {"names": apis, "type": "A", "port": 4200, "refresh_interval": "30s"}
    ]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:9090"]}]
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_prometheus_is_private_persistent_and_healthy() -> None:
    doc = monitored()[2]
    prometheus = doc["services"]["prometheus"]
    assert "ports" not in prometheus and "expose" not in prometheus
    assert prometheus["networks"] == ["backend"]
    assert doc["networks"]["backend"] == {"internal": True}
    assert prometheus["image"].startswith("prom/prometheus:v")
    assert "prometheus:/prometheus" in prometheus["volumes"]
    assert "./monitoring/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--storage.tsdb.retention.time=15d" in prometheus["command"]
    assert prometheus["healthcheck"]["test"][-1] == "http://127.0.0.1:9090/-/ready"
    assert prometheus["restart"] == "unless-stopped"
    assert prometheus["logging"]["driver"] == "json-file"
    # Monitoring must come up (and alert) when the API does not.
    assert "depends_on" not in prometheus


def test_settings_reach_prometheus() -> None:
    _, bundle, doc = render(monitoring={"enabled": True, "scrape_interval_seconds": 20,
                                        "retention_days": 30})
    assert "--storage.tsdb.retention.time=30d" in doc["services"]["prometheus"]["command"]
    config = yaml.safe_load(bundle.files[PROMETHEUS_YML])
    assert config["global"]["scrape_interval"] == "20s"
    assert config["global"]["evaluation_interval"] == "20s"
    datasource = yaml.safe_load(bundle.files[DATASOURCE_YML])["datasources"][0]
    assert datasource["jsonData"]["timeInterval"] == "20s"


@pytest.mark.parametrize("port", [3000, 3300])
def test_grafana_is_published_on_loopback_only(port: int) -> None:
    _, _, doc = render(monitoring={"enabled": True, "grafana_port": port})
    grafana = doc["services"]["grafana"]
    assert grafana["ports"] == [f"127.0.0.1:{port}:3000"]
    assert grafana["networks"] == ["admin", "backend"]  # not `frontend`, with the workers
    assert grafana["environment"]["GF_SERVER_ROOT_URL"] == f"http://127.0.0.1:{port}/"
    assert grafana["image"].startswith("grafana/grafana:1")
    assert grafana["healthcheck"]["test"][-1] == "http://127.0.0.1:3000/api/health"
    assert grafana["restart"] == "unless-stopped"
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert "grafana:/var/lib/grafana" in grafana["volumes"]


def test_grafanas_password_comes_only_from_env() -> None:
    stack, bundle, doc = monitored()
    assert "grafana_admin_password" in compose.secret_names(stack)
    env = doc["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?missing from .env}"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    value = "fake-grafana_admin_password-s3cr3t"
    assert f"GRAFANA_ADMIN_PASSWORD={value}" in bundle.files[".env"].splitlines()
    leaked = [rel for rel, text in bundle.files.items() if value in text and rel != ".env"]
    assert leaked == []


def test_grafana_mounts_point_at_rendered_files() -> None:
    """Each read-only mount of the monitoring services is a rendered directory."""
    _, bundle, doc = monitored()
    for name in ("prometheus", "grafana"):
        for volume in doc["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert volume.endswith(":ro"), volume
                folder = source.removeprefix("./") + "/"
                assert any(rel.startswith(folder) for rel in bundle.files), volume


def test_grafana_is_provisioned_with_the_datasource_and_dashboard() -> None:
    _, bundle, _ = monitored()
    datasource = yaml.safe_load(bundle.files[DATASOURCE_YML])["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    provider = yaml.safe_load(bundle.files[PROVIDER_YML])["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = json.loads(bundle.files[DASHBOARD_JSON])
    assert dashboard["uid"] == "prefectstack"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert any('up{job="prefect-api"}' in e for e in exprs)
    assert any("process_cpu_seconds_total" in e for e in exprs)
    assert any("scrape_duration_seconds" in e for e in exprs)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_alert_rules_cover_a_down_api() -> None:
    _, bundle, _ = monitored(2)
    rules = yaml.safe_load(bundle.files[ALERTS_YML])["groups"][0]["rules"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert by_name["PrefectApiTargetDown"]["expr"] == 'up{job="prefect-api"} == 0'
    unavailable = by_name["PrefectApiUnavailable"]
    assert unavailable["expr"] == 'absent(up{job="prefect-api"} == 1)'
    assert unavailable["for"] == "2m" and unavailable["labels"]["severity"] == "critical"
    assert by_name["PrefectApiReplicasMissing"]["expr"].endswith("< 2")
    for rule in rules:
        assert rule["annotations"]["summary"], rule["alert"]
    single = yaml.safe_load(monitored(1)[1].files[ALERTS_YML])["groups"][0]["rules"]
    assert "PrefectApiReplicasMissing" not in {rule["alert"] for rule in single}


def test_grafana_port_may_not_clash_with_a_published_port() -> None:
    with pytest.raises(ValueError, match=r"edge\.https_port"):
        render(monitoring={"enabled": True, "grafana_port": 4200})
    with pytest.raises(ValueError, match=r"api\.port"):
        render(edge={"enabled": False}, monitoring={"enabled": True, "grafana_port": 14200})
    with pytest.raises(ValueError, match="pgAdmin"):
        render(monitoring={"enabled": True, "grafana_port": 5050})


def test_workers_may_not_take_the_monitoring_names_when_enabled() -> None:
    workers = [{"name": "grafana", "pool": "default"}]
    render(workers=workers)  # free while monitoring is off
    with pytest.raises(ValueError, match="grafana"):
        render(workers=workers, monitoring={"enabled": True})


def test_monitored_project_validates(
    tmp_path: Path, tool_accepts: Callable[..., None]
) -> None:
    file = tmp_path / "docker-compose.yml"
    file.write_text(monitored(3)[1].files["docker-compose.yml"])
    tool_accepts("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(file))


def test_monitoring_files_are_deterministic() -> None:
    first, second = monitored()[1], monitored()[1]
    for rel in MONITORING_FILES:
        assert first.files[rel] == second.files[rel]


def test_postgres_and_redis_exporters_and_alertmanager() -> None:
    """issue 13, item 16: monitoring covered the API processes only."""
    _, bundle, doc = monitored()
    services = doc["services"]
    pg = services["postgres-exporter"]
    assert pg["networks"] == ["backend"] and "ports" not in pg
    assert pg["environment"]["DATA_SOURCE_NAME"] == (
        "postgresql://prefect:${POSTGRES_PASSWORD:?missing from .env}@postgres:5432/prefect"
        "?sslmode=disable")
    redis = services["redis-exporter"]
    assert redis["networks"] == ["backend"] and "ports" not in redis
    assert redis["environment"] == {"REDIS_ADDR": "redis://redis:6379",
                                    "REDIS_PASSWORD": "${REDIS_PASSWORD:?missing from .env}"}
    alertmanager = services["alertmanager"]
    assert alertmanager["ports"] == ["127.0.0.1:9093:9093"]
    assert "frontend" not in alertmanager["networks"]
    config = yaml.safe_load(bundle.files[PROMETHEUS_YML])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["postgres"]["static_configs"] == [{"targets": ["postgres-exporter:9187"]}]
    assert jobs["redis"]["static_configs"] == [{"targets": ["redis-exporter:9121"]}]
    assert config["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    rules = {r["alert"]: r for r in yaml.safe_load(bundle.files[ALERTS_YML])["groups"][0]["rules"]}
    assert rules["PostgresDown"]["expr"] == "pg_up == 0"
    assert rules["RedisDown"]["expr"] == "redis_up == 0"
    # the receivers are the user's: written once, never overwritten
    assert "monitoring/alertmanager/alertmanager.yml" in bundle.seeds
    assert "monitoring/alertmanager/alertmanager.yml" not in bundle.files


def test_an_external_redis_gets_no_exporter_and_grafana_may_not_take_9093() -> None:
    doc = monitored(1, redis={"mode": "external", "url": "redis://:pw@cache:6379"})[2]
    assert "redis-exporter" not in doc["services"]
    with pytest.raises(ValueError, match="Alertmanager"):
        render(monitoring={"enabled": True, "grafana_port": 9093})
