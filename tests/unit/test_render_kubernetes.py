"""Kubernetes manifests: valid against the API schema (offline), secrets only in
secret.yaml, probes, non-root pods, and the migration Job the API waits for."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
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
    "three-apis": {"api": {"replicas": 3, "public_url": "https://prefect.example.com"}},
    "external-postgres": {
        "postgres": {"mode": "external",
                     "url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect"},
    },
}


def tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def fake_secrets(stack: Stack) -> dict[str, str]:
    return {name: f"fake-{name}-s3cr3t" for name in kubernetes.secret_names(stack)}


def render(name: str) -> tuple[Stack, Bundle]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **STACKS[name]})
    return stack, kubernetes.render(stack, fake_secrets(stack), image="registry/app:1")


def objects(bundle: Bundle) -> list[dict[str, Any]]:
    return [doc for rel, text in bundle.files.items() if rel.endswith(".yaml")
            and rel != "kustomization.yaml" for doc in yaml.safe_load_all(text) if doc]


def find(bundle: Bundle, kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects(bundle) if o["kind"] == kind
                and o["metadata"]["name"].startswith(name))


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@pytest.fixture(params=sorted(STACKS))
def rendered(request: pytest.FixtureRequest) -> tuple[Stack, Bundle]:
    return render(request.param)


def test_manifests_validate_offline(tmp_path: Path, rendered: tuple[Stack, Bundle]) -> None:
    files = []
    for rel, text in rendered[1].files.items():
        if rel.endswith(".yaml") and rel != "kustomization.yaml":
            (tmp_path / rel).write_text(text)
            files.append(str(tmp_path / rel))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, *files],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
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
    assert find(first, "Job", "migrate-")["metadata"]["name"] != (
        find(second, "Job", "migrate-")["metadata"]["name"])


def test_wait_script_waits_for_a_tcp_port() -> None:
    compile(kubernetes.WAIT_SCRIPT, "wait.py", "exec")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", kubernetes.WAIT_SCRIPT, "tcp", "127.0.0.1", str(port)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ready: tcp")
