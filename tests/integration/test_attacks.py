"""The attacker's view: keys of the roles that must not escalate, trying what issue 9 found.

One stack for the module, reached only through its edge (TLS against the stack's CA,
forward_auth, the auth service's body check) with real HTTP and Prefect's own client, as an
attacker holding an `operator` or a `worker` key would. Each escalation is refused (403) and
audited, and the legitimate path beside it still works: an operator runs the shell example
with arguments, a worker records a run's process id and runs flows (end to end in
test_promises.py), a developer overrides a run's job variables.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from prefectstack.flows.shell import SHELL_COMMAND_ENV

from .conftest import cli, free_port, log_problems, stack_yaml, wait_for

# the first test waits for the stack's start, which a loaded machine stretches
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FAR_FUTURE = "2099-01-01T00:00:00+00:00"  # a scheduled run no worker picks up
# Deliberate failures this module provokes, allowed in the logs (service, regex): runs given
# a parameter their flow does not take, or arguments the shell example refuses, fail.
ALLOWED = (
    ("worker-1", r"Engine execution exited with unexpected exception"
                 r"|Execution of flow run '[^']+' exited with unexpected exception"
                 r"|Process exited with status code: 1"
                 r"|Encountered exception during execution: CommandFailed\('command exited "
                 r"with code 3"
                 r"|[Pp]arameter"),
)


class Attack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.ca = str(root / "state" / "ca.crt")
        self.keys = {
            role: cli("keys", "create", f"attack-{role}", "--role", role,
                      cwd=root).stdout.strip().splitlines()[-1]
            for role in ("viewer", "operator", "developer", "worker")
        }
        self.marker = root / "pwned"  # what an escalation would create

    def http(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=f"{self.base}/api", timeout=60,
                            verify=ssl.create_default_context(cafile=self.ca),
                            headers={"Authorization": f"Bearer {self.keys[role]}"})

    @contextmanager
    def prefect(self, role: str) -> Iterator[None]:
        """Prefect's settings as a user holding a key of `role` would have them."""
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_SSL_CERT_FILE,
            PREFECT_API_URL,
            PREFECT_HOME,
            temporary_settings,
        )

        home = self.root / "homes" / role
        home.mkdir(parents=True, exist_ok=True)
        with temporary_settings(updates={
            PREFECT_API_URL: f"{self.base}/api", PREFECT_HOME: str(home),
            PREFECT_API_AUTH_STRING: f"{role}:{self.keys[role]}",
            PREFECT_API_SSL_CERT_FILE: self.ca,
        }):
            yield

    def deployment(self, name: str) -> dict[str, Any]:
        with self.http("viewer") as client:
            found: dict[str, Any] = client.get(f"/deployments/name/{name}") \
                .raise_for_status().json()
        return found

    def flow_run(self, run_id: str) -> dict[str, Any]:
        with self.http("viewer") as client:
            run: dict[str, Any] = client.get(f"/flow_runs/{run_id}").raise_for_status().json()
        return run

    def finished(self, run_id: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            run = self.flow_run(run_id)
            return run if run["state"] and run["state"]["type"] in FINAL else None

        result: dict[str, Any] = wait_for(check, 180, f"flow run {run_id} to finish", 1)
        return result

    def logs(self, run_id: str) -> list[str]:
        with self.http("viewer") as client:
            entries = client.post("/logs/filter", json={
                "logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC",
            }).raise_for_status().json()
        return [e["message"] for e in entries]

    def logged(self, run_id: str, text: str) -> list[str]:
        """The run's log messages once one holds `text` (logs ship in batches)."""
        found: list[str] = wait_for(
            lambda: (m := self.logs(run_id)) and any(text in x for x in m) and m,
            60, f"{text!r} in the logs of {run_id}")
        return found

    def parked_run(self) -> str:
        """A run of `hello`, scheduled for far in the future: someone else's run."""
        hello = self.deployment("hello/hello")
        with self.http("operator") as client:
            run = client.post(f"/deployments/{hello['id']}/create_flow_run", json={
                "parameters": {"name": "victim"},
                "state": {"type": "SCHEDULED",
                          "state_details": {"scheduled_time": FAR_FUTURE}},
            }).raise_for_status().json()
        return str(run["id"])

    def refusals(self, role: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(cli(
            "audit", "--json", "--user", f"key:{self.keys[role][:12]}", cwd=self.root).stdout)
        return [r for r in records if r["status"] == 403]


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    root = tmp_path_factory.mktemp("attacks")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_yaml(**ports).replace("interval_seconds: 3600",
                                                                  "interval_seconds: 86400"))
    (root / "ports.json").write_text(json.dumps(ports))
    try:
        cli("up", "--detach", cwd=root)
        yield Attack(root)
    finally:
        cli("down", cwd=root, check=False, timeout=120)


def status_of(call: Any) -> int:
    """The HTTP status Prefect's client got for `call` (an awaitable), 2xx included."""
    from prefect.exceptions import PrefectHTTPStatusError

    async def run() -> int:
        try:
            answer = await call()
        except PrefectHTTPStatusError as error:
            return error.response.status_code
        return int(getattr(answer, "status_code", 200))

    return asyncio.run(run())


# -- an operator key -------------------------------------------------------------------------


def test_operator_cannot_make_the_shell_example_run_shell_text(attack: Attack) -> None:
    """Issue 9: `command` was a free-form parameter of the bundled shell deployment."""
    shell = attack.deployment("shell-command/shell")
    assert "command" not in shell["parameter_openapi_schema"]["properties"]
    marker = attack.marker
    attempts = [
        {"command": f"touch {marker}"},
        {"args": [f"$(touch {marker})"]},
        {"args": [f"x; touch {marker}"]},
    ]
    runs = []
    with attack.http("operator") as operator:
        for parameters in attempts:
            answer = operator.post(f"/deployments/{shell['id']}/create_flow_run",
                                   json={"parameters": parameters})
            assert answer.status_code in (201, 409, 422), answer.text
            if answer.status_code == 201:
                runs.append(answer.json()["id"])
    for run_id in runs:
        attack.finished(run_id)
    assert not marker.exists()


def test_operator_runs_the_shell_example_with_arguments(attack: Attack) -> None:
    shell = attack.deployment("shell-command/shell")
    with attack.http("operator") as operator:
        run = operator.post(f"/deployments/{shell['id']}/create_flow_run",
                            json={"parameters": {"args": ["operator-was-here"]}})
    assert run.status_code == 201, run.text
    assert attack.finished(run.json()["id"])["state"]["type"] == "COMPLETED"
    assert "operator-was-here" in attack.logged(run.json()["id"], "operator-was-here")


def test_operator_cannot_override_job_variables(attack: Attack) -> None:
    """Issue 9: a run's job_variables replace what the worker executes (the process
    worker's `command`, the shell flow's command in `env`)."""
    from prefect.client.orchestration import get_client

    shell = attack.deployment("shell-command/shell")
    overrides = [{"command": f"touch {attack.marker}"},
                 {"env": {SHELL_COMMAND_ENV: f"touch {attack.marker}"}}]
    with attack.prefect("operator"):
        for job_variables in overrides:
            async def create(variables: dict[str, Any] = job_variables) -> Any:
                async with get_client() as client:
                    return await client.create_flow_run_from_deployment(
                        UUID(shell["id"]), job_variables=variables)

            assert status_of(create) == 403
    base = f"/deployments/{shell['id']}/create_flow_run"
    with attack.http("operator") as operator:
        # the same through the edge's other doors: bulk, a trailing slash, an encoded slash
        for path, body in ((base + "/bulk", [{"job_variables": overrides[0]}]),
                           (base + "/", {"job_variables": overrides[0]}),
                           (base.replace("/create_flow_run", "%2Fcreate_flow_run"),
                            {"job_variables": overrides[0]})):
            answer = operator.post(path, json=body)
            assert answer.status_code == 403, (path, answer.status_code, answer.text)
    assert not attack.marker.exists()
    reasons = [r["reason"] for r in attack.refusals("operator")]
    assert any("may not override job_variables" in r for r in reasons), reasons


def test_operator_cannot_patch_a_run(attack: Attack) -> None:
    run_id = attack.parked_run()
    with attack.http("operator") as operator:
        answer = operator.patch(f"/flow_runs/{run_id}",
                                json={"job_variables": {"command": f"touch {attack.marker}"}})
    assert answer.status_code == 403
    assert attack.flow_run(run_id)["job_variables"] in ({}, None)


# -- a worker key ----------------------------------------------------------------------------


def test_worker_cannot_rewrite_someone_elses_run(attack: Attack) -> None:
    """Issue 9: a worker key PATCHed a scheduled run's command and parameters (204)."""
    from prefect.client.orchestration import get_client

    run_id = attack.parked_run()

    async def rewrite() -> Any:
        async with get_client() as client:
            return await client.update_flow_run(
                UUID(run_id), parameters={"name": "pwned"},
                job_variables={"command": f"touch {attack.marker}"})

    async def record_pid() -> Any:  # what Prefect's worker sends once the process started
        async with get_client() as client:
            return await client.update_flow_run(UUID(run_id), infrastructure_pid="host:4242")

    with attack.prefect("worker"):
        assert status_of(rewrite) == 403
        assert status_of(record_pid) == 204
    run = attack.flow_run(run_id)
    assert run["parameters"] == {"name": "victim"}
    assert run["job_variables"] in ({}, None)
    assert run["infrastructure_pid"] == "host:4242"
    with attack.http("worker") as worker:
        for body in ({"parameters": {"name": "pwned"}}, {"tags": ["x"]},
                     {"infrastructure_pid": "1", "job_variables": {}}):
            assert worker.patch(f"/flow_runs/{run_id}", json=body).status_code == 403, body


def test_a_worker_key_of_another_pool_cannot_take_or_touch_this_pools_runs(
    attack: Attack,
) -> None:
    """A worker key scoped to pools (`keys create --role worker --pool P`) may poll only its
    pools and change only their runs: a key for another machine's pool can neither take this
    pool's runs (and so their parameters) nor report on them."""
    pool = attack.deployment("hello/hello")["work_pool_name"]
    run_id = attack.parked_run()

    def scoped(name: str, serves: str) -> httpx.Client:
        key = cli("keys", "create", name, "--role", "worker", "--pool", serves,
                  cwd=attack.root).stdout.strip().splitlines()[-1]
        return httpx.Client(base_url=f"{attack.base}/api", timeout=60,
                            verify=ssl.create_default_context(cafile=attack.ca),
                            headers={"Authorization": f"Bearer {key}"})

    poll = {"work_queue_names": [], "scheduled_before": FAR_FUTURE}
    with scoped("gpu-box", "gpu") as other:
        assert other.post(f"/work_pools/{pool}/get_scheduled_flow_runs",
                          json=poll).status_code == 403
        assert other.post(f"/work_pools/{pool}/workers/heartbeat",
                          json={"name": "gpu-box"}).status_code == 403
        assert other.post(f"/flow_runs/{run_id}/set_state", json={
            "state": {"type": "CANCELLED"}, "force": True}).status_code == 403
        assert other.patch(f"/flow_runs/{run_id}",
                           json={"infrastructure_pid": "h:1"}).status_code == 403
        # its own pool (that nothing serves here) is its to poll
        assert other.post("/work_pools/gpu/get_scheduled_flow_runs",
                          json=poll).status_code in (200, 404)
    with scoped("this-box", pool) as own:
        assert own.post(f"/work_pools/{pool}/get_scheduled_flow_runs",
                        json=poll).status_code == 200
        assert own.patch(f"/flow_runs/{run_id}",
                         json={"infrastructure_pid": "h:2"}).status_code == 204
    run = attack.flow_run(run_id)
    assert run["state"]["type"] == "SCHEDULED" and run["infrastructure_pid"] == "h:2"
    listed = json.loads(cli("keys", "list", "--json", cwd=attack.root).stdout)
    assert {k["name"]: k["pools"] for k in listed}["stack-worker"] == [pool]


def test_worker_cannot_start_runs_its_own_way(attack: Attack) -> None:
    """A worker key may start a deployment's run as it is (`run_deployment()` in flows), but
    not with job variables, by either route that creates runs."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    shell = attack.deployment("shell-command/shell")
    evil = {"env": {SHELL_COMMAND_ENV: f"touch {attack.marker}"}}

    def create(job_variables: dict[str, Any] | None) -> Any:
        async def call() -> Any:
            async with get_client() as client:
                return await client.create_flow_run_from_deployment(
                    UUID(shell["id"]), job_variables=job_variables,
                    state=Scheduled(scheduled_time=datetime(2099, 1, 1, tzinfo=UTC)))
        return call

    with attack.prefect("worker"):
        assert status_of(create(evil)) == 403
        assert status_of(create(None)) == 200  # run_deployment() from a flow
    with attack.http("worker") as worker:
        direct = worker.post("/flow_runs/", json={
            "flow_id": shell["flow_id"], "deployment_id": shell["id"], "job_variables": evil,
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": FAR_FUTURE}},
        })
    assert direct.status_code == 403, direct.text
    reasons = [r["reason"] for r in attack.refusals("worker")]
    assert any("job_variables" in r for r in reasons), reasons


# -- the legitimate path ---------------------------------------------------------------------


def test_developer_overrides_a_runs_job_variables(attack: Attack) -> None:
    """A developer decides what runs: a one-off command for one run of the shell deployment,
    executed by the stack's worker (whose own PATCHes pass the body check on the way)."""
    from prefect.client.orchestration import get_client

    shell = attack.deployment("shell-command/shell")

    async def create() -> Any:
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(
                UUID(shell["id"]), parameters={"args": ["ok"]},
                job_variables={"env": {SHELL_COMMAND_ENV: 'echo "developer-override $1"'}})

    with attack.prefect("developer"):
        run = asyncio.run(create())
    finished = attack.finished(str(run.id))
    assert finished["state"]["type"] == "COMPLETED", finished["state"]
    assert "developer-override ok" in attack.logged(str(run.id), "developer-override ok")
    assert finished["infrastructure_pid"]  # the worker recorded it through the body check


def test_no_unexpected_errors_in_the_logs(attack: Attack) -> None:
    problems = log_problems(attack.root / "state" / "logs", ALLOWED)
    assert not problems, "\n".join(problems[:40])
