"""The container targets run the local backend's topology: same services, same programs,
same dependencies and the same environment, modulo addresses and data directories (and,
for clients of the edge, the edge's internal plain-HTTP listener instead of its HTTPS one)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from prefectstack import topology
from prefectstack.render import compose, containers
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
    scheme of the edge (HTTPS outside, plain HTTP on the private network), in the
    topology's placeholders as in the containers' values."""
    value = value.replace("${url.edge}", "SCHEME://HOST:PORT")
    value = re.sub(r"\$\{addr\.[^}]+\}", "HOST:PORT", value)
    value = re.sub(r"^(\$\{port\.[^}]+\}|\$\{bind\.host\})$", "BIND", value)
    value = re.sub(r"^https?://", "SCHEME://", value)
    value = ADDRESS.sub("HOST:PORT", value)
    value = re.sub(r"\$\{dir\.[^}]+\}|/var/lib/prefectstack/auth|/var/lib/prefect|/var/lib/caddy"
                   r"|/var/lib/postgresql|/data", "DIR", value)
    return re.sub(r"^(127\.0\.0\.1|0\.0\.0\.0)$|^\d{4,5}$", "BIND", value)


@pytest.fixture(params=sorted(STACKS))
def case(request: pytest.FixtureRequest) -> tuple[list[Service], containers.Plan]:
    the_stack = stack(request.param)
    # The local-only services (the run reconciler) have no container.
    services = [svc for svc in topology.build(the_stack) if not svc.local_only]
    return services, containers.build(the_stack)


def test_every_topology_service_runs_in_exactly_one_container(
    case: tuple[list[Service], containers.Plan],
) -> None:
    services, the_plan = case
    sources = [s for c in the_plan.containers for s in c.sources]
    assert sorted(sources) == sorted(s.name for s in services)


def test_programs_dependencies_and_environment_agree(
    case: tuple[list[Service], containers.Plan],
) -> None:
    services, the_plan = case
    names = containers.container_names(services)
    for svc in services:
        c = the_plan.get(names[svc.name])
        assert c is not None
        assert c.kind == svc.kind
        assert c.command[0] == svc.argv[0], "the same logical program"
        assert c.depends_on == tuple(dict.fromkeys(names[d] for d in svc.depends_on))
        env = svc.env
        # The container targets' additions: a writable UI directory, a migration timeout.
        assert set(c.env) - containers.CONTAINER_ONLY_ENV == set(env), svc.name
        for key, value in env.items():
            assert normalize(c.env[key]) == normalize(value), key


def test_prefect_arguments_agree_modulo_addresses(
    case: tuple[list[Service], containers.Plan],
) -> None:
    services, the_plan = case
    names = containers.container_names(services)
    for svc in services:
        if svc.argv[0] in ("prefect", "python"):
            c = the_plan.get(names[svc.name])
            assert c is not None
            assert [normalize(a) for a in c.command] == [normalize(a) for a in svc.argv]


def test_api_processes_two_to_n_share_the_replicas_container() -> None:
    the_plan = containers.build(stack("three-apis"))
    api, replicas = the_plan.get("api"), the_plan.get("api-replicas")
    assert api is not None and replicas is not None
    assert (api.replicas, replicas.replicas) == (1, 2)
    assert replicas.sources == ("api-2", "api-3")
    # Only api-1 registers block types; the others wait for it (the uq_block_type__slug race).
    assert "PREFECT_SERVER_REGISTER_BLOCKS_ON_START" not in api.env
    assert replicas.env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] == "false"
    assert "api" in replicas.depends_on


def test_addresses_become_container_names_but_the_public_url_stays() -> None:
    the_plan = containers.build(stack("default"))
    api, worker = the_plan.get("api"), the_plan.get("worker-1")
    assert api is not None and worker is not None
    assert "@postgres:5432/" in api.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert api.env["PREFECT_SERVER_DOCKET_URL"].endswith("@redis:6379/1")
    assert api.env["PREFECT_SERVER_UI_API_URL"] == "https://localhost:4200/api"
    assert worker.env["PREFECT_API_URL"] == "http://edge:8080/api"
    assert worker.env["PREFECT_WORKER_WEBSERVER_HOST"] == "0.0.0.0"
    assert "127.0.0.1" not in " ".join(api.command)
    worker = containers.build(stack("no-edge")).get("worker-1")
    assert worker is not None and worker.env["PREFECT_API_URL"] == "http://api:4200/api"


