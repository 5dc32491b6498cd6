"""Stack → services: start order, the multi-process Prefect settings, loopback, no secrets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from prefectstack import topology
from prefectstack.layout import Layout
from prefectstack.runtime import programs
from prefectstack.runtime.local import Resolver
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.topology import Service, order

SERVER_PROCESSES = re.compile(r"^(migrate|api-\d+|services)$")
REDIS_SETTINGS = {
    "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}
EXTERNAL_PG = {"mode": "external", "url": "postgresql://prefect:hunter2@db.internal:5432/prefect"}


def stack(**data: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **data})


def build(**data: Any) -> dict[str, Service]:
    return {s.name: s for s in topology.build(stack(**data))}


def resolver(the_stack: Stack) -> Resolver:
    """The local backend's view, with stand-in secret values."""
    services = topology.build(the_stack)
    values = {n: f"<{n}>" for n in topology.secret_names(services)}
    return Resolver(Layout(Path("/state")), values | topology.external_values(the_stack),
                    {"flows": "/flows", "stack_file": "/stack.yaml", "stack_base": "/"},
                    {s.name: s.ports[0] for s in services if s.ports},
                    topology.public_url(the_stack))


def local(**data: Any) -> dict[str, Service]:
    """Each service as the local backend runs it: placeholders resolved, its own argv,
    environment and files."""
    the_stack = stack(**data)
    resolve = resolver(the_stack)
    return {
        s.name: dataclasses.replace(
            s, argv=tuple(resolve(a) for a in programs.argv(s)),
            env={k: resolve(v) for k, v in programs.env(s).items()},
            files={k: resolve(v) for k, v in programs.files(s).items()})
        for s in topology.build(the_stack)
    }


def servers(services: dict[str, Service]) -> list[Service]:
    return [s for name, s in services.items() if SERVER_PROCESSES.match(name)]


STACKS: dict[str, dict[str, Any]] = {
    "default": {},
    "three-apis": {"api": {"replicas": 3}},
    "external-postgres": {"postgres": EXTERNAL_PG, "api": {"replicas": 2}},
    "external-redis": {"redis": {"mode": "external", "url": "redis://cache:6379"}},
    "no-services-no-examples": {"services": {"enabled": False}, "examples": {"enabled": False}},
    "two-workers": {
        "workers": [{"name": "a", "pool": "p1", "warm": False},
                    {"name": "b", "pool": "p2", "limit": 2}]
    },
}
stacks = pytest.mark.parametrize("data", list(STACKS.values()), ids=list(STACKS))


def test_default_services() -> None:
    names = [s.name for s in topology.build(stack())]
    assert names == [
        "postgres", "redis", "db-init", "migrate", "api-1", "services", "auth", "edge",
        "pools", "worker-1", "reconcile", "examples", "backup",
    ]
    no_edge = [s.name for s in topology.build(stack(edge={"enabled": False}))]
    assert "edge" not in no_edge and "auth" not in no_edge


@stacks
def test_start_order_respects_depends_on(data: dict[str, Any]) -> None:
    seen: set[str] = set()
    for svc in topology.build(stack(**data)):
        missing = set(svc.depends_on) - seen
        assert not missing, f"{svc.name} starts before {missing}"
        seen.add(svc.name)


@stacks
def test_migrate_runs_before_every_api(data: dict[str, Any]) -> None:
    names = [s.name for s in topology.build(stack(**data))]
    apis = [i for i, n in enumerate(names) if n.startswith("api-")]
    assert apis and all(names.index("migrate") < i for i in apis)
    services = build(**data)
    assert services["migrate"].kind == "oneshot"
    assert services["migrate"].argv == ("prefect", "server", "database", "upgrade", "-y")
    for i in range(1, len(apis) + 1):
        assert "migrate" in services[f"api-{i}"].depends_on


def test_extra_apis_wait_for_the_first_and_skip_block_registration() -> None:
    services = build(api={"replicas": 4, "port": 5000})
    assert "PREFECT_SERVER_REGISTER_BLOCKS_ON_START" not in services["api-1"].env
    assert "api-1" not in services["api-1"].depends_on
    for i in (2, 3, 4):
        api = services[f"api-{i}"]
        assert "api-1" in api.depends_on
        assert api.env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] == "false"
    ports = [services[f"api-{i}"].ports for i in (1, 2, 3, 4)]
    assert ports == [(5000,), (5001,), (5002,), (5003,)]


