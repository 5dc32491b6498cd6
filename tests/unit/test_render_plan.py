"""The container targets run the local backend's topology: same services, same programs,
same dependencies and the same environment, modulo addresses and data directories (and,
for clients of the edge, the edge's internal plain-HTTP listener instead of its HTTPS one)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from prefectstack import topology
from prefectstack.render import compose, plan
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.topology import Service

STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {"api": {"replicas": 3}},
    "external-postgres": {
        "postgres": {"mode": "external",
                     "url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect"},
        "api": {"replicas": 2},
    },
    "external-redis": {"redis": {"mode": "external", "url": "redis://:hunter2-redis@cache:6379"}},
    "no-services-two-workers": {
        "services": {"enabled": False},
        "workers": [{"name": "w1", "pool": "p1"}, {"name": "w2", "pool": "p2", "limit": 2}],
    },
    "no-edge": {"edge": {"enabled": False}},
    "ip-edge": {"edge": {"host": "127.0.0.1", "https_port": 8443, "http_port": 8080}},
}
ADDRESS = re.compile(r"(127\.0\.0\.1|0\.0\.0\.0|[a-z][a-z0-9-]*):\d+")


def stack(name: str) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **STACKS[name]})


def normalize(value: str) -> str:
    """Erase what legitimately differs between targets: addresses, ports, data dirs, and the
    scheme of the edge (HTTPS outside, plain HTTP on the private network)."""
    value = re.sub(r"^https?://", "SCHEME://", value)
    value = ADDRESS.sub("HOST:PORT", value)
    value = re.sub(r"\$\{dir\.[^}]+\}|/var/lib/prefectstack/auth|/var/lib/prefect|/var/lib/caddy"
                   r"|/var/lib/postgresql/data|/data", "DIR", value)
    return re.sub(r"^(127\.0\.0\.1|0\.0\.0\.0)$|^\d{4,5}$", "BIND", value)


def client_env(svc: Service) -> dict[str, str]:
    """The topology's environment as a container client of the edge has it: without the CA
    file of the edge's HTTPS listener, which it does not use."""
    return {k: v for k, v in svc.env.items() if v != topology.edge_ca_file()}


def resolved(value: str, external: dict[str, str]) -> str:
    for name, literal in external.items():
        value = value.replace(topology.secret(name), literal)
    return value


@pytest.fixture(params=sorted(STACKS))
def case(request: pytest.FixtureRequest) -> tuple[list[Service], plan.Plan]:
    the_stack = stack(request.param)
    return topology.build(the_stack), plan.build(the_stack)


def test_every_topology_service_runs_in_exactly_one_container(
    case: tuple[list[Service], plan.Plan],
) -> None:
    services, the_plan = case
    sources = [s for c in the_plan.containers for s in c.sources]
    assert sorted(sources) == sorted(s.name for s in services)


def test_programs_dependencies_and_environment_agree(case: tuple[list[Service], plan.Plan]) -> None:
    services, the_plan = case
    names = plan.container_names(services)
    for svc in services:
        c = the_plan.get(names[svc.name])
        assert c is not None
        assert c.kind == svc.kind
        assert c.command[0] == svc.argv[0], "the same logical program"
        assert c.depends_on == tuple(dict.fromkeys(names[d] for d in svc.depends_on))
        env = client_env(svc)
        assert set(c.env) == set(env), svc.name
        for key, value in env.items():
            assert normalize(resolved(c.env[key], the_plan.external)) == normalize(value), key


def test_prefect_arguments_agree_modulo_addresses(case: tuple[list[Service], plan.Plan]) -> None:
    services, the_plan = case
    names = plan.container_names(services)
    for svc in services:
        if svc.argv[0] in ("prefect", "python"):
            c = the_plan.get(names[svc.name])
            assert c is not None
            assert [normalize(a) for a in c.command] == [normalize(a) for a in svc.argv]


def test_api_processes_two_to_n_share_the_replicas_container() -> None:
    the_plan = plan.build(stack("three-apis"))
    api, replicas = the_plan.get("api"), the_plan.get("api-replicas")
    assert api is not None and replicas is not None
    assert (api.replicas, replicas.replicas) == (1, 2)
    assert replicas.sources == ("api-2", "api-3")
    # Only api-1 registers block types; the others wait for it (the uq_block_type__slug race).
    assert "PREFECT_SERVER_REGISTER_BLOCKS_ON_START" not in api.env
    assert replicas.env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] == "false"
    assert "api" in replicas.depends_on


def test_addresses_become_container_names_but_the_public_url_stays() -> None:
    the_plan = plan.build(stack("default"))
    api, worker = the_plan.get("api"), the_plan.get("worker-1")
    assert api is not None and worker is not None
    assert "@postgres:5432/" in api.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert api.env["PREFECT_SERVER_DOCKET_URL"].endswith("@redis:6379/1")
    assert api.env["PREFECT_SERVER_UI_API_URL"] == "https://localhost:4200/api"
    assert worker.env["PREFECT_API_URL"] == "http://edge:8080/api"
    assert worker.env["PREFECT_WORKER_WEBSERVER_HOST"] == "0.0.0.0"
    assert "127.0.0.1" not in " ".join(api.command)
    worker = plan.build(stack("no-edge")).get("worker-1")
    assert worker is not None and worker.env["PREFECT_API_URL"] == "http://api:4200/api"


