"""The local backend's own logic, on a real temporary state dir: how it resolves the
topology's placeholders and what `prepare` leaves on disk before the first process starts."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from prefectstack import topology
from prefectstack.errors import StackError
from prefectstack.layout import Layout
from prefectstack.runtime import local, programs
from prefectstack.stack.loader import LoadedStack
from prefectstack.stack.model import CURRENT_VERSION, Stack

# No service here runs as another OS user, so prepare needs no account and no initdb.
EXTERNAL_PG = {"mode": "external", "url": "postgresql://prefect@db.internal:5432/prefect"}


def loaded(tmp_path: Path, **data: Any) -> LoadedStack:
    stack = Stack.model_validate({
        "version": CURRENT_VERSION, "postgres": EXTERNAL_PG, "edge": {"enabled": False},
        **data})
    return LoadedStack(stack, tmp_path, str(tmp_path / "stack.yaml"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_resolver_fills_in_each_kind_of_placeholder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    resolve = local.Resolver(layout, {"redis_password": "pw"}, {"flows": "/srv/f"},
                             {"redis": 16379, "api-1": 14200}, "https://localhost:4200")
    text = ("redis://:${secret.redis_password}@${addr.redis}/0 --host ${bind.host} "
            "--port ${port.api-1} ${dir.pgdata} ${path.flows} ${url.edge}/api")
    assert resolve(text) == (
        f"redis://:pw@127.0.0.1:16379/0 --host 127.0.0.1 --port 14200 {tmp_path}/data/pgdata "
        "/srv/f https://localhost:4200/api")


def test_the_resolver_refuses_what_it_has_no_value_for(tmp_path: Path) -> None:
    resolve = local.Resolver(Layout(tmp_path), {}, {}, {})
    with pytest.raises(StackError, match=r"\$\{url\.edge\}"):
        resolve("${url.edge}/api")  # no edge in this stack
    with pytest.raises(KeyError):
        resolve("${secret.missing}")


def test_prepare_writes_private_secrets_and_redis_conf(tmp_path: Path) -> None:
    stack = loaded(tmp_path)
    services = topology.build(stack.stack)
    layout, resolve, _ = local.prepare(stack, services)
    assert layout.root == stack.state_dir
    assert layout.logs.is_dir() and layout.data.is_dir()
    assert mode(layout.secrets_file) == 0o600
    values = json.loads(layout.secrets_file.read_text())
    # Only what the services refer to: no PostgreSQL passwords for an external database.
    assert set(values) == topology.generated_secret_names(stack.stack)
    assert "redis_password" in values and "postgres_password" not in values
    conf = layout.data / programs.REDIS_CONF
    assert mode(conf) == 0o600
    lines = conf.read_text().splitlines()
    assert "bind 127.0.0.1" in lines
    assert f"requirepass {values['redis_password']}" in lines
    assert f"dir {layout.volume('redis')}" in lines
    for svc in services:
        for volume in svc.volumes:
            assert layout.volume(volume).is_dir(), volume
    assert resolve("${secret.redis_password}") == values["redis_password"]


def test_prepare_again_keeps_every_secret(tmp_path: Path) -> None:
    stack = loaded(tmp_path)
    services = topology.build(stack.stack)
    layout, _, _ = local.prepare(stack, services)
    first = layout.secrets_file.read_text()
    local.prepare(stack, services)
    assert layout.secrets_file.read_text() == first


def test_a_literal_password_from_the_stack_file_is_used_but_never_stored(
    tmp_path: Path,
) -> None:
    url = "postgresql://prefect:hunter2@db.internal:5432/prefect"
    stack = loaded(tmp_path, postgres={"mode": "external", "url": url})
    services = topology.build(stack.stack)
    layout, resolve, _ = local.prepare(stack, services)
    assert "hunter2" not in layout.secrets_file.read_text()
    api = next(s for s in services if s.name == "api-1")
    assert resolve(api.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]) == url.replace(
        "postgresql://", "postgresql+asyncpg://")
    db_init = next(s for s in services if s.name == "db-init")
    assert resolve(db_init.env["PREFECTSTACK_DB_URL"]) == url