@stacks
def test_every_server_process_agrees(data: dict[str, Any]) -> None:
    procs = servers(local(**data))
    assert {p.name for p in procs} >= {"migrate", "api-1"}
    # API processes share one docket name, never the services process's hard-coded
    # `prefect`: a docket worker drops tasks it did not register.
    apis = {p.env["PREFECT_SERVER_DOCKET_NAME"] for p in procs if p.name.startswith("api-")}
    assert apis == {topology.API_DOCKET_NAME} != {topology.SERVICES_DOCKET_NAME}
    for p in procs:
        if p.argv[:4] == ("prefect", "server", "services", "start"):
            assert p.env["PREFECT_SERVER_DOCKET_NAME"] == topology.SERVICES_DOCKET_NAME
    for p in procs:
        assert p.env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false", p.name
        assert p.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false", p.name
        assert p.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
            "postgresql+asyncpg://"
        )


@stacks
def test_every_server_process_has_all_redis_settings_together(data: dict[str, Any]) -> None:
    for p in servers(local(**data)):
        for key, value in REDIS_SETTINGS.items():
            assert p.env.get(key) == value, f"{p.name}: {key}"
        for key in ("PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"):
            assert p.env[key].startswith("redis://"), f"{p.name}: {key}"
        assert p.env["PREFECT_SERVER_DOCKET_URL"].endswith("/1")
        # messaging and docket must not share a Redis database
        assert p.env["PREFECT_REDIS_MESSAGING_URL"] != p.env["PREFECT_SERVER_DOCKET_URL"]


def test_external_redis_url_gets_per_purpose_databases() -> None:
    services = local(redis={"mode": "external", "url": "redis://:pw@cache:6379/7"})
    assert "redis" not in services
    api = services["api-1"]
    assert api.env["PREFECT_REDIS_MESSAGING_URL"] == "redis://:pw@cache:6379/0"
    assert api.env["PREFECT_SERVER_DOCKET_URL"] == "redis://:pw@cache:6379/1"
    assert "redis" not in api.depends_on


def test_ui_api_url_uses_the_public_url() -> None:
    services = build(api={"public_url": "https://prefect.example.com/"})
    for p in servers(services):
        assert p.env["PREFECT_SERVER_UI_API_URL"] == "https://prefect.example.com/api"
    default = build()
    assert default["api-1"].env["PREFECT_SERVER_UI_API_URL"] == "https://localhost:4200/api"
    no_edge = build(edge={"enabled": False})
    assert no_edge["api-1"].env["PREFECT_SERVER_UI_API_URL"] == "http://127.0.0.1:14200/api"


_PLACEHOLDER = re.compile(r"\$\{(?:secret|dir)\.[A-Za-z0-9_-]+\}")
_URL_PASSWORD = re.compile(r"://[^:/@\s]*:([^@\s]*)@")


def _credentials(text: str) -> list[str]:
    found = _URL_PASSWORD.findall(text)
    found += re.findall(r"^requirepass (.*)$", text, flags=re.M)
    return found


@pytest.mark.parametrize("data", [STACKS["default"], STACKS["three-apis"]], ids=["1", "3"])
def test_no_literal_secrets_only_placeholders(data: dict[str, Any]) -> None:
    services = topology.build(stack(**data))
    checked = 0
    for svc in services:
        for text in (*svc.env.values(), *svc.argv, *svc.files.values()):
            for credential in _credentials(text):
                checked += 1
                assert re.fullmatch(r"\$\{secret\.[a-z_]+\}", credential), (svc.name, text)
    assert checked > 0  # the checker did find the database and redis credentials
    assert topology.secret_names(services) >= {
        "postgres_password", "postgres_superuser_password", "redis_password",
    }
    assert topology.secret_names(services) - {
        "postgres_password", "postgres_superuser_password", "redis_password",
    } <= {"admin_password", "worker_api_key", "deployer_api_key", "api_password",
          "edge_secret", "auth_backup_token"}


@stacks
def test_the_api_answers_only_with_its_server_auth_string(data: dict[str, Any]) -> None:
    """Prefect's server auth on every server process: a local user can't bypass the edge by
    calling an API process's loopback port. The stack's clients carry the string where they
    talk to the API directly (no edge); through the edge they use their own keys."""
    services = build(**data)
    expected = "prefectstack:${secret.api_password}"
    for p in servers(services):
        assert p.env["PREFECT_SERVER_API_AUTH_STRING"] == expected, p.name
    if "auth" in services:
        assert services["auth"].env["PREFECTSTACK_API_AUTH_STRING"] == expected
    no_edge = build(**data, edge={"enabled": False})
    for name in ("pools", "examples"):
        if name in no_edge:
            assert no_edge[name].env["PREFECT_API_AUTH_STRING"] == expected


def test_topology_does_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = topology.build(stack())
    monkeypatch.setenv("PREFECT_API_KEY", "leak-me")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "sqlite:///leak")
    after = topology.build(stack())
    assert before == after
    assert "leak" not in repr(after)


def test_postgres_and_redis_listen_on_loopback_only() -> None:
    services = local()
    pg = services["postgres"]
    settings = [pg.argv[i + 1] for i, a in enumerate(pg.argv) if a == "-c"]
    assert [s for s in settings if s.startswith("listen_addresses=")] == [
        "listen_addresses=127.0.0.1"
    ]
    assert "unix_socket_directories=" in settings
    assert f"port={pg.ports[0]}" in settings
    assert pg.probe.host == "127.0.0.1" and pg.probe.port == pg.ports[0]
    assert pg.stop_signal == "SIGINT"

    conf = services["redis"].files[programs.REDIS_CONF]
    assert "requirepass <redis_password>" in conf.splitlines()
    assert 'save ""' in conf.splitlines()
    binds = [line for line in conf.splitlines() if line.startswith("bind ")]
    assert binds == ["bind 127.0.0.1"]
    assert "protected-mode yes" in conf.splitlines()
    assert services["redis"].probe.host == "127.0.0.1"


def test_custom_postgres_settings_do_not_displace_loopback() -> None:
    pg = local(postgres={"settings": {"work_mem": "64MB"}})["postgres"]
    assert "work_mem=64MB" in pg.argv
    assert "listen_addresses=127.0.0.1" in pg.argv


def test_every_listener_is_loopback() -> None:
    for svc in local(api={"replicas": 2}).values():
        assert svc.probe.host == "127.0.0.1", svc.name
        if "--host" in svc.argv:
            assert svc.argv[svc.argv.index("--host") + 1] == "127.0.0.1", svc.name
        if "PREFECT_WORKER_WEBSERVER_HOST" in svc.env:
            assert svc.env["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"


def test_external_postgres_has_no_postgres_service() -> None:
    services = local(postgres=EXTERNAL_PG)
    assert "postgres" not in services
    db_init = services["db-init"]
    assert db_init.depends_on == ()
    assert db_init.env["PREFECTSTACK_DB_CREATE"] == "0"
    assert "PREFECTSTACK_DB_ADMIN_URL" not in db_init.env
    assert db_init.env["PREFECTSTACK_DB_URL"] == EXTERNAL_PG["url"]
    url = services["api-1"].env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url == "postgresql+asyncpg://prefect:hunter2@db.internal:5432/prefect"
    assert "postgres_superuser_password" not in topology.secret_names(
        list(build(postgres=EXTERNAL_PG).values()))
    # The stack file's literal password is no generated secret: the backends get its value.
    assert topology.external_values(stack(postgres=EXTERNAL_PG)) == {
        "prefect_server_database_connection_url": url,
        "prefectstack_db_url": EXTERNAL_PG["url"]}


def test_workers() -> None:
    services = local(**STACKS["two-workers"])
    a, b = services["a"], services["b"]
    # `warm: false`: Prefect's stock worker, under the reaper that stops its flow runs when
    # it stops; by default the warm worker, with `prefect worker start`'s own options
    assert a.argv[:6] == ("python", "-m", "prefectstack.jobs.reaper", "-m", "prefect", "worker")
    assert a.argv[6] == "start"
    assert b.argv[:4] == ("python", "-m", "prefectstack.warm.worker", "--pool")
    assert a.argv[a.argv.index("--pool") + 1] == "p1"
    assert "--limit" not in a.argv
    assert b.argv[b.argv.index("--limit") + 1] == "2"
    assert a.ports == (18080,) and b.ports == (18081,)
    assert b.env["PREFECT_WORKER_WEBSERVER_PORT"] == "18081"
    for w in (a, b):
        # Through the edge, with the worker key and the stack's CA; after `pools` made
        # the pool (a worker key may not).
        assert w.depends_on == ("edge", "pools")
        assert w.env["PREFECT_API_URL"] == "https://localhost:4200/api"
        # An auth string, not PREFECT_API_KEY: Prefect's websockets carry only the former.
        assert w.env["PREFECT_API_AUTH_STRING"] == "stack-worker:<worker_api_key>"
        assert "PREFECT_API_KEY" not in w.env
        assert w.env["PREFECT_API_SSL_CERT_FILE"] == str(Layout(Path("/state")).edge_ca)
        assert w.probe.kind == "http" and w.probe.path == "/health"
    direct = local(edge={"enabled": False}, workers=[{"name": "a", "pool": "p"}])["a"]
    assert direct.depends_on == ("api-1", "pools")
    assert direct.env["PREFECT_API_URL"] == "http://127.0.0.1:14200/api"
    assert "PREFECT_API_KEY" not in direct.env
    assert direct.env["PREFECT_API_AUTH_STRING"] == "prefectstack:<api_password>"
    assert services["examples"].env["PREFECTSTACK_EXAMPLES_POOL"] == "p1"


def test_only_the_stock_worker_runs_under_the_reaper() -> None:
    """The warm worker's runs die with its forkserver; Compose and Kubernetes stop a whole
    container: only the local stock worker needs jobs/reaper.py."""
    warm = local(workers=[{"name": "w", "pool": "p"}])["w"]  # the default
    assert warm.argv[:3] == ("python", "-m", "prefectstack.warm.worker")
    stock = build(workers=[{"name": "s", "pool": "p", "warm": False}])["s"]
    assert stock.argv[:3] == ("prefect", "worker", "start")  # what the containers run


def test_disabled_parts_are_absent() -> None:
    services = build(**STACKS["no-services-no-examples"])
    assert "services" not in services and "examples" not in services
    assert "examples" not in build(workers=[])


def test_ports_are_unique_in_the_default_and_replicated_stacks() -> None:
    for data in (STACKS["default"], STACKS["three-apis"], STACKS["two-workers"]):
        ports = [p for s in topology.build(stack(**data)) for p in s.ports]
        assert len(ports) == len(set(ports))


def _svc(name: str, *deps: str) -> Service:
    return Service(name=name, role="worker", kind="daemon", argv=("true",), depends_on=deps)


def test_order_is_topological_and_stable() -> None:
    services = [_svc("c", "b"), _svc("x"), _svc("b", "a"), _svc("a")]
    assert [s.name for s in order(services)] == ["a", "b", "c", "x"]
    independent = [_svc("z"), _svc("y"), _svc("x")]
    assert [s.name for s in order(independent)] == ["z", "y", "x"]


def test_order_rejects_cycles() -> None:
    with pytest.raises(ValueError, match="cycle"):
        order([_svc("a", "b"), _svc("b", "c"), _svc("c", "a")])
    with pytest.raises(ValueError, match="cycle"):
        order([_svc("a", "a")])


def test_order_rejects_unknown_dependencies() -> None:
    with pytest.raises(ValueError, match="a depends on unknown service ghost"):
        order([_svc("a", "ghost")])


@pytest.mark.parametrize(
    ("probe", "text"),
    [
        (topology.Probe("http", port=4200, path="/api/ready"), "GET http://127.0.0.1:4200/api/ready"),
        (topology.Probe("pg", port=15432), "pg ping 127.0.0.1:15432"),
        (topology.Probe("alive"), "process stays up"),
        (topology.Probe("exit"), "exits 0"),
    ],
)
def test_probe_describe(probe: topology.Probe, text: str) -> None:
    assert probe.describe() == text


def test_a_localhost_edge_listens_on_loopback_only() -> None:
    caddyfile = "edge-config/Caddyfile"
    here = local()["edge"].files[caddyfile]
    assert here.count("\tbind 127.0.0.1\n") == 2  # the HTTPS site and the redirect
    assert "to 127.0.0.1:14200" in here or "127.0.0.1:14200" in here  # upstreams resolved
    public = local(edge={"host": "prefect.example.com"})
    assert "bind" not in public["edge"].files[caddyfile]
    chosen = local(edge={"host": "prefect.example.com", "bind": ["10.0.0.5"]})
    assert "\tbind 10.0.0.5\n" in chosen["edge"].files[caddyfile]


def test_scheduled_backups_run_beside_a_local_database_only() -> None:
    svc = local()["backup"]
    assert svc.argv[-2:] == ("/stack.yaml", "/")  # it loads the stack file as `up` did
    assert svc.inherit_env and svc.local_only and not svc.essential
    assert "backup" not in build(postgres=EXTERNAL_PG)  # the server's owner backs it up
    assert "backup" not in build(backup={"enabled": False})


@stacks
def test_only_the_data_tier_stops_the_stack_when_it_gives_up(data: dict[str, Any]) -> None:
    essential = {name for name, svc in build(**data).items() if svc.essential}
    assert essential == {"postgres", "redis", "db-init", "migrate"} & set(build(**data))


def test_the_reconciler_takes_its_timing_from_the_stack_file() -> None:
    env = build(reconcile={"interval_seconds": 5, "pending_grace_seconds": 30})["reconcile"].env
    assert (env["PREFECTSTACK_RECONCILE_INTERVAL"],
            env["PREFECTSTACK_RECONCILE_PENDING_GRACE"]) == ("5", "30")
    assert "reconcile" not in build(reconcile={"enabled": False})
