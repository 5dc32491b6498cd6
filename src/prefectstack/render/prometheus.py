"""Prometheus's scrape configuration and alert rules for a stack, as Python data.

What Prefect 3.8.8 serves at `/api/metrics` (with `PREFECT_SERVER_METRICS_ENABLED`) is the
prometheus_client default registry: process metrics (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`), Python GC
metrics and a few Prefect counters (worker channel, event and log websockets). It has no
HTTP request counters or latency histograms, so the rules stand on `up` and the process
metrics; there is no 5xx-rate rule because there is no metric to base it on.

Pure: nothing here touches the disk, the network or processes.
"""

from __future__ import annotations

from typing import Any

from prefectstack.stack.model import Stack
from prefectstack.topology.stack_secrets import API_USER

PORT = 9090
CONFIG_DIR = "/etc/prometheus"
DATA_DIR = "/prometheus"
CONFIG_FILE = "prometheus.yml"
RULES_FILE = "alerts.yml"
API_JOB = "prefect-api"
METRICS_PATH = "/api/metrics"
# The API answers only with its server auth string (Prefect's own basic auth): Prometheus
# reads the password from a compose secret, never from this file.
API_PASSWORD_FILE = "/run/secrets/api_password"
# How often the DNS lookup runs that finds API containers (scaled ones share a name).
DNS_REFRESH = "30s"


ALERTMANAGER_PORT = 9093


def config(stack: Stack, api_hosts: list[str], api_port: int, *,
           exporters: dict[str, str] | None = None,
           alertmanager: str | None = None) -> dict[str, Any]:
    """Scrape every API process, the `exporters` (job name -> `host:port`: PostgreSQL's and
    Redis's) and Prometheus itself; send alerts to `alertmanager` (`host:port`).

    `api_hosts` are names that resolve to API containers (compose: one service per API
    process). The targets come from DNS, one per A record, so a service scaled by hand
    (`docker compose up --scale`) is scraped in every container too.
    """
    interval = f"{stack.monitoring.scrape_interval_seconds}s"
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": {"stack": stack.name},
        },
        "rule_files": [f"{CONFIG_DIR}/{RULES_FILE}"],
        "scrape_configs": [
            {
                "job_name": API_JOB,
                "metrics_path": METRICS_PATH,
                "basic_auth": {"username": API_USER, "password_file": API_PASSWORD_FILE},
                "dns_sd_configs": [{
                    "names": list(api_hosts),
                    "type": "A",
                    "port": api_port,
                    "refresh_interval": DNS_REFRESH,
                }],
                # Which compose service a target belongs to (`api`, `api-2`, ...).
                "relabel_configs": [{"source_labels": ["__meta_dns_name"],
                                     "target_label": "service"}],
            },
            *({"job_name": job, "static_configs": [{"targets": [target]}]}
              for job, target in (exporters or {}).items()),
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{PORT}"]}]},
        ],
    } | ({"alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}}
         if alertmanager else {})


def alert_rules(stack: Stack, exporters: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rules Prometheus evaluates (firing ones go to Alertmanager, and show in Prometheus
    and on the Grafana dashboard). `exporters`: the exporter jobs scraped (`postgres`,
    `redis`): each gets a rule for its server being down."""
    up = f'up{{job="{API_JOB}"}}'
    replicas = stack.api.replicas
    rules = [
        _rule("PrefectApiTargetDown", f"{up} == 0", "1m", "warning",
              "An API process does not answer its metrics endpoint",
              "{{ $labels.instance }} ({{ $labels.service }}) has failed its scrapes for "
              "a minute."),
        _rule("PrefectApiUnavailable", f"absent({up} == 1)", "2m", "critical",
              "No API process is healthy",
              "Prometheus has reached no API process for two minutes: the UI and every "
              "client of the stack are down."),
        _rule("PrefectApiRestarting",
              f'changes(process_start_time_seconds{{job="{API_JOB}"}}[15m]) > 2', "0m",
              "warning", "An API process keeps restarting",
              "{{ $labels.instance }} restarted more than twice in 15 minutes; see the "
              "logs of {{ $labels.service }}."),
        _rule("PrometheusRuleFailures",
              "increase(prometheus_rule_evaluation_failures_total[10m]) > 0", "0m", "warning",
              "Prometheus fails to evaluate alert rules",
              "Some alert rules cannot be evaluated, so their alerts cannot fire."),
    ]
    servers = {"postgres": ("PostgresDown", "pg_up == 0", "PostgreSQL does not answer"),
               "redis": ("RedisDown", "redis_up == 0", "Redis does not answer")}
    for job in exporters:
        name, expr, summary = servers[job]
        rules.append(_rule(name, expr, "1m", "critical", summary,
                           f"The {job} exporter has not reached the server for a minute: "
                           "the API processes fail with it."))
        rules.append(_rule(f"{name[:-4]}ExporterDown", f'up{{job="{job}"}} == 0', "5m",
                           "warning", f"The {job} exporter does not answer",
                           f"Prometheus has not scraped the {job} exporter for five minutes."))
    if replicas > 1:
        rules.insert(2, _rule(
            "PrefectApiReplicasMissing", f"count({up} == 1) < {replicas}", "5m", "warning",
            "Fewer healthy API processes than configured",
            f"{{{{ $value }}}} of {replicas} API processes have answered for five minutes.",
        ))
    return {"groups": [{"name": "prefectstack", "rules": rules}]}


def _rule(name: str, expr: str, duration: str, severity: str, summary: str,
          description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if duration != "0m":
        rule["for"] = duration
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule
