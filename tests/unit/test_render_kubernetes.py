"""Kubernetes manifests: valid against the API schema (offline), secrets only in
secret.yaml, probes, non-root pods, the migration Job the API waits for, and the edge (Caddy
behind the Ingress) with the auth service checking every request."""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefectstack.render import kubernetes
from prefectstack.render import kubernetes_ingress as ingress
from prefectstack.render.common import Bundle
from prefectstack.runtime.bundle import write_bundle
from prefectstack.stack.model import CURRENT_VERSION, Stack

K8S_VERSION = "1.33.0"
STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {
        "api": {"replicas": 3},
        "edge": {"host": "prefect.example.com", "acme_email": "ops@example.com",
                 "ingress": {"trusted_proxies": ["10.96.5.0/24"]}},
    },
    "no-edge": {"edge": {"enabled": False}},
    "monitoring": {"api": {"replicas": 2}, "monitoring": {"enabled": True}},
    "no-edge-public": {"edge": {"enabled": False, "ingress": {"allow_unauthenticated": True}}},
    "edge-tls": {"edge": {"host": "prefect.example.com", "ingress": {"tls": "edge"}}},
    "own-certificate": {
        "edge": {"host": "prefect.example.com",
                 "ingress": {"tls": "secret", "secret_name": "wildcard", "class_name": None}},
    },
    "kubernetes-workers": {
        "workers": [{"name": "worker-1", "pool": "default"},
                    {"name": "cluster", "pool": "pods", "type": "kubernetes", "limit": 20}],
    },
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
        # cert-manager's Issuer is a custom resource: not in the Kubernetes schema.
        if rel.endswith(".yaml") and rel not in ("kustomization.yaml", ingress.ISSUER_FILE):
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
    generated = fake_secrets(stack)
    assert {k: decoded[k] for k in generated if k in decoded} == {
        k: v for k, v in generated.items() if k in decoded}
    # Every secret a manifest refers to is there (a generated one nothing uses is not).
    refs = set(re.findall(r"'secretKeyRef': \{'name': '[^']+', 'key': '([^']+)'", str(
        [o for o in objects(bundle) if o["kind"] != "Secret"])))
    assert refs and refs <= set(decoded)


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
    assert [c["name"] for c in pod(migrate)["initContainers"]] == ["wait-for-postgres", "db-init"]


def test_api_and_services_wait_for_the_databases_migration_version_not_a_job_name() -> None:
    """issue 13: a deleted migration Job left restarted pods stuck in Init."""
    _, bundle = render("default")
    for name in ("api", "services"):
        spec = pod(find(bundle, "Deployment", name))
        wait = next(c for c in spec["initContainers"] if c["name"] == "wait-for-migrate")
        assert wait["command"] == ["python", "-m", "prefectstack.jobs.migrated"]
        env = {e["name"]: e for e in wait["env"]}
        url = env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]["value"]
        assert url.startswith("postgresql+asyncpg://") and "$(SECRET_POSTGRES_PASSWORD)" in url
        assert "serviceAccountName" not in spec  # no Kubernetes API access needed
    migrate = find(bundle, "ConfigMap", "migrate-env")["data"]
    assert int(migrate["PREFECT_SERVER_DATABASE_TIMEOUT"]) >= 300


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
    _, no_edge = render("no-edge-public")
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
    # Only the Ingress controller's range: flow code in worker pods (private addresses too)
    # must not be able to forge X-Forwarded-For.
    assert "trusted_proxies static 10.96.5.0/24" in caddyfile
    assert "private_ranges" not in caddyfile
    assert "header_up X-Forwarded-For {client_ip}" in caddyfile
    caddyfile_parses(caddyfile, tmp_path)


def test_replicated_auth_keeps_its_state_in_the_database_with_a_disruption_budget() -> None:
    """Item 13: two auth pods by default, interchangeable (spread, rolling, a budget keeping
    one), their state in a schema of the stack's database, started once it is migrated."""
    _, bundle = render("default")
    auth = find(bundle, "Deployment", "auth")
    assert auth["spec"]["replicas"] == 2
    assert auth["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert "podAntiAffinity" in pod(auth)["affinity"]
    main = pod(auth)["containers"][0]
    assert not [m for m in main["volumeMounts"] if m["name"] == "auth"]
    env = {e["name"]: e for e in main["env"]}
    assert env["PREFECTSTACK_AUTH_DATABASE_URL"]["value"] == (
        "postgresql://prefect:$(SECRET_POSTGRES_PASSWORD)@postgres:5432/prefect")
    config = find(bundle, "ConfigMap", "auth-env")["data"]
    assert config["PREFECTSTACK_AUTH_DATABASE_SCHEMA"] == "prefectstack_auth"
    assert "PREFECTSTACK_AUTH_DIR" not in config
    assert [c["name"] for c in pod(auth)["initContainers"]] == ["wait-for-migrate"]
    budget = next(o for o in objects(bundle) if o["kind"] == "PodDisruptionBudget"
                  and o["metadata"]["name"] == "auth")
    assert budget["spec"]["minAvailable"] == 1
    assert all(pod(auth) and auth["spec"]["template"]["metadata"]["labels"][k] == v
               for k, v in budget["spec"]["selector"]["matchLabels"].items())
    assert find(bundle, "Service", "auth")["spec"].get("clusterIP") != "None"
    assert "Auth pods: 2" in bundle.files["README.md"]
    assert "auth.admin users" in bundle.files["README.md"]


def test_the_auth_services_variables_are_the_ones_it_reads() -> None:
    from prefectstack.auth import database

    assert (kubernetes.AUTH_URL, kubernetes.AUTH_SCHEMA_ENV, kubernetes.AUDIT_IN_STORE_ENV) == (
        database.URL_ENV, database.SCHEMA_ENV, database.AUDIT_IN_STORE_ENV)


def test_one_auth_pod_keeps_its_store_on_a_volume_claim() -> None:
    stack = Stack.model_validate({"version": CURRENT_VERSION,
                                  "edge": {"ingress": {"auth_replicas": 1}}})
    bundle = kubernetes.render(stack, fake_secrets(stack))
    assert "still" not in bundle.files["README.md"]
    assert "a single pod (`edge.ingress.auth_replicas: 1`)" in bundle.files["README.md"]
    assert not [o for o in objects(bundle) if o["kind"] == "PodDisruptionBudget"
                and o["metadata"]["name"] == "auth"]
    # Its audit log in its store, which the backup job copies with users and keys.
    assert find(bundle, "ConfigMap", "auth-env")["data"]["PREFECTSTACK_AUDIT_IN_STORE"] == "1"
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
    container = postgres["spec"]["template"]["spec"]["containers"][0]
    # PostgreSQL 18's image: the claim at /var/lib/postgresql, the data dir below its
    # lost+found, where the image keeps it; the backup CronJob's pg_dump is the same major.
    assert container["image"] == "postgres:18-alpine"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "pgdata")
    assert mount["mountPath"] == "/var/lib/postgresql"
    env = find(bundle, "ConfigMap", "postgres-env")["data"]
    assert env["PGDATA"] == "/var/lib/postgresql/18/docker"
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


