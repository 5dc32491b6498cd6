"""`postgres.mode: external`: the stack uses a PostgreSQL server it did not start."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from .conftest import cli, free_port, status
from .postgres_server import running_postgres

pytestmark = pytest.mark.integration

APP_PASSWORD = "app-test-password"


@pytest.fixture()
def external_pg(tmp_path: Path) -> Iterator[int]:
    """A PostgreSQL server started by hand, with a database and an owner role."""
    with running_postgres(tmp_path / "extpg", {"ext": (APP_PASSWORD, "extdb")}) as port:
        yield port


def test_stack_on_external_postgres(tmp_path: Path, external_pg: int) -> None:
    api_port, redis_port = free_port(), free_port()
    (tmp_path / "stack.yaml").write_text(
        "version: 1\nstate_dir: state\npostgres:\n  mode: external\n  url: ${EXT_DB_URL}\n"
        f"redis: {{port: {redis_port}}}\napi: {{port: {api_port}}}\n"
        f"edge: {{https_port: {free_port()}, http_port: {free_port()}}}\n"
        f"auth: {{port: {free_port()}}}\n"
        "workers: []\nexamples: {enabled: false}\n"
    )
    env_url = f"postgresql://ext:{APP_PASSWORD}@127.0.0.1:{external_pg}/extdb"
    os.environ["EXT_DB_URL"] = env_url
    try:
        cli("up", "--detach", cwd=tmp_path)
        names = [s["name"] for s in status(tmp_path)["services"]]
        assert "postgres" not in names and "db-init" in names
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/ready", timeout=10).status_code == 200

        async def inspect() -> tuple[bool, bool]:
            conn = await asyncpg.connect(env_url)
            trgm = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname='pg_trgm'")
            flows = await conn.fetchval("SELECT to_regclass('public.flow_run') IS NOT NULL")
            await conn.close()
            return bool(trgm), bool(flows)

        assert asyncio.run(inspect()) == (True, True)  # db-init and migrate did their work
        assert not (tmp_path / "state" / "data" / "pgdata").exists()
    finally:
        # `down` needs only the state dir: it must work after the variable is gone.
        del os.environ["EXT_DB_URL"]
        down = cli("down", cwd=tmp_path, check=False)
    assert down.returncode == 0, down.stderr
    assert "stack stopped" in down.stdout
