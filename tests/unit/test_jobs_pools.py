"""The `pools` and `examples` jobs' way to Prefect: the target they read from Prefect's own
settings, the pool they ask for, and `PrefectApi.ensure_work_pool` against a fake server
(httpx's MockTransport under Prefect's real client). No server, no network."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_URL,
    temporary_settings,
)
from prefect.workers.process import ProcessWorker

from prefectstack import jobs, prefect_api
from prefectstack.errors import StackError
from prefectstack.jobs import pools
from prefectstack.prefect_api import PrefectApi, Target

URL = "https://stack.example/api"

# -- target_from_env --------------------------------------------------------------------------


def test_the_supervisor_env_of_a_job_gives_its_target() -> None:
    env = {"PREFECT_API_URL": URL, "PREFECT_API_AUTH_STRING": "stack-deployer:pfs_x",
           "PREFECT_API_SSL_CERT_FILE": "/state/edge/ca.crt", "PREFECT_HOME": "/state/home"}
    assert prefect_api.target_from_env(env) == Target(
        URL, auth_string="stack-deployer:pfs_x", ca_file="/state/edge/ca.crt"
    )


def test_an_api_key_is_taken_as_the_key() -> None:
    target = prefect_api.target_from_env({"PREFECT_API_URL": URL, "PREFECT_API_KEY": "k"})
    assert target == Target(URL, api_key="k")


def test_a_plain_loopback_api_needs_no_credentials() -> None:
    target = prefect_api.target_from_env({"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert target == Target("http://127.0.0.1:4200/api")


def test_ssl_cert_file_is_the_ca_fallback_as_in_prefect() -> None:
    env = {"PREFECT_API_URL": URL, "SSL_CERT_FILE": "/etc/ssl/bundle.pem"}
    assert prefect_api.target_from_env(env).ca_file == "/etc/ssl/bundle.pem"
    env["PREFECT_API_SSL_CERT_FILE"] = "/state/edge/ca.crt"  # Prefect's own setting wins
    assert prefect_api.target_from_env(env).ca_file == "/state/edge/ca.crt"


def test_empty_values_count_as_unset() -> None:
    env = {"PREFECT_API_URL": URL, "PREFECT_API_KEY": "", "PREFECT_API_AUTH_STRING": "",
           "PREFECT_API_SSL_CERT_FILE": ""}
    assert prefect_api.target_from_env(env) == Target(URL)


@pytest.mark.parametrize("env", [{}, {"PREFECT_API_URL": ""}, {"PREFECT_API_KEY": "k"}])
def test_without_an_api_url_it_is_a_usage_error(env: dict[str, str]) -> None:
    with pytest.raises(StackError) as caught:
        prefect_api.target_from_env(env)
    assert caught.value.message.startswith("PREFECT_API_URL is not set")
    assert caught.value.exit_code == 2


def test_without_a_mapping_prefects_current_settings_are_read() -> None:
    """What the integration tests rely on: `temporary_settings`, not only env variables."""
    updates: dict[Any, Any] = {PREFECT_API_URL: URL, PREFECT_API_AUTH_STRING: "u:p",
                               PREFECT_API_KEY: "k", PREFECT_API_SSL_CERT_FILE: "/ca.pem"}
    with temporary_settings(updates=updates):
        target = prefect_api.target_from_env()
    assert target == Target(URL, api_key="k", auth_string="u:p", ca_file="/ca.pem")


def test_prefect_settings_without_an_api_url_are_a_usage_error() -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(
        StackError, match=r"^PREFECT_API_URL is not set"
    ):
        prefect_api.target_from_env()


# -- the pool asked for -----------------------------------------------------------------------


def test_the_pool_body_is_a_process_pool_with_its_default_job_template() -> None:
    body = pools.pool_body("local")
    assert body == {"name": "local", "type": "process",
                    "base_job_template": ProcessWorker.get_default_base_job_template()}
    assert {"job_configuration", "variables"} <= body["base_job_template"].keys()
    json.dumps(body)  # sent as it is


def test_a_pool_type_without_a_template_is_a_stack_error() -> None:
    with pytest.raises(StackError, match=r"^work pool p: unknown worker type 'no-such-type'$"):
        pools.pool_body("p", "no-such-type")


# -- ensure_work_pool against a fake server ---------------------------------------------------


class FakeServer:
    """Just the work pool routes of a Prefect server; `race` answers the read with 404 and
    the create with 409, as when a worker creates the pool between the two."""

    def __init__(self, existing: dict[str, dict[str, Any]] | None = None,
                 race: bool = False) -> None:
        self.pools = dict(existing or {})
        self.race = race
        self.calls: list[tuple[str, str]] = []
        self.headers: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api")
        if not path.startswith("/work_pools") and path != "/health":
            return httpx.Response(404, json={"detail": "Not Found"})
        self.calls.append((request.method, path))
        self.headers.append(request.headers.get("authorization"))
        if path == "/health":
            return httpx.Response(200, json=True)
        if request.method == "GET":
            pool = self.pools.get(path.removeprefix("/work_pools/"))
            if pool is None or self.race:
                return httpx.Response(404, json={"detail": "Work pool not found."})
            return httpx.Response(200, json=pool)
        body = json.loads(request.content)
        if body["name"] in self.pools or self.race:
            return httpx.Response(409, json={"detail": "Work pool already exists."})
        self.pools[body["name"]] = body
        return httpx.Response(201, json=body)


@asynccontextmanager
async def fake_connect(server: FakeServer, target: Target) -> AsyncIterator[PrefectApi]:
    client = PrefectClient(target.api_url, auth_string=target.auth_string,
                           httpx_settings={"transport": httpx.MockTransport(server)})
    async with client:
        api = PrefectApi(client, target)
        await api.health()
        yield api


TARGET = Target(URL, auth_string="stack-deployer:pfs_x")


def ensure(server: FakeServer, name: str) -> bool:
    async def go() -> bool:
        async with fake_connect(server, TARGET) as api:
            return await api.ensure_work_pool(pools.pool_body(name))

    return asyncio.run(go())


def test_a_missing_pool_is_created_with_the_body() -> None:
    server = FakeServer()
    assert ensure(server, "local") is True
    assert server.calls == [("GET", "/health"), ("GET", "/work_pools/local"),
                            ("POST", "/work_pools/")]
    assert server.pools["local"] == pools.pool_body("local")
    assert all(h and h.startswith("Basic ") for h in server.headers)  # the auth string


def test_an_existing_pool_is_left_alone() -> None:
    mine = {"name": "local", "type": "process", "base_job_template": {"edited": True}}
    server = FakeServer({"local": mine})
    assert ensure(server, "local") is False
    assert ("POST", "/work_pools/") not in server.calls
    assert server.pools["local"] == mine


def test_a_pool_created_meanwhile_counts_as_existing() -> None:
    server = FakeServer(race=True)
    assert ensure(server, "local") is False
    assert ("POST", "/work_pools/") in server.calls


def test_create_work_pool_without_exists_ok_reports_the_conflict() -> None:
    server = FakeServer({"local": {"name": "local"}})

    async def go() -> None:
        async with fake_connect(server, TARGET) as api:
            await api.create_work_pool(pools.pool_body("local"))

    with pytest.raises(StackError, match=r"^creating work pool local failed: HTTP 409"):
        asyncio.run(go())


# -- the job ----------------------------------------------------------------------------------


def test_the_job_ensures_each_pool_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    server = FakeServer({"old": {"name": "old", "type": "process"}})
    used: list[Target] = []

    def connect(target: Target) -> Any:
        used.append(target)
        return fake_connect(server, target)

    monkeypatch.setattr(prefect_api, "connect", connect)
    ca = certifi.where()  # a real bundle: Prefect's client loads it
    updates: dict[Any, Any] = {PREFECT_API_URL: URL, PREFECT_API_AUTH_STRING: "u:p",
                               PREFECT_API_SSL_CERT_FILE: ca}
    with temporary_settings(updates=updates):
        asyncio.run(pools.main(["old", "new"]))
    assert capsys.readouterr().out == "work pool old ready\nwork pool new ready\n"
    assert used == [Target(URL, auth_string="u:p", ca_file=ca)]  # one connection
    assert set(server.pools) == {"old", "new"}
    assert server.pools["old"] == {"name": "old", "type": "process"}  # untouched


def test_a_job_failure_is_one_error_line_and_its_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def fails() -> None:
        raise StackError("creating work pool p failed: HTTP 403", hint="a hint", exit_code=3)

    async def works() -> None:
        print("done")

    assert jobs.run(fails()) == 3
    assert capsys.readouterr().err == "error: creating work pool p failed: HTTP 403\n" \
                                      "  hint: a hint\n"
    assert jobs.run(works()) == 0
    assert capsys.readouterr().out == "done\n"


def test_the_examples_job_makes_sure_of_its_pool_the_same_way() -> None:
    from prefectstack.jobs import examples

    assert examples.ensure_pool is pools.ensure_pool


def test_run_as_the_stack_runs_it_without_an_api_url(tmp_path: Path) -> None:
    """`python -m prefectstack.jobs.pools POOL...`: a job started without its settings says
    so in one line and exits 2 (no traceback, no waiting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile of this machine's
    result = subprocess.run([sys.executable, "-m", "prefectstack.jobs.pools", "p1"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: PREFECT_API_URL is not set")
    assert result.stdout == ""
