"""Grafana's provisioning (the Prometheus datasource, a dashboard provider) and the stack's
dashboard, as Python data.

The dashboard shows what Prefect's `/api/metrics` has (see render/prometheus.py): whether
each API process answers, its CPU, memory and file descriptors, restarts, firing alerts and
Prometheus's own scrape health. Prefect 3.8.8 exports no request rate or latency.

Pure: nothing here touches the disk, the network or processes.
"""

from __future__ import annotations

from typing import Any

from prefectstack.render import prometheus
from prefectstack.stack.model import Stack

PORT = 3000
DATA_DIR = "/var/lib/grafana"
PROVISIONING_DIR = "/etc/grafana/provisioning"
DASHBOARDS_DIR = "/etc/grafana/dashboards"
DASHBOARD_FILE = "prefectstack.json"
DATASOURCE_UID = "prometheus"
DASHBOARD_UID = "prefectstack"
_DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
_API = f'job="{prometheus.API_JOB}"'


def datasources(stack: Stack, url: str) -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus",
            "uid": DATASOURCE_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": url,
            "isDefault": True,
            "editable": False,
            # Lets `$__rate_interval` span at least four scrapes.
            "jsonData": {"timeInterval": f"{stack.monitoring.scrape_interval_seconds}s",
                         "httpMethod": "POST"},
        }],
    }


def dashboard_provider() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [{
            "name": "prefectstack",
            "folder": "prefectstack",
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,  # the file is rendered from stack.yaml: edit that
            "options": {"path": DASHBOARDS_DIR},
        }],
    }


def dashboard(stack: Stack) -> dict[str, Any]:
    replicas = stack.api.replicas
    rate = "[$__rate_interval]"
    panels = [
        _stat(f"API processes up (of {replicas})", f"count(up{{{_API}}} == 1) or vector(0)",
              thresholds=[("red", None), *([("orange", 1)] if replicas > 1 else []),
                          ("green", replicas)]),
        _stat("Firing alerts", 'count(ALERTS{alertstate="firing"}) or vector(0)',
              thresholds=[("green", None), ("red", 1)]),
        _stat("API restarts (1h)",
              f"sum(changes(process_start_time_seconds{{{_API}}}[1h])) or vector(0)",
              thresholds=[("green", None), ("orange", 1)]),
        _series("API processes answering", f"up{{{_API}}}", "{{service}} {{instance}}",
                unit="none"),
        _series("API CPU", f"rate(process_cpu_seconds_total{{{_API}}}{rate})",
                "{{instance}}", unit="percentunit"),
        _series("API memory (resident)", f"process_resident_memory_bytes{{{_API}}}",
                "{{instance}}", unit="bytes"),
        _series("API open file descriptors", f"process_open_fds{{{_API}}}", "{{instance}}",
                unit="none"),
        _series("Scrape duration", "scrape_duration_seconds", "{{job}} {{instance}}",
                unit="s"),
        _series("Targets up, by job", "sum by (job) (up)", "{{job}}", unit="none"),
    ]
    y = 0
    for number, panel in enumerate(panels):  # three to a row
        column, height = number % 3, 4 if panel["type"] == "stat" else 8
        panel["id"] = number + 1
        panel["gridPos"] = {"h": height, "w": 8, "x": column * 8, "y": y}
        if column == 2:
            y += height
    return {
        "uid": DASHBOARD_UID,
        "title": f"{stack.name}: Prefect API",
        "tags": ["prefect", "prefectstack"],
        "timezone": "browser",
        "editable": False,
        "refresh": "1m",
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "panels": panels,
    }


def _target(expr: str, legend: str = "") -> dict[str, Any]:
    target: dict[str, Any] = {"refId": "A", "datasource": _DATASOURCE, "expr": expr}
    if legend:
        target["legendFormat"] = legend
    return target


def _stat(title: str, expr: str, *, thresholds: list[tuple[str, int | None]]
          ) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for color, value in thresholds]
    return {
        "type": "stat",
        "title": title,
        "datasource": _DATASOURCE,
        "targets": [_target(expr)],
        "fieldConfig": {"defaults": {"thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
    }


def _series(title: str, expr: str, legend: str, *, unit: str) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": _DATASOURCE,
        "targets": [_target(expr, legend)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
