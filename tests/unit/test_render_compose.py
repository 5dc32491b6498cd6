"""The compose project: valid against the compose spec, and production-shaped (health
checks, restart policies, log rotation, private networks, no secret values in the YAML)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefectstack import topology
from prefectstack.render import compose
from prefectstack.render.common import Bundle
from prefectstack.stack.model import CURRENT_VERSION, Stack

STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {"api": {"replicas": 3, "public_url": "https://prefect.example.com"}},
    "external-postgres": {
        "postgres": {"mode": "external",
                     "url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect"},
        "api": {"replicas": 2},
    },
    "all-external": {
        "postgres": {"mode": "external", "url": "postgresql://prefect:hunter2-db@db:5432/p"},
        "redis": {"mode": "external", "url": "redis://:hunter2-redis@cache:6379"},
    },
}
REDIS_KEYS = set(topology.redis_env(Stack(version=CURRENT_VERSION)))
ONE_SHOTS = {"db-init", "migrate", "examples"}


def tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def fake_secrets(stack: Stack) -> dict[str, str]:
    return {name: f"fake-{name}-s3cr3t" for name in compose.secret_names(stack)}


def render(name: str) -> tuple[Stack, Bundle, dict[str, Any]]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **STACKS[name]})
    bundle = compose.render(stack, fake_secrets(stack))
    return stack, bundle, yaml.safe_load(bundle.files["docker-compose.yml"])


@pytest.fixture(params=sorted(STACKS))
def rendered(request: pytest.FixtureRequest) -> tuple[Stack, Bundle, dict[str, Any]]:
    return render(request.param)


def test_compose_spec_validates(tmp_path: Path, rendered: tuple[Stack, Bundle, Any]) -> None:
    file = tmp_path / "docker-compose.yml"
    file.write_text(rendered[1].files["docker-compose.yml"])
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(file)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_caddyfile_parses(tmp_path: Path, rendered: tuple[Stack, Bundle, Any]) -> None:
    file = tmp_path / "Caddyfile"
    file.write_text(rendered[1].files["Caddyfile"])
    result = subprocess.run(
        [tool("caddy"), "adapt", "--config", str(file), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr


def test_rendering_is_deterministic() -> None:
    assert render("three-apis")[1] == render("three-apis")[1]


def test_only_the_edge_and_admin_tools_publish_ports(rendered: tuple[Stack, Bundle, Any]) -> None:
    services = rendered[2]["services"]
    publishing = {name for name, svc in services.items() if svc.get("ports")}
    assert publishing == {"caddy", "pgadmin", "redis-ui"}
    for name in ("pgadmin", "redis-ui"):
        assert services[name]["profiles"] == ["admin"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"])


def test_database_and_redis_stay_on_the_backend_network(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    doc = rendered[2]
    for name in ("postgres", "redis"):
        if name in doc["services"]:
            assert doc["services"][name]["networks"] == ["backend"]
            assert "ports" not in doc["services"][name]
    local = "postgres" in doc["services"] and "redis" in doc["services"]
    assert doc["networks"]["backend"].get("internal", False) is local


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
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep, condition in svc.get("depends_on", {}).items():
            assert condition["condition"] in (
                "service_healthy", "service_completed_successfully"), (name, dep)


def test_api_waits_for_migrations_which_wait_for_the_database(
    rendered: tuple[Stack, Bundle, Any],
) -> None:
    services = rendered[2]["services"]
    for name in ("api", "api-replicas"):
        if name in services:
            assert services[name]["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"}
            assert "deploy" in services[name]
    assert services["migrate"]["depends_on"] == {
        "db-init": {"condition": "service_completed_successfully"}}
    if "postgres" in services:
        assert services["db-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_api_replicas_scale_with_deploy_replicas() -> None:
    services = render("three-apis")[2]["services"]
    assert services["api"]["deploy"] == {"replicas": 1}
    assert services["api-replicas"]["deploy"] == {"replicas": 2}
    assert services["api-replicas"]["depends_on"]["api"]["condition"] == "service_healthy"
    caddyfile = render("three-apis")[1].files["Caddyfile"]
    assert "reverse_proxy api:4200 api-replicas:4200" in caddyfile
    assert "health_uri /api/health" in caddyfile
    assert "prefect.example.com {" in caddyfile


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
        "${POSTGRES_SUPERUSER_PASSWORD:?missing from .env}")
    url = services["api"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url == ("postgresql+asyncpg://prefect:${POSTGRES_PASSWORD:?missing from .env}"
                   "@postgres:5432/prefect")


def test_shell_dollars_are_escaped_for_compose() -> None:
    backup = render("default")[2]["services"]["backup"]
    script = backup["command"][2]
    assert "$$(date" in script and '"$$PREFECTSTACK_DB_URL"' in script
    assert "pg_dump" in script and "backups" in backup["volumes"][0]


def test_postgres_is_tuned_pinned_and_persistent() -> None:
    postgres = render("default")[2]["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and postgres["image"].count(".") == 0
    assert postgres["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert "shared_buffers=256MB" in postgres["command"]
    assert postgres["healthcheck"]["test"][1] == "pg_isready"


def test_missing_secret_values_are_refused() -> None:
    stack = Stack(version=CURRENT_VERSION)
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose.render(stack, {k: v for k, v in fake_secrets(stack).items()
                               if k != "postgres_password"})


def test_dockerfile_builds_on_the_pinned_prefect_image() -> None:
    bundle = render("default")[1]
    dockerfile = bundle.files["Dockerfile"]
    assert dockerfile.splitlines()[1] == "FROM prefecthq/prefect:3.8.8-python3.11"
    assert '"fastapi==0.139.2"' in dockerfile and "USER 10001" in dockerfile
    assert ".env" in bundle.files[".dockerignore"].splitlines()
    assert set(bundle.seeds) == {"requirements.txt", "flows/README.md"}
    assert bundle.copies["app/prefectstack/runtime/dbinit.py"] == "runtime/dbinit.py"
    assert bundle.copies["app/prefectstack/flows/"] == "flows/"


def test_worker_names_may_not_clash_with_added_services() -> None:
    stack = Stack.model_validate({"version": CURRENT_VERSION,
                                  "workers": [{"name": "backup", "pool": "p"}]})
    with pytest.raises(ValueError, match="backup"):
        compose.render(stack, fake_secrets(stack))


def test_https_edge_publishes_80_and_443() -> None:
    caddy = render("three-apis")[2]["services"]["caddy"]
    assert caddy["ports"] == ["80:80", "443:443"]
    assert render("default")[2]["services"]["caddy"]["ports"] == ["127.0.0.1:4200:80"]


def test_env_file_holds_only_the_secrets_the_project_uses() -> None:
    stack = Stack(version=CURRENT_VERSION)
    bundle = compose.render(stack, {**fake_secrets(stack), "auth_signing_key": "unrelated"})
    assert "unrelated" not in bundle.files[".env"]
