"""The stack model: defaults, constraints and cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from prefectstack.stack.model import (
    CURRENT_VERSION,
    PostgresConfig,
    RedisConfig,
    Stack,
    WorkerConfig,
)


def stack(**data: Any) -> Stack:
    return Stack.model_validate({"version": CURRENT_VERSION, **data})


def pg(**data: Any) -> PostgresConfig:
    return PostgresConfig.model_validate(data)


def redis(**data: Any) -> RedisConfig:
    return RedisConfig.model_validate(data)


def worker(**data: Any) -> WorkerConfig:
    return WorkerConfig.model_validate(data)


def error_locs(exc: ValidationError) -> list[tuple[str | int, ...]]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_minimal_stack_has_working_defaults() -> None:
    s = stack()
    assert s.name == "prefectstack"
    assert s.postgres.mode == "embedded" and s.postgres.url is None
    assert s.redis.mode == "embedded"
    assert s.api.replicas == 1 and s.api.port == 14200
    assert s.services.enabled
    assert [(w.name, w.pool) for w in s.workers] == [("worker-1", "default")]
    assert s.examples.enabled


def test_stack_is_frozen() -> None:
    s = stack()
    with pytest.raises(ValidationError):
        s.name = "other"
    with pytest.raises(ValidationError):
        s.api.port = 1


def test_postgres_settings_default_is_not_shared_between_instances() -> None:
    a, b = pg(), pg()
    assert a.settings == b.settings and a.settings is not b.settings


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"nmae": "x"}, ("nmae",)),
        ({"api": {"replica": 2}}, ("api", "replica")),
        ({"workers": [{"name": "w", "pool": "p", "pol": "x"}]}, ("workers", 0, "pol")),
    ],
)
def test_unknown_keys_are_rejected(data: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        stack(**data)
    assert loc in error_locs(info.value)


def test_version_must_be_current() -> None:
    with pytest.raises(ValidationError):
        Stack.model_validate({"version": CURRENT_VERSION + 1})
    with pytest.raises(ValidationError):
        Stack.model_validate({})


@pytest.mark.parametrize("replicas", [1, 16])
def test_replicas_bounds_are_inclusive(replicas: int) -> None:
    assert stack(api={"replicas": replicas}).api.replicas == replicas


@pytest.mark.parametrize("replicas", [0, 17, -1])
def test_replicas_out_of_range(replicas: int) -> None:
    with pytest.raises(ValidationError) as info:
        stack(api={"replicas": replicas})
    assert error_locs(info.value) == [("api", "replicas")]


@pytest.mark.parametrize("port", [0, 65536, -5])
@pytest.mark.parametrize("where", ["postgres", "redis", "api"])
def test_ports_out_of_range(where: str, port: int) -> None:
    with pytest.raises(ValidationError) as info:
        stack(**{where: {"port": port}})
    assert error_locs(info.value) == [(where, "port")]


def test_worker_health_port_out_of_range() -> None:
    with pytest.raises(ValidationError):
        worker(name="w", pool="p", health_port=70000)
    assert worker(name="w", pool="p", health_port=65535).health_port == 65535


@pytest.mark.parametrize("name", ["Worker", "1worker", "w_1", "", "x" * 41])
def test_worker_names_are_restricted(name: str) -> None:
    with pytest.raises(ValidationError):
        worker(name=name, pool="p")


def test_external_postgres_requires_a_url() -> None:
    with pytest.raises(ValidationError, match="`url` is required"):
        pg(mode="external")
    ok = pg(mode="external", url="postgresql://u:p@db:5432/prefect")
    assert ok.url is not None


def test_postgres_url_only_with_external_mode() -> None:
    with pytest.raises(ValidationError, match="only used with `mode: external`"):
        pg(mode="embedded", url="postgresql://u:p@db/prefect")


def test_postgres_url_scheme_is_checked() -> None:
    with pytest.raises(ValidationError, match="postgresql://"):
        pg(mode="external", url="mysql://u:p@db/prefect")
    pg(mode="external", url="postgresql+asyncpg://u:p@db/prefect")


def test_external_redis_rules() -> None:
    with pytest.raises(ValidationError, match="`url` is required"):
        redis(mode="external")
    with pytest.raises(ValidationError, match="redis://"):
        redis(mode="external", url="http://cache:6379")
    with pytest.raises(ValidationError, match="only used with"):
        redis(url="redis://cache:6379")
    assert redis(mode="external", url="rediss://cache:6380").url == "rediss://cache:6380"


@pytest.mark.parametrize("key", ["listen_addresses", "port", "unix_socket_directories"])
def test_postgres_settings_cannot_override_what_keeps_it_on_loopback(key: str) -> None:
    # listen_addresses='*' would expose the database; port would desynchronise the probe.
    with pytest.raises(ValidationError) as info:
        stack(postgres={"settings": {key: "*"}})
    assert error_locs(info.value) == [("postgres", "settings")]


def test_postgres_settings_accept_tuning_keys() -> None:
    s = stack(postgres={"settings": {"work_mem": "64MB"}})
    assert s.postgres.settings == {"work_mem": "64MB"}


def test_duplicate_worker_names_point_at_workers() -> None:
    workers = [{"name": "w", "pool": "a"}, {"name": "w", "pool": "b"}]
    with pytest.raises(ValidationError, match="repeated: w") as info:
        stack(workers=workers)
    assert error_locs(info.value) == [("workers",)]


def test_examples_pool_must_have_a_worker() -> None:
    with pytest.raises(ValidationError, match="has no `process` worker") as info:
        stack(examples={"pool": "nope"})
    assert error_locs(info.value) == [("examples",)]
    assert stack(examples={"pool": "default"}).examples.pool == "default"
    # disabled examples do not need a worker for their pool
    assert not stack(examples={"enabled": False, "pool": "nope"}).examples.enabled


def test_no_workers_is_allowed() -> None:
    assert stack(workers=[]).workers == []


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found += _models(arg)
    return found


@pytest.mark.parametrize("model", _models(Stack), ids=lambda m: m.__name__)
def test_every_model_forbids_extra_keys_and_is_frozen(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True


def test_ports_must_be_distinct_across_services() -> None:
    from prefectstack.errors import StackError
    from prefectstack.stack.loader import parse_stack

    with pytest.raises(StackError) as caught:
        parse_stack("version: 1\napi: {port: 15432}\n", {})
    assert "15432: postgres.port, api.port (replica 1)" in caught.value.message
    assert caught.value.exit_code == 2


def test_boolean_version_is_not_version_one() -> None:
    from prefectstack.errors import StackError
    from prefectstack.stack.loader import parse_stack

    with pytest.raises(StackError, match="version: True is not supported"):
        parse_stack("version: true\n", {})


def test_typo_reports_only_the_unknown_key() -> None:
    from prefectstack.errors import StackError
    from prefectstack.stack.loader import parse_stack

    with pytest.raises(StackError) as caught:
        parse_stack("version: 1\nworkers:\n  - name: w\n    poool: x\n", {})
    lines = caught.value.message.splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "workers[0].poool: unknown key `poool`; did you mean `pool`?"
    ]


def test_unset_env_error_names_the_source() -> None:
    from prefectstack.errors import StackError
    from prefectstack.stack.loader import parse_stack

    with pytest.raises(StackError) as caught:
        parse_stack("version: 1\nname: ${NOPE}\n", {}, "my.yaml")
    assert caught.value.message.startswith("my.yaml: name: environment variable NOPE")


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"api": {"port": True}}, ("api", "port")),
        ({"api": {"replicas": True}}, ("api", "replicas")),
        ({"postgres": {"port": False}}, ("postgres", "port")),
        ({"edge": {"https_port": True}}, ("edge", "https_port")),
        ({"auth": {"session_hours": True}}, ("auth", "session_hours")),
        ({"workers": [{"name": "w", "pool": "p", "health_port": True}]},
         ("workers", 0, "health_port")),
        ({"workers": [{"name": "w", "pool": "p", "limit": True}]}, ("workers", 0, "limit")),
        ({"monitoring": {"grafana_port": True}}, ("monitoring", "grafana_port")),
    ],
)
def test_a_boolean_is_never_a_number(data: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    # pydantic's lax mode would read `true` as 1: `port: true` would become port 1
    with pytest.raises(ValidationError, match="got the boolean") as info:
        stack(**data)
    assert error_locs(info.value) == [loc]


def test_numbers_from_the_environment_are_still_numbers() -> None:
    # `${PORT:-8080}` gives text: StrictInt would refuse it, the boolean check does not
    assert stack(api={"port": "8080", "replicas": "2"}).api.port == 8080


def test_replica_ports_stay_in_range() -> None:
    assert stack(api={"port": 65533, "replicas": 3}).api.port == 65533
    with pytest.raises(ValidationError, match=r"api\.port 65534 with api\.replicas 3") as info:
        stack(api={"port": 65534, "replicas": 3})
    assert error_locs(info.value) == [("api",)]
    assert "at most 65533" in str(info.value)


@pytest.mark.parametrize("host", [
    "localhost", "127.0.0.1", "::1", "[::1]", "[2001:db8::1]", "2001:db8::1",
    "prefect.example.com", "xn--bcher-kva.example", "a-b.c0", "PREFECT.Example.COM",
])
def test_valid_edge_hosts(host: str) -> None:
    assert stack(edge={"host": host}).edge.host == host


@pytest.mark.parametrize("host", [
    "", " ", "my host name", "https://x.example.com", "x.example.com:443", "under_score.com",
    "-dash.com", "dash-.com", "a..b", "999.1.1.1", "1.2.3", "[127.0.0.1]", "x" * 64 + ".com",
    "caf\u00e9.example",
])
def test_invalid_edge_hosts(host: str) -> None:
    with pytest.raises(ValidationError) as info:
        stack(edge={"host": host})
    assert error_locs(info.value) == [("edge", "host")]


def test_an_ipv6_edge_host_is_bracketed_in_its_url() -> None:
    assert stack(edge={"host": "2001:db8::1"}).edge.public_url == "https://[2001:db8::1]:4200"
    assert stack(edge={"host": "[::1]"}).edge.public_url == "https://[::1]:4200"


def test_edge_bind_and_acme_email_are_checked() -> None:
    assert stack(edge={"bind": ["0.0.0.0", "::", "10.0.0.5"]}).edge.bind == [
        "0.0.0.0", "::", "10.0.0.5"]
    with pytest.raises(ValidationError, match="not a valid host name"):
        stack(edge={"bind": ["every interface"]})
    with pytest.raises(ValidationError, match="not an email address"):
        stack(edge={"acme_email": "ops"})
    assert stack(edge={"acme_email": "ops@example.com"}).edge.acme_email == "ops@example.com"


@pytest.mark.parametrize("url", [
    "https://prefect.example.com", "http://10.0.0.5:4200", "https://[2001:db8::1]:8443/prefect",
])
def test_valid_public_urls(url: str) -> None:
    assert stack(api={"public_url": url}).api.public_url == url


@pytest.mark.parametrize("url", [
    "prefect.example.com", "ftp://x.example.com", "https://", "https://bad host/",
    "https://x.example.com:99999", "https://x.example.com/?a=1",
])
def test_invalid_public_urls(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        stack(api={"public_url": url})
    assert error_locs(info.value) == [("api", "public_url")]


def test_external_urls_name_the_url_field() -> None:
    with pytest.raises(ValidationError) as info:
        pg(mode="external", url="postgresql://u@db:70000/prefect")
    assert error_locs(info.value) == [("url",)]
    with pytest.raises(ValidationError, match="the host"):
        redis(mode="external", url="redis://my cache:6379/0")
    # a unix socket (libpq `host=`) and a multi-host list are the driver's to read
    pg(mode="external", url="postgresql://u@/prefect?host=/var/run/postgresql")
    pg(mode="external", url="postgresql://u@db1:5432,db2:5432/prefect")


@pytest.mark.parametrize("state_dir", [".prefectstack", "state", "../state", "/var/lib/ps/x"])
def test_valid_state_dirs(state_dir: str) -> None:
    assert stack(state_dir=state_dir).state_dir == state_dir


@pytest.mark.parametrize("state_dir", ["", "  ", ".", "./", "..", "../..", "/", "a\0b"])
def test_state_dir_must_be_a_directory_of_its_own(state_dir: str) -> None:
    with pytest.raises(ValidationError) as info:
        stack(state_dir=state_dir)
    assert error_locs(info.value) == [("state_dir",)]
