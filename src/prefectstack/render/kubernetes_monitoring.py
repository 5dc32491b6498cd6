"""Prometheus and Grafana in the namespace, when `monitoring.enabled` (issue 13, item 16).

Prometheus scrapes every API pod's `/api/metrics`: the targets come from the DNS records of
`api-pods`, a headless Service over the API pods (not-ready ones too, so a failing pod shows
as `up == 0` instead of vanishing), so it needs no Kubernetes API access. Its configuration
and alert rules are the Compose target's (`render/prometheus.py`); the API's password reaches
it as a file from the Secret. Grafana has the Compose target's provisioned data source and
dashboard; it publishes nothing: reach it with `kubectl port-forward svc/grafana 3000`.
NetworkPolicies (render/kubernetes_policy.py) admit Prometheus to the API pods and Grafana to
Prometheus, and nothing to Grafana.
"""

from __future__ import annotations

import json
from typing import Any

from prefectstack.render import containers, grafana, prometheus
from prefectstack.render import kubernetes_pods as pods
from prefectstack.render.common import GRAFANA_IMAGE, PROMETHEUS_IMAGE, dump_yaml
from prefectstack.render.compose_monitoring import GRAFANA_SECRET
from prefectstack.render.kubernetes_pods import Context
from prefectstack.stack.model import Stack
from prefectstack.topology import stack_secrets

FILE = "monitoring.yaml"
API_PODS = "api-pods"  # the headless Service whose A records are the API pods
NOBODY = 65534  # the Prometheus image's user
GRAFANA_UID = 472  # the Grafana image's user
PROMETHEUS_STORAGE = "10Gi"
SECRETS_DIR = prometheus.API_PASSWORD_FILE.rsplit("/", 1)[0]
GRAFANA_LOGS = "/var/log/grafana"


def secret_names(stack: Stack) -> set[str]:
    """Generated secrets the monitoring pods need beyond the stack's own."""
    return {GRAFANA_SECRET} if stack.monitoring.enabled else set()


def objects(ctx: Context, stack: Stack) -> list[dict[str, Any]]:
    if not stack.monitoring.enabled:
        return []
    return [_api_pods(ctx), *_prometheus(ctx, stack), *_grafana(ctx, stack)]


def _labels(ctx: Context, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": ctx.namespace, "app.kubernetes.io/part-of": pods.PART_OF}


def _selector(ctx: Context, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": ctx.namespace}


def _service(ctx: Context, name: str, selector: dict[str, str], port: int,
             headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector,
                            "ports": [{"name": "main", "port": port, "targetPort": port}]}
    if headless:
        spec = {"clusterIP": "None", "publishNotReadyAddresses": True, **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": ctx.meta(name), "spec": spec}


def _api_pods(ctx: Context) -> dict[str, Any]:
    selector = {"app.kubernetes.io/component": "api", "app.kubernetes.io/instance": ctx.namespace}
    return _service(ctx, API_PODS, selector, containers.CONTAINER_PORTS["api"], headless=True)


def _pod_security(uid: int) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _probes(path_ready: str, path_alive: str, port: int) -> dict[str, Any]:
    timing = {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6}
    return {
        "startupProbe": {"httpGet": {"path": path_alive, "port": port}, "periodSeconds": 5,
                         "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": path_ready, "port": port}, **timing},
        "livenessProbe": {"httpGet": {"path": path_alive, "port": port}, **timing},
    }


def _resources(cpu: str, memory: str, cpu_max: str, memory_max: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu_max, "memory": memory_max}}


def _prometheus(ctx: Context, stack: Stack) -> list[dict[str, Any]]:
    port = prometheus.PORT
    config = prometheus.config(stack, [API_PODS], containers.CONTAINER_PORTS["api"])
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": ctx.meta("prometheus-config"),
        "data": {prometheus.CONFIG_FILE: dump_yaml(config),
                 prometheus.RULES_FILE: dump_yaml(prometheus.alert_rules(stack))},
    }
    main = {
        "name": "prometheus",
        "image": PROMETHEUS_IMAGE,
        "args": [
            f"--config.file={prometheus.CONFIG_DIR}/{prometheus.CONFIG_FILE}",
            f"--storage.tsdb.path={prometheus.DATA_DIR}",
            f"--storage.tsdb.retention.time={stack.monitoring.retention_days}d",
        ],
        "ports": [{"name": "main", "containerPort": port}],
        **_probes("/-/ready", "/-/healthy", port),
        "resources": _resources("100m", "256Mi", "1", "2Gi"),
        "securityContext": pods.container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": prometheus.CONFIG_DIR, "readOnly": True},
            {"name": "api-password", "mountPath": SECRETS_DIR, "readOnly": True},
            {"name": "prometheus", "mountPath": prometheus.DATA_DIR},
        ],
    }
    password = prometheus.API_PASSWORD_FILE.rsplit("/", 1)[1]
    spec = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(NOBODY),
        "containers": [main],
        "volumes": [
            {"name": "config", "configMap": {"name": "prometheus-config"}},
            # 0440 with fsGroup: readable by Prometheus's user through the group only.
            {"name": "api-password", "secret": {
                "secretName": ctx.secret, "defaultMode": 0o440,
                "items": [{"key": stack_secrets.API_PASSWORD, "path": password}]}},
        ],
    }
    stateful_set = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": ctx.meta("prometheus", _labels(ctx, "prometheus")),
        "spec": {
            "serviceName": "prometheus", "replicas": 1,
            "selector": {"matchLabels": _selector(ctx, "prometheus")},
            "template": {"metadata": {"labels": _labels(ctx, "prometheus")}, "spec": spec},
            "volumeClaimTemplates": [{
                "metadata": {"name": "prometheus"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": PROMETHEUS_STORAGE}}},
            }],
        },
    }
    return [config_map, stateful_set,
            _service(ctx, "prometheus", _selector(ctx, "prometheus"), port)]