def test_a_public_address_on_loopback_stays_public() -> None:
    """With `edge.host: 127.0.0.1` the public URL looks like a local address: browsers and
    the auth service keep it; clients still use the internal listener (which moves off the
    edge's own ports)."""
    the_plan = containers.build(stack("ip-edge"))
    api, auth, worker = (the_plan.get(n) for n in ("api", "auth", "worker-1"))
    assert api is not None and auth is not None and worker is not None
    assert api.env["PREFECT_SERVER_UI_API_URL"] == "https://127.0.0.1:8443/api"
    assert auth.env["PREFECTSTACK_PUBLIC_URL"] == "https://127.0.0.1:8443"
    assert worker.env["PREFECT_API_URL"] == "http://edge:8081/api"
    assert the_plan.edge is not None and the_plan.edge.internal_port == 8081
    assert "default_sni 127.0.0.1" in the_plan.edge.caddyfile()


def test_edge_and_auth_containers() -> None:
    the_plan = containers.build(stack("three-apis"))
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
    assert containers.probe_command(edge.probe, edge.image) == [
        "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/api/health"]


def test_literal_credentials_from_the_stack_file_become_secrets() -> None:
    the_plan = containers.build(stack("external-postgres"))
    assert the_plan.external == {
        "prefect_server_database_connection_url":
            "postgresql+asyncpg://prefect:hunter2-db@db.internal:5432/prefect",
        "prefectstack_db_url": "postgresql://prefect:hunter2-db@db.internal:5432/prefect",
    }
    for c in the_plan.containers:
        assert "hunter2" not in repr(c)


def test_local_only_settings_are_left_to_the_images() -> None:
    the_plan = containers.build(stack("default"))
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
    services = [svc for svc in topology.build(the_stack) if not svc.local_only]
    names = containers.container_names(services)
    doc = compose.project(the_stack, containers.build(the_stack))
    for svc in services:
        rendered = doc["services"][names[svc.name]]
        assert set(svc.env) <= set(rendered.get("environment", {}))
        assert set(rendered.get("depends_on", {})) == {names[d] for d in svc.depends_on}


def test_a_service_of_another_role_keeps_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services the topology gains later (an exporter, the edge) translate without changes
    here: they listen on their own port inside the container."""
    real = topology.build

    def build(the_stack: Stack) -> list[Service]:
        # A role without an image port of its own (and not folded like the API processes).
        exporter = Service(name="exporter", role="services", kind="daemon",
                           argv=("python", "-m", "exporter", "--port", "${port.exporter}"),
                           env={"API": "http://${addr.api-1}/api"},
                           ports=(9394,),
                           depends_on=("api-1",),
                           probe=topology.Probe("http", port=9394, path="/metrics"))
        return [*real(the_stack), exporter]

    monkeypatch.setattr(topology, "build", build)
    exporter = containers.build(stack("default")).get("exporter")
    assert exporter is not None
    assert (exporter.port, exporter.command[-1], exporter.depends_on) == (9394, "9394", ("api",))
    assert exporter.env["API"] == "http://api:4200/api"


def test_clients_of_the_public_edge_trust_its_ca_but_containers_use_the_private_listener(
) -> None:
    """The CA file is for a client that reaches the edge at its public HTTPS address (the
    local backend's); container clients use the plain-HTTP listener and get no CA path."""
    services = {s.name: s for s in topology.build(stack("default"))}
    assert services["worker-1"].public_edge_env == {
        "PREFECT_API_SSL_CERT_FILE": topology.EDGE_CA_FILE}
    assert "PREFECT_API_SSL_CERT_FILE" not in services["worker-1"].env
    for c in containers.build(stack("default")).containers:
        assert "PREFECT_API_SSL_CERT_FILE" not in c.env, c.name
    no_tls = {s.name: s for s in topology.build(stack("no-edge"))}
    assert no_tls["worker-1"].public_edge_env == {}


def test_every_placeholder_but_secrets_is_resolved_for_containers() -> None:
    for name in STACKS:
        for c in containers.build(stack(name)).containers:
            for text in (*c.command, *c.env.values()):
                assert not re.search(r"\$\{(?!secret\.)", text), (name, c.name, text)
