"""Kubernetes manifests: valid against the API schema (offline), secrets only in
secret.yaml, probes, non-root pods, the migration Job the API waits for, and the edge (Caddy
behind the Ingress) with the auth service checking every request."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefectstack.render import kubernetes
from prefectstack.render.common import Bundle
from prefectstack.stack.model import CURRENT_VERSION, Stack

K8S_VERSION = "1.33.0"
STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {
        "api": {"replicas": 3},
        "edge": {"host": "prefect.example.com", "https_port": 443, "http_port": 80},
    },
    "no-edge": {"edge": {"enabled": False}},
    "external-postgres": {
        "postgres": {
            "mode": "external",
            "url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect",
        },
    },
}


def fake_secrets(stack: Stack) -> dict[str, str]:
    return {name: f"fake-{name}-s3cr3t" for name in kubernetes.secret_names(stack)}


def render(name: str) -> tuple[Stack, Bundle]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **STACKS[name]})
    return stack, kubernetes.render(stack, fake_secrets(stack), image="registry/app:1")


def objects(bundle: Bundle) -> list[dict[str, Any]]:
    return [
        doc
        for rel, text in bundle.files.items()
        if rel.endswith(".yaml") and rel != "kustomization.yaml"
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def find(bundle: Bundle, kind: str, name: str) -> dict[str, Any]:
    return next(
        o for o in objects(bundle) if o["kind"] == kind and o["metadata"]["name"].startswith(name)
    )


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@pytest.fixture(params=sorted(STACKS))
def rendered(request: pytest.FixtureRequest) -> tuple[Stack, Bundle]:
    return render(request.param)


def test_manifests_validate_offline(
    tmp_path: Path, rendered: tuple[Stack, Bundle], tool_accepts: Callable[..., None]
) -> None:
    files = []
    for rel, text in rendered[1].files.items():
        if rel.endswith(".yaml") and rel != "kustomization.yaml":
            (tmp_path / rel).write_text(text)
            files.append(str(tmp_path / rel))
    tool_accepts("kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION, *files)


def test_kustomization_lists_every_manifest_namespace_first(
    rendered: tuple[Stack, Bundle],
) -> None:
    files = rendered[1].files
    resources = yaml.safe_load(files["kustomization.yaml"])["resources"]
    assert resources[0] == "namespace.yaml"
    assert set(resources) == {r for r in files if r.endswith(".yaml")} - {"kustomization.yaml"}


def test_secret_values_live_only_in_secret_yaml(rendered: tuple[Stack, Bundle]) -> None:
    stack, bundle = rendered
    values = [*fake_secrets(stack).values(), "hunter2"]
    for rel, text in bundle.files.items():
        if rel != "secret.yaml":
            assert [v for v in values if v in text] == [], rel
    assert bundle.private == frozenset({"secret.yaml"})
    secret = find(bundle, "Secret", f"{stack.name}-secrets")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for name, value in fake_secrets(stack).items():
        assert decoded[name] == value


def test_every_pod_runs_non_root_with_resources(rendered: tuple[Stack, Bundle]) -> None:
    for obj in objects(rendered[1]):
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = pod(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            capabilities = container["securityContext"]["capabilities"]
            if container["name"] == "edge":
                # The only one Pod Security `restricted` allows back: Caddy's binary carries
                # it as a file capability, and exec fails without it in the bounding set.
                assert capabilities == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
            else:
                assert capabilities == {"drop": ["ALL"]}
            assert {"requests", "limits"} <= set(container["resources"])


def test_api_probes_health_and_readiness_and_waits_for_the_migration_job() -> None:
    _, bundle = render("default")
    api = find(bundle, "Deployment", "api")
    main = pod(api)["containers"][0]
    assert main["livenessProbe"]["httpGet"]["path"] == "/api/health"
    assert main["readinessProbe"]["httpGet"]["path"] == "/api/ready"
    migrate = find(bundle, "Job", "migrate-")
    waits = [c["command"][2:] for c in pod(api)["initContainers"]]
    assert ["job", migrate["metadata"]["name"]] in waits
    assert pod(api)["serviceAccountName"] == "prefectstack-waiter"
    assert [c["name"] for c in pod(migrate)["initContainers"]] == ["wait-for-postgres", "db-init"]


def test_api_replicas_share_the_service_and_a_disruption_budget() -> None:
    _, bundle = render("three-apis")
    assert find(bundle, "Deployment", "api-replicas")["spec"]["replicas"] == 2
    service = find(bundle, "Service", "api")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    assert find(bundle, "PodDisruptionBudget", "api")["spec"]["minAvailable"] == 1
    ingress = find(bundle, "Ingress", "prefectstack")
    assert ingress["spec"]["rules"][0]["host"] == "prefect.example.com"
    assert ingress["spec"]["tls"][0]["hosts"] == ["prefect.example.com"]


def test_ingress_terminates_tls_in_front_of_the_edge() -> None:
    _, bundle = render("three-apis")
    ingress = find(bundle, "Ingress", "prefectstack")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "edge", "port": {"name": "main"}}
    _, no_edge = render("no-edge")
    backend = find(no_edge, "Ingress", "prefectstack")["spec"]["rules"][0]["http"]["paths"][0]
    assert backend["backend"]["service"]["name"] == "api"
    assert not [o for o in objects(no_edge) if o["metadata"]["name"] in ("edge", "auth")]


def test_edge_is_a_stateless_caddy_deployment_with_the_caddyfile_in_a_config_map(
    tmp_path: Path, caddyfile_parses: Callable[[str, Path], None]
) -> None:
    _, bundle = render("three-apis")
    edge = find(bundle, "Deployment", "edge")
    spec = pod(edge)
    main = spec["containers"][0]
    assert main["image"].startswith("caddy:2.")
    assert main["args"] == [
        "caddy",
        "run",
        "--config",
        "/etc/caddy/Caddyfile",
        "--adapter",
        "caddyfile",
    ]
    assert main["ports"] == [{"name": "main", "containerPort": 8080}]
    assert main["readinessProbe"]["httpGet"] == {"path": "/api/health", "port": 8080}
    assert main["livenessProbe"]["tcpSocket"] == {"port": "main"}  # not through to the API
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["caddyfile"]["configMap"]["name"] == "edge-caddyfile"
    assert "emptyDir" in volumes["edge"] and "emptyDir" in volumes["flows"]
    inits = [c["name"] for c in spec["initContainers"]]
    assert inits == ["wait-for-auth", "wait-for-api", "copy-flows"]
    service = find(bundle, "Service", "edge")
    assert service["spec"]["ports"][0]["port"] == 8080 and "clusterIP" not in service["spec"]
    caddyfile = find(bundle, "ConfigMap", "edge-caddyfile")["data"]["Caddyfile"]
    assert "http://:8080 {" in caddyfile
    assert "tls internal" not in caddyfile and "redir https" not in caddyfile
    assert "reverse_proxy api:4200 {" in caddyfile
    assert "forward_auth auth:14180 {" in caddyfile
    assert "trusted_proxies static private_ranges" in caddyfile
    assert "header_up X-Forwarded-For {client_ip}" in caddyfile
    caddyfile_parses(caddyfile, tmp_path)


def test_auth_keeps_its_store_on_a_volume_claim() -> None:
    _, bundle = render("default")
    auth = find(bundle, "StatefulSet", "auth")
    assert auth["spec"]["replicas"] == 1
    assert auth["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "auth"
    main = pod(auth)["containers"][0]
    assert {"name": "auth", "mountPath": "/var/lib/prefectstack/auth"} in main["volumeMounts"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/auth/login"
    env = {e["name"]: e for e in main["env"]}
    assert env["PREFECTSTACK_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "admin_password"
    )
    assert "$(SECRET_WORKER_API_KEY)" in env["PREFECTSTACK_SERVICE_KEYS"]["value"]
    assert find(bundle, "Service", "auth")["spec"]["ports"][0]["port"] == 14180


def test_clients_go_through_the_edge_and_workers_wait_for_the_pools_job() -> None:
    _, bundle = render("default")
    pools = find(bundle, "Job", "pools-")
    worker = find(bundle, "Deployment", "worker-1")
    waits = [c["command"][2:] for c in pod(worker)["initContainers"]]
    assert waits == [["http", "http://edge:8080/api/health"], ["job", pools["metadata"]["name"]]]
    env = find(bundle, "ConfigMap", "worker-1-env")["data"]
    assert env["PREFECT_API_URL"] == "http://edge:8080/api"
    assert "PREFECT_API_SSL_CERT_FILE" not in env and "SSL_CERT_FILE" not in env
    env_vars = {e["name"]: e for e in pod(worker)["containers"][0]["env"]}
    auth = env_vars["PREFECT_API_AUTH_STRING"]
    assert auth["value"] == "stack-worker:$(SECRET_WORKER_API_KEY)"
    key = env_vars["SECRET_WORKER_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["key"] == "worker_api_key"


def test_postgres_is_a_stateful_set_unless_external() -> None:
    _, bundle = render("default")
    postgres = find(bundle, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "pgdata"
    assert find(bundle, "Service", "postgres")["spec"]["clusterIP"] == "None"
    _, external = render("external-postgres")
    assert not [o for o in objects(external) if o["metadata"]["name"] == "postgres"]


def test_secrets_embedded_in_urls_use_dependent_env_vars() -> None:
    _, bundle = render("default")
    env = pod(find(bundle, "Deployment", "api"))["containers"][0]["env"]
    names = [e["name"] for e in env]
    url = next(e for e in env if e["name"] == "PREFECT_SERVER_DATABASE_CONNECTION_URL")
    assert "$(SECRET_POSTGRES_PASSWORD)" in url["value"]
    assert names.index("SECRET_POSTGRES_PASSWORD") < names.index(url["name"])


def test_job_names_change_with_their_spec() -> None:
    stack = Stack(version=CURRENT_VERSION)
    first = kubernetes.render(stack, fake_secrets(stack), image="registry/app:1")
    second = kubernetes.render(stack, fake_secrets(stack), image="registry/app:2")
    assert (
        find(first, "Job", "migrate-")["metadata"]["name"]
        != (find(second, "Job", "migrate-")["metadata"]["name"])
    )


def test_wait_script_waits_for_a_tcp_port() -> None:
    compile(kubernetes.WAIT_SCRIPT, "wait.py", "exec")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", kubernetes.WAIT_SCRIPT, "tcp", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ready: tcp")


def test_clients_of_the_edge_cannot_reach_the_backend_directly() -> None:
    _, bundle = render("default")
    policy = find(bundle, "NetworkPolicy", "prefectstack-backend")["spec"]
    guarded = policy["podSelector"]["matchExpressions"][0]["values"]
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert guarded == ["api", "auth", "postgres", "redis"]
    assert "edge" in allowed and "migrate" in allowed and "services" in allowed
    assert not {"worker", "pools", "examples"} & set(allowed)
    _, no_edge = render("no-edge")
    assert not [o for o in objects(no_edge) if o["kind"] == "NetworkPolicy"]