def _grafana(ctx: Context, stack: Stack) -> list[dict[str, Any]]:
    port = grafana.PORT
    provisioning = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": ctx.meta("grafana-provisioning"),
        "data": {
            "datasources.yml": dump_yaml(grafana.datasources(
                stack, f"http://prometheus:{prometheus.PORT}")),
            "dashboards.yml": dump_yaml(grafana.dashboard_provider()),
        },
    }
    dashboards = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": ctx.meta("grafana-dashboards"),
        "data": {grafana.DASHBOARD_FILE: json.dumps(grafana.dashboard(stack), indent=2)},
    }
    env = [
        {"name": "GF_SECURITY_ADMIN_USER", "value": "admin"},
        {"name": "GF_SECURITY_ADMIN_PASSWORD",
         "valueFrom": {"secretKeyRef": {"name": ctx.secret, "key": GRAFANA_SECRET}}},
        {"name": "GF_SERVER_ROOT_URL", "value": f"http://localhost:{port}/"},
        {"name": "GF_USERS_ALLOW_SIGN_UP", "value": "false"},
        {"name": "GF_AUTH_ANONYMOUS_ENABLED", "value": "false"},
        {"name": "GF_ANALYTICS_REPORTING_ENABLED", "value": "false"},
        {"name": "GF_ANALYTICS_CHECK_FOR_UPDATES", "value": "false"},
        {"name": "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES", "value": "false"},
        {"name": "GF_NEWS_NEWS_FEED_ENABLED", "value": "false"},
        {"name": "GF_LOG_MODE", "value": "console"},
        {"name": "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
         "value": f"{grafana.DASHBOARDS_DIR}/{grafana.DASHBOARD_FILE}"},
    ]
    main = {
        "name": "grafana",
        "image": GRAFANA_IMAGE,
        "env": env,
        "ports": [{"name": "main", "containerPort": port}],
        **_probes("/api/health", "/api/health", port),
        "resources": _resources("50m", "128Mi", "500m", "512Mi"),
        "securityContext": pods.container_security(),
        "volumeMounts": [
            {"name": "provisioning", "mountPath": f"{grafana.PROVISIONING_DIR}/datasources",
             "subPath": "datasources", "readOnly": True},
            {"name": "provisioning", "mountPath": f"{grafana.PROVISIONING_DIR}/dashboards",
             "subPath": "dashboards", "readOnly": True},
            {"name": "dashboards", "mountPath": grafana.DASHBOARDS_DIR, "readOnly": True},
            {"name": "data", "mountPath": grafana.DATA_DIR},
            {"name": "logs", "mountPath": GRAFANA_LOGS},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    spec = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(GRAFANA_UID),
        "containers": [main],
        "volumes": [
            {"name": "provisioning", "configMap": {"name": "grafana-provisioning", "items": [
                {"key": "datasources.yml", "path": "datasources/prometheus.yml"},
                {"key": "dashboards.yml", "path": "dashboards/prefectstack.yml"}]}},
            {"name": "dashboards", "configMap": {"name": "grafana-dashboards"}},
            # Everything Grafana shows is provisioned from these files: its own database
            # (users, preferences) starts afresh with each pod.
            {"name": "data", "emptyDir": {}},
            {"name": "logs", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": ctx.meta("grafana", _labels(ctx, "grafana")),
        "spec": {
            "replicas": 1, "selector": {"matchLabels": _selector(ctx, "grafana")},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": _labels(ctx, "grafana")}, "spec": spec},
        },
    }
    return [provisioning, dashboards, deployment,
            _service(ctx, "grafana", _selector(ctx, "grafana"), port)]


def readme(ctx: Context, stack: Stack) -> str:
    if not stack.monitoring.enabled:
        return ""
    days = stack.monitoring.retention_days
    return f"""
## Monitoring

Prometheus (a StatefulSet with a {PROMETHEUS_STORAGE} claim, {days} days of samples) scrapes
every API pod's `/api/metrics`, found through the headless Service `{API_PODS}` (no
Kubernetes API access needed), and evaluates the alert rules in the `prometheus-config`
ConfigMap. There is no Alertmanager: alerts show as firing in Prometheus and on the Grafana
dashboard. Neither is exposed; reach Grafana with

    kubectl -n {ctx.namespace} port-forward svc/grafana 3000

and sign in at http://localhost:3000 as `admin` with `{GRAFANA_SECRET}` from the Secret.
Grafana's own database is an emptyDir: the data source and dashboard are provisioned, and
anything made in its UI is lost with the pod.
"""
