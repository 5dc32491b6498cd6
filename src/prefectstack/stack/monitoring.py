"""Monitoring (Prometheus + Grafana) as a stack-file section: opt-in, rendered for Compose
and Kubernetes."""

from __future__ import annotations

from pydantic import Field

from prefectstack.stack.base import Port, StrictModel


class MonitoringConfig(StrictModel):
    """Prometheus scraping every API process, with alert rules, and Grafana with a
    provisioned dashboard (rendered by `prefectstack render compose` and `render kubernetes`)."""

    enabled: bool = Field(
        False,
        description=(
            "Turn on the API processes' Prometheus endpoint (`/api/metrics`) and add "
            "Prometheus and Grafana to the Compose project and the Kubernetes manifests."
        ),
    )
    # Above Prometheus's 5-minute lookback a series goes missing between two scrapes, and
    # the "no healthy API" alert would fire on a healthy stack.
    scrape_interval_seconds: int = Field(
        60, ge=15, le=300, description="How often Prometheus scrapes its targets, in seconds."
    )
    retention_days: int = Field(
        15, ge=1, description="How long Prometheus keeps samples, in days."
    )
    grafana_port: Port = Field(
        3000, description="Host port of Grafana, published on 127.0.0.1 only."
    )