def policies(bundle: Bundle) -> dict[str, list[str]]:
    """Guarded component -> the components its NetworkPolicy admits."""
    out: dict[str, list[str]] = {}
    for obj in objects(bundle):
        if obj["kind"] != "NetworkPolicy":
            continue
        role = obj["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        rules = obj["spec"]["ingress"]
        out[role] = [v for r in rules for f in r["from"]
                     for e in f["podSelector"]["matchExpressions"] for v in e["values"]]
    return out


# Who talks to PostgreSQL: the server's processes and the backup CronJob's pg_dump.
SERVER = ["api", "backup", "db-init", "migrate", "services"]


def test_each_network_policy_admits_exactly_the_flows_the_topology_needs() -> None:
    """Written out by hand from the topology (not from the renderer): PostgreSQL and Redis
    serve the server's processes (PostgreSQL the backup CronJob too), the API serves the
    edge and the auth service's websocket relay (and, with replicas, the other API pods'
    readiness wait; with monitoring, Prometheus), auth serves the edge (and, for a single
    auth pod, the backup CronJob, which fetches its store; replicated auth pods use
    PostgreSQL instead), Prometheus serves
    Grafana and Grafana nobody. Workers, pools and examples reach none of them."""
    assert policies(render("default")[1]) == {
        "postgres": sorted([*SERVER, "auth"]), "redis": ["api", "migrate", "services"],
        "api": ["auth", "edge"], "auth": ["edge"]}
    # One auth pod: its own store, which the backup fetches from it.
    single = Stack.model_validate({"version": CURRENT_VERSION,
                                   "edge": {"ingress": {"auth_replicas": 1}}})
    assert policies(kubernetes.render(single, fake_secrets(single))) == {
        "postgres": SERVER, "redis": ["api", "migrate", "services"],
        "api": ["auth", "edge"], "auth": ["backup", "edge"]}
    assert policies(render("three-apis")[1])["api"] == ["api", "auth", "edge"]
    # Without the edge the workers reach the API, but still not PostgreSQL or Redis.
    assert policies(render("no-edge")[1]) == {
        "postgres": SERVER, "redis": ["api", "migrate", "services"]}
    assert "postgres" not in policies(render("external-postgres")[1])
    assert policies(render("monitoring")[1]) == {
        "postgres": sorted([*SERVER, "auth"]), "redis": ["api", "migrate", "services"],
        "api": ["api", "auth", "edge", "prometheus"], "auth": ["edge"],
        "prometheus": ["grafana"], "grafana": []}


# --- issue 13: each test below failed on the manifests rendered before the fix ---


def test_default_image_is_the_published_prefect_image_with_prefectstack_installed() -> None:
    stack = Stack(version=CURRENT_VERSION)
    bundle = kubernetes.render(stack, fake_secrets(stack))
    api = pod(find(bundle, "Deployment", "api"))
    assert api["containers"][0]["image"] == "prefecthq/prefect:3.8.8-python3.11"
    install = api["initContainers"][0]
    assert install["name"] == "install" and install["image"] == api["containers"][0]["image"]
    assert "fastapi==0.139.2" in install["command"] and "--user" in install["command"]
    env = {e["name"]: e.get("value") for e in api["containers"][0]["env"]}
    assert env["PYTHONUSERBASE"] == "/opt/prefectstack/site"
    assert env["PYTHONPATH"] == "/opt/prefectstack/app"
    generator = yaml.safe_load(bundle.files["kustomization.yaml"])["configMapGenerator"][0]
    assert generator["name"] == "prefectstack-app"
    rendered = {f.split("=", 1)[1] for f in generator["files"]}
    assert "app/prefectstack/jobs/dbinit.py" in rendered and "flows/hello.py" in rendered
    assert rendered <= set(bundle.copies)
    # a local tag (ErrImagePull on a real cluster) only when asked for
    local = kubernetes.render(stack, fake_secrets(stack), local_image=True)
    image = pod(find(local, "Deployment", "api"))["containers"][0]["image"]
    assert image == "prefectstack-prefect:3.8.8"
    assert "configMapGenerator" not in local.files["kustomization.yaml"]
    with pytest.raises(ValueError, match="exclude each other"):
        kubernetes.render(stack, fake_secrets(stack), image="r/a:1", local_image=True)


def test_kustomize_builds_the_written_bundle_and_the_result_validates(
    tmp_path: Path, tool_accepts: Callable[..., None]
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    stack = Stack(version=CURRENT_VERSION)
    write_bundle(kubernetes.render(stack, fake_secrets(stack)), tmp_path / "k")
    built = subprocess.run([kubectl, "kustomize", str(tmp_path / "k")], capture_output=True,
                           text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    app = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
               "prefectstack-app")
    assert "def main" in app["data"]["app--prefectstack--jobs--dbinit.py"]
    (tmp_path / "all.yaml").write_text(built.stdout)
    tool_accepts("kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSION,
                 str(tmp_path / "all.yaml"))


def test_ui_api_url_is_the_ingress_url_not_the_local_port() -> None:
    expected = {"three-apis": "https://prefect.example.com/api",
                "default": "http://localhost/api",  # a host-less rule, no TLS: port 80
                "edge-tls": "https://prefect.example.com/api"}
    for name, url in expected.items():
        _, bundle = render(name)
        env = find(bundle, "ConfigMap", "api-env")["data"]
        assert env["PREFECT_SERVER_UI_API_URL"] == url, name
        auth = find(bundle, "ConfigMap", "auth-env")["data"]
        assert auth["PREFECTSTACK_PUBLIC_URL"] == url.removesuffix("/api"), name


def test_tls_comes_from_cert_manager_a_secret_or_the_edge_as_the_stack_says() -> None:
    _, bundle = render("three-apis")
    ingress_obj = find(bundle, "Ingress", "prefectstack")
    assert ingress_obj["spec"]["ingressClassName"] == "nginx"
    assert ingress_obj["metadata"]["annotations"]["cert-manager.io/issuer"] == "prefectstack-acme"
    issuer = yaml.safe_load(bundle.files[ingress.ISSUER_FILE].split("---", 1)[1])
    assert issuer["kind"] == "Issuer" and issuer["spec"]["acme"]["email"] == "ops@example.com"
    assert issuer["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClassName"] == "nginx"
    assert ingress.ISSUER_FILE in yaml.safe_load(bundle.files["kustomization.yaml"])["resources"]

    _, own = render("own-certificate")
    spec = find(own, "Ingress", "prefectstack")["spec"]
    assert spec["tls"] == [{"hosts": ["prefect.example.com"], "secretName": "wildcard"}]
    assert "ingressClassName" not in spec and ingress.ISSUER_FILE not in own.files
    assert not [k for k in find(own, "Ingress", "prefectstack")["metadata"]["annotations"]
                if k.startswith("cert-manager")]

    _, edge_tls = render("edge-tls")
    assert "ingress.yaml" not in edge_tls.files
    edge = find(edge_tls, "StatefulSet", "edge")  # keeps its ACME state on a claim
    assert edge["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "edge"
    public = find(edge_tls, "Service", "edge-public")["spec"]
    assert public["type"] == "LoadBalancer"
    assert [p["port"] for p in public["ports"]] == [443, 80]
    caddyfile = find(edge_tls, "ConfigMap", "edge-caddyfile")["data"]["Caddyfile"]
    assert "prefect.example.com {" in caddyfile and "trusted_proxies" not in caddyfile

    stack = Stack.model_validate({"version": CURRENT_VERSION,
                                  "edge": {"host": "prefect.example.com"}})
    with pytest.raises(ValueError, match=r"edge\.acme_email"):
        kubernetes.render(stack, fake_secrets(stack))
    issued = Stack.model_validate({"version": CURRENT_VERSION, "edge": {
        "host": "prefect.example.com", "ingress": {"issuer": "letsencrypt-prod"}}})
    annotations = find(kubernetes.render(issued, fake_secrets(issued)), "Ingress",
                       "prefectstack")["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"


def test_no_edge_renders_no_public_unauthenticated_api_unless_asked() -> None:
    _, bundle = render("no-edge")
    assert not [o for o in objects(bundle) if o["kind"] == "Ingress"]
    assert "port-forward svc/api" in bundle.files["README.md"]
    _, public = render("no-edge-public")
    assert find(public, "Ingress", "prefectstack")
    assert find(public, "NetworkPolicy", "prefectstack-postgres")


def test_the_edge_trusts_no_forwarded_address_by_default() -> None:
    _, bundle = render("default")
    caddyfile = find(bundle, "ConfigMap", "edge-caddyfile")["data"]["Caddyfile"]
    assert "trusted_proxies" not in caddyfile and "private_ranges" not in caddyfile


def test_only_the_container_that_waits_for_a_job_gets_a_token(
    rendered: tuple[Stack, Bundle],
) -> None:
    """... and the pod of a `kubernetes` pool's worker, which creates Jobs (its own test)."""
    cluster = {w.name for w in rendered[0].workers if w.type == "kubernetes"}
    for obj in objects(rendered[1]):
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = pod(obj)
        if obj["metadata"]["name"] in cluster:
            assert spec["automountServiceAccountToken"] is True
            continue
        assert spec["automountServiceAccountToken"] is False
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            job_wait = c["name"].startswith("wait-for-") and c["command"][2] == "job"
            assert ("api-token" in mounts) == job_wait, (obj["metadata"]["name"], c["name"])


def test_hardening_body_size_probes_shm_spread_and_read_only_root() -> None:
    _, bundle = render("three-apis")
    annotations = find(bundle, "Ingress", "prefectstack")["metadata"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) >= 4  # Prefect's log batches: up to 4 MB
    postgres = pod(find(bundle, "StatefulSet", "postgres"))
    main = postgres["containers"][0]
    assert main["startupProbe"]["exec"]["command"][0] == "pg_isready"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    shm = next(v for v in postgres["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    for name in ("api", "api-replicas", "edge"):
        affinity = pod(find(bundle, "Deployment", name))["affinity"]["podAntiAffinity"]
        term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    for obj in objects(bundle):
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            spec = pod(obj)
            claims = obj["spec"].get("volumeClaimTemplates", [])
            declared = {v["name"] for v in spec["volumes"]} | {
                c["metadata"]["name"] for c in claims}
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert {m["name"] for m in c.get("volumeMounts", [])} <= declared
                paths = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if c["name"] != "copy-flows" and not c["name"].startswith("wait"):
                    assert "/tmp" in paths, c["name"]  # the one writable scratch dir


def test_services_probe_asks_for_its_docket_heartbeat() -> None:
    _, bundle = render("default")
    main = pod(find(bundle, "Deployment", "services"))["containers"][0]
    command = main["livenessProbe"]["exec"]["command"]
    assert "prefect:workers" in command[2] and "os.kill(1" not in command[2]


def test_migration_wait_knows_prefects_postgres_head_and_asyncpgs_url() -> None:
    from prefect.server.database.orm_models import AsyncPostgresORMConfiguration

    from prefectstack.jobs import migrated

    (head,) = migrated.heads()
    versions = AsyncPostgresORMConfiguration().versions_dir
    texts = [p.read_text() for p in versions.glob("*.py")]
    assert any(f"revision = \"{head}\"" in t or f"revision = '{head}'" in t for t in texts)
    assert not any(f"down_revision = \"{head}\"" in t or f"down_revision = '{head}'" in t
                   for t in texts)  # nothing comes after it
    assert migrated.asyncpg_url("postgresql+asyncpg://u:p@db:5432/prefect") == (
        "postgresql://u:p@db:5432/prefect")


def test_auth_relays_to_the_api_service_not_a_container_spec_without_one() -> None:
    """`api-replicas` is a container spec, not a Service: that name resolves to nothing in
    the cluster, so the auth service's websocket relay and pool lookups must use `api`."""
    _, bundle = render("three-apis")
    services = {o["metadata"]["name"] for o in objects(bundle) if o["kind"] == "Service"}
    upstreams = find(bundle, "ConfigMap", "auth-env")["data"]["PREFECTSTACK_API_UPSTREAMS"]
    assert upstreams == "api:4200"
    assert {u.split(":")[0] for u in upstreams.split()} <= services


def test_edge_pods_are_replicated_with_a_disruption_budget() -> None:
    _, bundle = render("three-apis")
    edge = find(bundle, "Deployment", "edge")
    assert edge["spec"]["replicas"] == 2
    budget = next(o for o in objects(bundle) if o["kind"] == "PodDisruptionBudget"
                  and o["metadata"]["name"] == "edge")
    assert budget["spec"]["minAvailable"] == 1
    selector = budget["spec"]["selector"]["matchLabels"]
    assert all(edge["spec"]["template"]["metadata"]["labels"][k] == v
               for k, v in selector.items())
    stack = Stack.model_validate({"version": CURRENT_VERSION,
                                  "edge": {"ingress": {"edge_replicas": 4}}})
    assert find(kubernetes.render(stack, fake_secrets(stack)), "Deployment",
                "edge")["spec"]["replicas"] == 4
    _, edge_tls = render("edge-tls")  # its certificates on one claim: one pod
    assert find(edge_tls, "StatefulSet", "edge")["spec"]["replicas"] == 1


def test_monitoring_scrapes_every_api_pod_and_only_grafana_queries_prometheus() -> None:
    _, bundle = render("monitoring")
    headless = find(bundle, "Service", "api-pods")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    for name in ("api", "api-replicas"):  # every API pod matches its selector
        labels = find(bundle, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert headless["selector"].items() <= labels.items()
    config = yaml.safe_load(find(bundle, "ConfigMap", "prometheus-config")["data"][
        "prometheus.yml"])
    scrape = config["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["names"] == ["api-pods"]
    assert scrape["dns_sd_configs"][0]["port"] == 4200
    prom = pod(find(bundle, "StatefulSet", "prometheus"))
    password = next(v for v in prom["volumes"] if v["name"] == "api-password")["secret"]
    assert password["items"] == [{"key": "api_password", "path": "api_password"}]
    mounts = {m["mountPath"] for m in prom["containers"][0]["volumeMounts"]}
    assert scrape["basic_auth"]["password_file"].rsplit("/", 1)[0] in mounts
    graf = pod(find(bundle, "Deployment", "grafana"))["containers"][0]
    ref = next(e for e in graf["env"] if e["name"] == "GF_SECURITY_ADMIN_PASSWORD")
    assert ref["valueFrom"]["secretKeyRef"]["key"] == "grafana_admin_password"
    secret = find(bundle, "Secret", "prefectstack-secrets")["data"]
    assert {"api_password", "grafana_admin_password"} <= secret.keys()
    assert policies(bundle)["api"] == ["api", "auth", "edge", "prometheus"]
    assert policies(bundle)["prometheus"] == ["grafana"]
    assert policies(bundle)["grafana"] == []  # kubectl port-forward only
    assert not [o for o in objects(bundle) if o["kind"] == "Ingress"
                and "grafana" in str(o)]
    assert "port-forward svc/grafana 3000" in bundle.files["README.md"]
    _, plain = render("default")
    assert not [o for o in objects(plain) if o["metadata"]["name"] == "prometheus"]


def test_backup_cron_job_follows_the_stacks_backup_policy() -> None:
    stack = Stack.model_validate({"version": CURRENT_VERSION, "backup": {
        "schedule": "30 1 * * 0", "keep": {"daily": 3, "weekly": 2, "monthly": 12}},
        "edge": {"ingress": {"auth_replicas": 1}}})
    bundle = kubernetes.render(stack, fake_secrets(stack))
    cron = find(bundle, "CronJob", "backup")["spec"]
    assert (cron["schedule"], cron["timeZone"]) == ("30 1 * * 0", "Etc/UTC")
    assert cron["concurrencyPolicy"] == "Forbid"
    spec = cron["jobTemplate"]["spec"]["template"]["spec"]
    dump, prune = spec["initContainers"][0], spec["containers"][0]
    assert dump["image"] == "postgres:18-alpine"  # the newest pg_dump dumps older servers
    env = {e["name"]: e for e in dump["env"]}
    assert env["PREFECTSTACK_DB_URL"]["value"] == (
        "postgresql://prefect:$(SECRET_POSTGRES_PASSWORD)@postgres:5432/prefect")
    assert env["SECRET_POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "postgres_password")
    assert "$(" not in dump["command"][2]  # Kubernetes would read it as a variable
    assert prune["command"][3:] == ["/backups", "--daily", "3", "--weekly", "2",
                                    "--monthly", "12"]
    claim = next(v for v in spec["volumes"] if v["name"] == "backups")
    assert claim["persistentVolumeClaim"]["claimName"] == find(
        bundle, "PersistentVolumeClaim", "backups")["metadata"]["name"]
    assert "backup" in policies(bundle)["postgres"]
    # The auth store, fetched from the auth service with the backup token from the Secret,
    # which only the auth container and this one get; the auth pod lets the backup in.
    auth = spec["initContainers"][1]
    assert auth["name"] == "auth" and "/auth/backup" in auth["command"][2]
    token = {e["name"]: e for e in auth["env"]}["PREFECTSTACK_AUTH_BACKUP_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["key"] == "auth_backup_token"
    assert "$(" not in auth["command"][2]
    holders = sorted(o["metadata"]["name"] for o in objects(bundle)
                     if "auth_backup_token" in str(o) and o["kind"] != "Secret")
    assert holders == ["auth", "backup"], holders
    assert "backup" in policies(bundle)["auth"]
    readme = bundle.files["README.md"]
    assert "30 1 * * 0" in readme and "auth-STAMP.db" in readme
    # Replicated auth (the default): its state is in the database the dump covers; no
    # fetch from the auth service, no token anywhere.
    _, replicated = render("default")
    spec = pod(find(replicated, "CronJob", "backup")["spec"]["jobTemplate"])
    assert [c["name"] for c in spec["initContainers"]] == ["dump"]
    assert "auth_backup_token" not in str(objects(replicated))
    assert "also holds the replicated auth service's users" in replicated.files["README.md"]
    # external PostgreSQL: the same dump, against the stack file's server
    _, external = render("external-postgres")
    dump = pod(find(external, "CronJob", "backup")["spec"]["jobTemplate"])["initContainers"][0]
    ref = dump["env"][0]["valueFrom"]["secretKeyRef"]
    secret = find(external, "Secret", "prefectstack-secrets")["data"]
    assert "db.internal" in base64.b64decode(secret[ref["key"]]).decode()
    uploaded = Stack.model_validate({"version": CURRENT_VERSION,
                                     "backup": {"s3": {"bucket": "backups-prod"}}})
    readme = kubernetes.render(uploaded, fake_secrets(uploaded)).files["README.md"]
    assert "`backup.s3` is not applied here" in readme  # said, never silently dropped
    off = Stack.model_validate({"version": CURRENT_VERSION, "backup": {"enabled": False}})
    bundle = kubernetes.render(off, fake_secrets(off))
    assert not [o for o in objects(bundle) if o["kind"] == "CronJob"]
    assert "backup" not in policies(bundle)["postgres"]
    assert "backup" not in policies(bundle)["auth"]
    assert "auth_backup_token" not in str(objects(bundle))  # no route, no token


def test_a_warm_worker_finds_its_module_in_the_pod() -> None:
    """`python -m prefectstack.warm.worker` in a pod of the published image: the module
    must be in the app ConfigMap (and in the Dockerfile's copies for `--image`)."""
    from prefectstack.render import dockerfile

    stack = Stack.model_validate({"version": CURRENT_VERSION, "workers": [
        {"name": "worker-1", "pool": "default", "warm": True}]})
    bundle = kubernetes.render(stack, fake_secrets(stack))
    args = pod(find(bundle, "Deployment", "worker-1"))["containers"][0]["args"]
    module = args[args.index("-m") + 1]
    path = "app/prefectstack/" + module.removeprefix("prefectstack.").replace(".", "/") + ".py"
    generator = yaml.safe_load(bundle.files["kustomization.yaml"])["configMapGenerator"][0]
    assert path in {f.split("=", 1)[1] for f in generator["files"]}
    assert path in bundle.copies
    assert "warm/" in dockerfile.PACKAGE_FILES  # the image `--image` names is built with it


def test_a_kubernetes_pool_gets_prefects_kubernetes_worker_with_a_role_of_its_own() -> None:
    """Issue 13, item 14: a pod per flow run, as the prefect-worker chart does."""
    _, bundle = render("kubernetes-workers")
    worker = find(bundle, "Deployment", "cluster")
    spec = pod(worker)
    main = spec["containers"][0]
    assert main["image"] == "prefecthq/prefect:3.8.8-python3.11-kubernetes"
    assert main["args"][:3] == ["prefect", "worker", "start"]
    assert main["args"][main["args"].index("--type") + 1] == "kubernetes"
    # Only this pod carries a token, its account's; the process worker's pod has none.
    assert spec["serviceAccountName"] == "prefectstack-kubernetes-worker"
    assert spec["automountServiceAccountToken"] is True
    assert pod(find(bundle, "Deployment", "worker-1"))["automountServiceAccountToken"] is False
    # Its Role: Jobs, and reading their pods, logs and events, in this namespace only.
    role = find(bundle, "Role", "prefectstack-kubernetes-worker")
    assert role["metadata"]["namespace"] == "prefectstack"
    granted = {(group, resource, verb) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert ("batch", "jobs", "create") in granted
    assert ("", "pods", "list") in granted
    assert not any(resource in ("secrets", "configmaps", "serviceaccounts", "roles",
                                "rolebindings", "pods/exec") for _, resource, _ in granted)
    assert not [o for o in objects(bundle) if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(bundle, "RoleBinding", "prefectstack-kubernetes-worker")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": "prefectstack",
                                    "name": "prefectstack-kubernetes-worker"}]
    # The flow runs' account: no token, no binding.
    flow_runs = find(bundle, "ServiceAccount", "prefectstack-flow-run")
    assert flow_runs["automountServiceAccountToken"] is False
    assert not [o for o in objects(bundle) if o["kind"] == "RoleBinding"
                and o["roleRef"]["name"] == "prefectstack-flow-run"]
    # The pools Job creates the pool as a kubernetes pool in this namespace.
    pools = find(bundle, "Job", "pools")
    assert "pods:kubernetes:prefectstack" in pod(pools)["containers"][0]["args"]
    assert "default" in pod(pools)["containers"][0]["args"]


def test_no_kubernetes_worker_objects_without_a_kubernetes_pool() -> None:
    _, bundle = render("default")
    assert "kubernetes-workers.yaml" not in bundle.files
    assert not [o for o in objects(bundle) if "kubernetes-worker" in o["metadata"]["name"]]