def test_a_public_address_on_loopback_stays_public() -> None:
    """With `edge.host: 127.0.0.1` the public URL looks like a local address: browsers and
    the auth service keep it; clients still use the internal listener (which moves off the
    edge's own ports)."""
    the_plan = plan.build(stack("ip-edge"))
    api, auth, worker = (the_plan.get(n) for n in ("api", "auth", "worker-1"))
    assert api is not None and auth is not None and worker is not None
    assert api.env["PREFECT_SERVER_UI_API_URL"] == "https://127.0.0.1:8443/api"
    assert auth.env["PREFECTSTACK_PUBLIC_URL"] == "https://127.0.0.1:8443"
    assert worker.env["PREFECT_API_URL"] == "http://edge:8081/api"
    assert the_plan.edge is not None and the_plan.edge.internal_port == 8081
    assert "default_sni 127.0.0.1" in the_plan.edge.caddyfile()


def test_edge_and_auth_containers() -> None:
    the_plan = plan.build(stack("three-apis"))
    edge, auth = the_plan.get("edge"), the_plan.get("auth")
    assert edge is not None and auth is not None and the_plan.edge is not None
    assert (edge.image, edge.role, edge.port) == ("caddy", "edge", 8080)
    assert edge.command == ("caddy", "run", "--config", "/etc/caddy/Caddyfile",
                            "--adapter", "caddyfile")
    assert edge.env["XDG_DATA_HOME"] == "/var/lib/caddy/data"
    assert edge.probe == topology.Probe("http", port=8080, path="/api/health")
    assert edge.depends_on == ("auth", "api")
    assert the_plan.edge.upstreams == ("api:4200", "api-replicas:4200")
    assert the_plan.edge.auth == "auth:14180"
    assert (auth.image, auth.role, auth.port) == ("prefect", "auth", 14180)
    assert auth.volumes == {"auth": "/var/lib/prefectstack/auth"}
    assert auth.env["PREFECTSTACK_AUTH_DIR"] == "/var/lib/prefectstack/auth"
    assert plan.probe_command(edge.probe, edge.image) == [
        "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/api/health"]


def test_literal_credentials_from_the_stack_file_become_secrets() -> None:
    the_plan = plan.build(stack("external-postgres"))
    assert the_plan.external == {
        "prefect_server_database_connection_url":
            "postgresql+asyncpg://prefect:hunter2-db@db.internal:5432/prefect",
        "prefectstack_db_url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect",
    }
    for c in the_plan.containers:
        assert "hunter2" not in repr(c)


def test_local_only_settings_are_left_to_the_images() -> None:
    the_plan = plan.build(stack("default"))
    pg, redis = the_plan.get("postgres"), the_plan.get("redis")
    assert pg is not None and redis is not None
    assert "-D" not in pg.command
    assert not any(a.startswith(("listen_addresses", "port=", "unix_socket")) for a in pg.command)
    assert "shared_buffers=256MB" in pg.command
    assert "--bind" not in redis.command and "--dir" not in redis.command
    assert redis.command[redis.command.index("--requirepass") + 1] == "${secret.redis_password}"


@pytest.mark.parametrize("name", sorted(STACKS))
def test_compose_services_carry_the_topology_environment(name: str) -> None:
    the_stack = stack(name)
    services = topology.build(the_stack)
    names = plan.container_names(services)
    doc = compose.project(the_stack, plan.build(the_stack))
    for svc in services:
        rendered = doc["services"][names[svc.name]]
        assert set(client_env(svc)) <= set(rendered.get("environment", {}))
        assert set(rendered.get("depends_on", {})) == {names[d] for d in svc.depends_on}


def test_a_service_of_another_role_keeps_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services the topology gains later (an exporter, the edge) translate without changes
    here: they listen on their own port inside the container."""
    real = topology.build

    def build(the_stack: Stack) -> list[Service]:
        exporter = Service(name="exporter", kind="daemon",
                           argv=("python", "-m", "exporter", "--port", "9394"),
                           env={"API": f"http://127.0.0.1:{the_stack.api.port}/api"},
                           ports=(9394,),
                           depends_on=("api-1",),
                           probe=topology.Probe("http", port=9394, path="/metrics"))
        return [*real(the_stack), exporter]

    monkeypatch.setattr(topology, "build", build)
    exporter = plan.build(stack("default")).get("exporter")
    assert exporter is not None
    assert (exporter.port, exporter.command[-1], exporter.depends_on) == (9394, "9394", ("api",))
    assert exporter.env["API"] == "http://api:4200/api"
