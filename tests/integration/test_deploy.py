"""Deployments as code against a real stack: plan/apply/prune, drift, parameter checks, a
git-sourced deployment run by the stack's worker, and a worker joined from "another machine".

One stack for the module; the tests run in file order and share it. The stack's API is used
directly on loopback (`http://127.0.0.1:<api port>`), with the edge switched off, so these
tests exercise deployments and workers rather than TLS and keys.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import yaml

from prefectstack.stack.model import Stack

from .conftest import (
    api_password,
    cli,
    direct_api,
    flows_writable,
    free_port,
    log_problems,
    stack_yaml,
    wait_for,
)

pytestmark = pytest.mark.integration

MANAGED = "prefectstack:managed"
FLOW = '''\
from prefect import flow


@flow(name="greeter", log_prints=True)
def greet(name: str = "world", times: int = 1) -> str:
    """Say hello."""
    print(f"hello {name} " * times)
    return name
'''
GIT_FLOW = '''\
from prefect import flow


@flow(log_prints=True)
def from_git(word: str) -> str:
    print(f"code from git says {word}")
    return word
'''


def initial_config(ports: dict[str, int]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(stack_yaml(**ports))
    if "edge" in Stack.model_fields:
        config["edge"] = {"enabled": False}
    config["work_pools"] = [
        {"name": "joined", "description": "for a worker on another machine"},
        {"name": "extra", "concurrency_limit": 3, "queues": [{"name": "high", "priority": 1}]},
    ]
    config["deployments"] = [
        {"name": "daily", "entrypoint": "flows/greet.py:greet", "work_pool": "itest-pool",
         "parameters": {"name": "ada"}, "tags": ["demo"],
         "schedules": [{"cron": "0 9 * * *", "timezone": "Europe/Berlin"}]},
        {"name": "hourly", "entrypoint": "flows/greet.py:greet", "work_pool": "extra",
         "work_queue": "high", "schedules": [{"interval": 3600, "active": False}],
         "concurrency_limit": 1, "collision_strategy": "CANCEL_NEW"},
        {"name": "remote", "entrypoint": "flows/greet.py:greet", "work_pool": "joined",
         "parameters": {"name": "joined worker"}},
    ]
    config["concurrency_limits"] = [{"name": "database", "limit": 2}]
    config["variables"] = [{"name": "region", "value": "eu-west-1"}]
    config["secrets"] = [{"name": "api-token", "file": "token.txt"}]
    # The default retention (flow runs 30 days, events 7), looked at every 5 s instead of
    # hourly so that test_the_vacuum_deletes_history_past_its_retention needn't wait.
    config["retention"] = {"vacuum_interval_seconds": 5}
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("deploy")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker")}
    (root / "ports.json").write_text(json.dumps(ports))
    (root / "flows").mkdir()
    (root / "flows" / "greet.py").write_text(FLOW)
    (root / "token.txt").write_text("tok-123\n")
    write(root, initial_config(ports))
    yield root
    cli("down", cwd=root, check=False, timeout=120)


def write(root: Path, config: dict[str, Any]) -> None:
    (root / "stack.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def config_of(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((root / "stack.yaml").read_text())
    return data


def api(root: Path) -> str:
    return direct_api(root, json.loads((root / "ports.json").read_text())["api"])


def get(root: Path, path: str) -> Any:
    return httpx.get(api(root) + path, timeout=10).raise_for_status().json()


def post(root: Path, path: str, body: dict[str, Any]) -> Any:
    return httpx.post(api(root) + path, json=body, timeout=10).raise_for_status().json()


def deployments(root: Path) -> dict[str, dict[str, Any]]:
    flows = {f["id"]: f["name"] for f in post(root, "/flows/filter", {})}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in post(root, "/deployments/filter", {})}


def plan(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("deploy", "plan", *args, cwd=root, check=False, timeout=180)


def plan_json(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = plan(root, "--json", "--detailed-exitcode", *args)
    assert result.returncode in (0, 2), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, data


def run_deployment(root: Path, name: str) -> str:
    deployment = get(root, f"/deployments/name/{name}")
    run = post(root, f"/deployments/{deployment['id']}/create_flow_run", {})
    return str(run["id"])


def final_state(root: Path, run_id: str, timeout: float = 300) -> str:
    def done() -> str | None:
        state = get(root, f"/flow_runs/{run_id}")["state"]
        kind = state and state["type"]
        return kind if kind in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return str(wait_for(done, timeout, f"flow run {run_id} to finish", interval=2))


def run_logs(root: Path, run_id: str) -> str:
    logs = post(root, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
    return "\n".join(entry["message"] for entry in logs)


def test_an_unreachable_server_is_exit_code_1_with_detailed_exitcode(stack: Path) -> None:
    result = plan(stack, "--detailed-exitcode", "--server", "http://127.0.0.1:9")
    assert result.returncode == 1, result.stderr
    assert "cannot reach the Prefect API" in result.stderr and "Traceback" not in result.stderr


def test_up_applies_the_stack_files_deployments(stack: Path) -> None:
    result = cli("up", "--detach", cwd=stack)
    assert re.search(r"deployments applied: \d+ created, 0 updated", result.stderr), (
        result.stderr)
    found = deployments(stack)
    assert {"greeter/daily", "greeter/hourly", "greeter/remote"} <= set(found)
    daily = found["greeter/daily"]
    assert sorted(daily["tags"]) == ["demo", MANAGED]
    assert daily["parameters"] == {"name": "ada"}
    assert [s["schedule"]["cron"] for s in daily["schedules"]] == ["0 9 * * *"]
    hourly = found["greeter/hourly"]
    assert hourly["work_queue_name"] == "high" and hourly["work_pool_name"] == "extra"
    assert hourly["global_concurrency_limit"]["limit"] == 1
    assert [s["active"] for s in hourly["schedules"]] == [False]
    assert get(stack, "/v2/concurrency_limits/database")["limit"] == 2
    assert get(stack, "/variables/name/region")["value"] == "eu-west-1"
    secret = post(stack, "/block_documents/filter", {
        "block_types": {"slug": {"any_": ["secret"]}}, "include_secrets": True})
    assert [(b["name"], b["data"]["value"]) for b in secret] == [("api-token", "tok-123")]
    # The bundled examples were registered too, unmanaged.
    assert MANAGED not in found["hello/hello"]["tags"]


def test_a_second_apply_is_a_no_op(stack: Path) -> None:
    result = plan(stack, "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes" in result.stdout
    applied = cli("deploy", "apply", cwd=stack)
    assert "No changes" in applied.stdout and "Applied" not in applied.stdout


def test_a_schedule_change_shows_as_an_update(stack: Path) -> None:
    config = config_of(stack)
    config["deployments"][0]["schedules"][0]["cron"] = "30 10 * * 1-5"
    write(stack, config)
    code, data = plan_json(stack)
    assert code == 2
    assert data["summary"] == {"create": 0, "update": 1, "delete": 0}
    (change,) = data["changes"]
    assert (change["action"], change["kind"], change["name"]) == (
        "update", "deployment", "greeter/daily")
    assert [f["field"] for f in change["fields"]] == ["schedules"]
    assert change["fields"][0]["after"][0]["cron"] == "30 10 * * 1-5"
    human = plan(stack).stdout
    assert "cron '0 9 * * *' Europe/Berlin] → [cron '30 10 * * 1-5' Europe/Berlin]" in human
    cli("deploy", "apply", "--yes", cwd=stack)
    schedules = get(stack, "/deployments/name/greeter/daily")["schedules"]
    assert [s["schedule"]["cron"] for s in schedules] == ["30 10 * * 1-5"]
    assert plan(stack, "--detailed-exitcode").returncode == 0


def test_hand_made_drift_is_detected_and_reverted(stack: Path) -> None:
    daily = get(stack, "/deployments/name/greeter/daily")
    httpx.patch(f"{api(stack)}/deployments/{daily['id']}", timeout=10,
                json={"description": "edited in the UI", "paused": True}).raise_for_status()
    httpx.patch(f"{api(stack)}/variables/name/region", timeout=10,
                json={"value": "us-east-1"}).raise_for_status()
    code, data = plan_json(stack)
    assert code == 2
    changed = {(c["kind"], c["name"]): [f["field"] for f in c["fields"]] for c in data["changes"]}
    assert changed == {("variable", "region"): ["value"],
                       ("deployment", "greeter/daily"): ["description", "paused"]}
    cli("deploy", "apply", "--yes", cwd=stack)
    daily = get(stack, "/deployments/name/greeter/daily")
    assert daily["description"] is None and daily["paused"] is False
    assert plan(stack, "--detailed-exitcode").returncode == 0


def test_pools_queues_limits_and_secrets_update_in_place(stack: Path) -> None:
    config = config_of(stack)
    config["work_pools"][1]["concurrency_limit"] = 4
    config["work_pools"][1]["queues"][0]["priority"] = 2
    config["work_pools"][1]["base_job_template"] = {"stream_output": False}
    config["concurrency_limits"][0]["limit"] = 5
    write(stack, config)
    (stack / "token.txt").write_text("tok-456\n")
    code, data = plan_json(stack)
    assert code == 2
    changed = {(c["kind"], c["name"]): {f["field"]: f["after"] for f in c["fields"]}
               for c in data["changes"]}
    assert changed == {
        ("secret", "api-token"): {"value": "(hidden)"},
        ("concurrency_limit", "database"): {"limit": 5},
        ("work_pool", "extra"): {"concurrency_limit": 4,
                                 "base_job_template": changed[("work_pool", "extra")][
                                     "base_job_template"]},
        ("work_queue", "extra/high"): {"priority": 2},
    }
    assert changed[("work_pool", "extra")]["base_job_template"]["stream_output"] is False
    assert "tok-456" not in json.dumps(data)
    cli("deploy", "apply", "--yes", cwd=stack)
    pool = get(stack, "/work_pools/extra")
    assert pool["concurrency_limit"] == 4
    assert pool["base_job_template"]["variables"]["properties"]["stream_output"]["default"] is (
        False)
    assert get(stack, "/work_pools/extra/queues/high")["priority"] == 2
    assert get(stack, "/v2/concurrency_limits/database")["limit"] == 5
    secret = post(stack, "/block_documents/filter", {
        "block_types": {"slug": {"any_": ["secret"]}}, "include_secrets": True})
    assert [b["data"]["value"] for b in secret] == ["tok-456"]
    assert plan(stack, "--detailed-exitcode").returncode == 0


def test_prune_deletes_only_managed_objects_that_left_the_file(stack: Path) -> None:
    flow = post(stack, "/flows/", {"name": "greeter"})
    post(stack, "/deployments/", {"name": "by-hand", "flow_id": flow["id"],
                                  "work_pool_name": "itest-pool"})
    config = config_of(stack)
    config["deployments"] = [d for d in config["deployments"] if d["name"] != "hourly"]
    config["variables"] = []
    write(stack, config)

    kept = plan(stack, "--detailed-exitcode")
    assert kept.returncode == 0
    assert "--prune` deletes them): deployment greeter/hourly" in kept.stdout
    code, data = plan_json(stack, "--prune")
    assert code == 2
    assert [(c["action"], c["kind"], c["name"]) for c in data["changes"]] == [
        ("delete", "deployment", "greeter/hourly"), ("delete", "variable", "region"),
    ]
    cli("deploy", "apply", "--prune", "--yes", cwd=stack)
    left = deployments(stack)
    assert "greeter/hourly" not in left
    assert {"greeter/by-hand", "hello/hello", "shell-command/shell", "greeter/daily"} <= set(left)
    missing = httpx.get(f"{api(stack)}/variables/name/region", timeout=10)
    assert missing.status_code == 404 or missing.json() is None
    assert plan(stack, "--prune", "--detailed-exitcode").returncode == 0


def server_picture(root: Path) -> Any:
    return (
        sorted((name, d["updated"]) for name, d in deployments(root).items()),
        sorted(v["name"] for v in post(root, "/variables/filter", {})),
    )


def test_parameter_errors_are_caught_before_any_change(stack: Path) -> None:
    before = server_picture(stack)
    good = config_of(stack)
    bad = json.loads(json.dumps(good))
    bad["deployments"][0]["parameters"] = {"name": "ada", "times": "twice", "colour": "red"}
    bad["deployments"].append({"name": "new-one", "entrypoint": "flows/greet.py:greet",
                               "work_pool": "itest-pool"})
    bad["variables"] = [{"name": "would-be-created", "value": 1}]
    write(stack, bad)
    try:
        planned = plan(stack)
        assert planned.returncode == 2, planned.stderr
        assert "deployments[0].parameters.colour: flow `greet` has no parameter `colour`" in (
            planned.stderr)
        assert "deployments[0].parameters.times: 'twice' is not of type 'integer'" in (
            planned.stderr)
        assert plan(stack, "--detailed-exitcode").returncode == 1
        applied = cli("deploy", "apply", "--yes", cwd=stack, check=False)
        assert applied.returncode == 2 and "nothing was changed" in applied.stderr
        assert server_picture(stack) == before
    finally:
        write(stack, good)


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=itest", "-c", "user.email=itest@example.com",
                    *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_a_git_sourced_deployment_runs_on_the_stacks_worker(
    stack: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    repos = tmp_path_factory.mktemp("git")
    git("init", "--bare", "--initial-branch=main", "flows.git", cwd=repos)
    git("clone", "flows.git", "checkout", cwd=repos)
    (repos / "checkout" / "pipelines").mkdir()
    (repos / "checkout" / "pipelines" / "from_git.py").write_text(GIT_FLOW)
    git("add", ".", cwd=repos / "checkout")
    git("commit", "-m", "a flow", cwd=repos / "checkout")
    git("push", "origin", "main", cwd=repos / "checkout")
    # git refuses a repository of another owner: the flows account clones it (run as root)
    # so it owns it, and `deploy apply`, run as root here, is told it is safe through a
    # global config file of the test's own (GIT_CONFIG_GLOBAL; command-line settings don't
    # reach git-upload-pack), never through the host's git config.
    flows_writable(repos / "flows.git")
    gitconfig = repos / "gitconfig"
    gitconfig.write_text(f"[safe]\n\tdirectory = {repos / 'flows.git'}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    url = f"file://{repos / 'flows.git'}"
    config = config_of(stack)
    config["deployments"].append({
        "name": "git", "entrypoint": "pipelines/from_git.py:from_git", "work_pool": "itest-pool",
        "source": {"git": url, "branch": "main"}, "parameters": {"word": "hello-from-git"},
    })
    write(stack, config)
    cli("deploy", "apply", "--yes", cwd=stack)
    deployment = get(stack, "/deployments/name/from-git/git")
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.git_clone": {"repository": url, "branch": "main"}}]
    run_id = run_deployment(stack, "from-git/git")
    assert final_state(stack, run_id) == "COMPLETED", run_logs(stack, run_id)[-3000:]
    logs = wait_for(lambda: (t := run_logs(stack, run_id)) and "hello-from-git" in t and t,
                    60, "the flow's own log line")
    assert "code from git says hello-from-git" in logs


def test_a_joined_worker_picks_up_a_run_from_its_pool(
    stack: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    machine = tmp_path_factory.mktemp("other-machine")
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    env["HOME"] = str(machine)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefectstack", "worker", "join",
         "--server", f"http://127.0.0.1:{json.loads((stack / 'ports.json').read_text())['api']}",
         "--key", f"prefectstack:{api_password(stack)}",
         "--pool", "joined", "--name", "itest-joined", "--health-port", str(health)],
        cwd=machine, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: _healthy(health) or proc.poll() is not None, 120,
                 "the joined worker's health endpoint", interval=1)
        assert proc.poll() is None, proc.communicate(timeout=10)[0]
        run_id = run_deployment(stack, "greeter/remote")
        assert final_state(stack, run_id) == "COMPLETED", run_logs(stack, run_id)[-3000:]
        workers = post(stack, "/work_pools/joined/workers/filter", {})
        assert [w["name"] for w in workers] == ["itest-joined"]
        assert (machine / ".prefectstack" / "workers" / "itest-joined").is_dir()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert "worker itest-joined joining pool joined" in out
    assert api_password(stack) not in out


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- retention: Prefect's vacuum, configured from the stack file's `retention:` --------------

AGO = timedelta(days=60)  # past both retentions of this stack (flow runs 30 days, events 7)


def sql(root: Path, query: str, *args: Any) -> list[Any]:
    """The rows of one query on the stack's own PostgreSQL, as its superuser."""
    import asyncio

    import asyncpg

    secrets = json.loads((root / "state" / "secrets.json").read_text())

    async def run() -> list[Any]:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=json.loads((root / "ports.json").read_text())["pg"],
            user="postgres", password=secrets["postgres_superuser_password"],
            database="prefect")
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def seed_run(root: Path, flow_id: str, name: str, state: str = "COMPLETED",
             parent_task_run_id: str | None = None) -> dict[str, list[str]]:
    """A flow run made through the API with two task runs, a log line of each and of the run,
    and an artifact."""
    run = post(root, "/flow_runs/", {"flow_id": flow_id, "name": name, "state": {"type": state},
                                     "parent_task_run_id": parent_task_run_id})
    tasks = [post(root, "/task_runs/", {
        "flow_run_id": run["id"], "task_key": "retention-probe", "dynamic_key": str(n),
        "name": f"{name}-task-{n}", "state": {"type": "COMPLETED"}})["id"] for n in range(2)]
    logs = [{"name": "itest", "level": 20, "message": f"{name} says {who}",
             "timestamp": datetime.now(UTC).isoformat(), "flow_run_id": run["id"],
             "task_run_id": task}
            for who, task in (("the flow", None), ("task 0", tasks[0]), ("task 1", tasks[1]))]
    httpx.post(api(root) + "/logs/", json=logs, timeout=10).raise_for_status()
    post(root, "/artifacts/", {"key": f"probe-{name}", "type": "markdown", "data": f"# {name}",
                               "flow_run_id": run["id"], "task_run_id": tasks[0]})
    return {"flow_run": [run["id"]], "task_run": tasks}


def backdate(root: Path, runs: list[dict[str, list[str]]], moment: datetime) -> None:
    """Move runs (and their task runs and logs) to `moment` in the database: the API sets no
    past times. A run ended a minute after it; one that is still running has no end."""
    flow_runs = [UUID(i) for r in runs for i in r["flow_run"]]
    for table, ids in (("flow_run", flow_runs),
                       ("task_run", [UUID(i) for r in runs for i in r["task_run"]])):
        sql(root, f"UPDATE {table} SET expected_start_time = $2, start_time = $2, end_time = "
                  "CASE WHEN state_type = 'RUNNING' THEN NULL ELSE $3::timestamptz END "
                  "WHERE id = ANY($1::uuid[])", ids, moment, moment + timedelta(minutes=1))
    sql(root, "UPDATE log SET timestamp = $2 WHERE flow_run_id = ANY($1::uuid[])",
        flow_runs, moment)


def history(root: Path, runs: list[dict[str, list[str]]]) -> dict[str, int]:
    """How many rows of these runs are left in each table the vacuum deletes from."""
    flow_runs = [UUID(i) for r in runs for i in r["flow_run"]]
    counts = {}
    for table, column in (("flow_run", "id"), ("flow_run_state", "flow_run_id"),
                          ("task_run", "flow_run_id"), ("log", "flow_run_id"),
                          ("artifact", "flow_run_id")):
        counts[table] = sql(root, f'SELECT count(*) FROM "{table}" '
                                  f"WHERE {column} = ANY($1::uuid[])", flow_runs)[0][0]
    counts["task_run_state"] = sql(
        root, "SELECT count(*) FROM task_run_state WHERE task_run_id = ANY($1::uuid[])",
        [UUID(i) for r in runs for i in r["task_run"]])[0][0]
    return counts


def events(root: Path, batch: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows of these events are left in the events tables."""
    ids = [UUID(e["id"]) for e in batch]
    return {table: sql(root, f'SELECT count(*) FROM "{table}" WHERE {column} = ANY($1::uuid[])',
                       ids)[0][0]
            for table, column in (("events", "id"), ("event_resources", "event_id"))}


def probe_events(kind: str, moment: datetime, count: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid4()), "occurred": moment.isoformat(), "event": kind,
             "resource": {"prefect.resource.id": f"{kind}.{n}"},
             "related": [{"prefect.resource.id": "itest.retention",
                          "prefect.resource.role": "probe"}],
             "payload": {"n": n}} for n in range(count)]


def test_the_vacuum_deletes_history_past_its_retention(stack: Path) -> None:
    now = datetime.now(UTC)
    flow = post(stack, "/flows/", {"name": "retention-probe"})["id"]
    old = [seed_run(stack, flow, f"old-{n}") for n in range(3)]
    # A subflow run of an old run goes with it (its parent task run's deletion unlinks it,
    # and it is then an old top-level run itself).
    old.append(seed_run(stack, flow, "old-subflow", parent_task_run_id=old[0]["task_run"][0]))
    recent = [seed_run(stack, flow, f"recent-{n}") for n in range(2)]
    # A run that never finished is kept, however old.
    unfinished = [seed_run(stack, flow, "old-unfinished", state="RUNNING")]
    backdate(stack, old + unfinished, now - AGO)
    backdate(stack, recent, now - timedelta(days=1))
    # One request, old events first: the event persister writes what it has queued in one
    # transaction, in order, so once the recent ones are in the database the old ones were
    # written too (the vacuum may have deleted them already: it runs every 5 s here).
    old_events = probe_events("itest.retention.old", now - AGO, 4)
    recent_events = probe_events("itest.retention.recent", now - timedelta(days=1), 4)
    httpx.post(api(stack) + "/events", json=old_events + recent_events,
               timeout=10).raise_for_status()
    wait_for(lambda: events(stack, recent_events)["events"] == 4, 120,
             "the recent events to be persisted")

    gone = dict.fromkeys(("flow_run", "flow_run_state", "task_run", "log", "artifact",
                          "task_run_state"), 0)
    wait_for(lambda: history(stack, old) == gone, 180,
             "the vacuum to delete the old flow runs with their task runs, logs and artifacts")
    wait_for(lambda: events(stack, old_events) == {"events": 0, "event_resources": 0}, 180,
             "the vacuum to delete the old events and their resources")

    for kept in (recent, unfinished):
        assert history(stack, kept) == {
            "flow_run": len(kept), "flow_run_state": len(kept), "task_run": 2 * len(kept),
            "log": 3 * len(kept), "artifact": len(kept), "task_run_state": 2 * len(kept)}
    assert events(stack, recent_events) == {"events": 4, "event_resources": 8}
    names = {r["name"] for r in post(stack, "/flow_runs/filter", {
        "flow_runs": {"id": {"any_": [i for r in old + recent + unfinished
                                      for i in r["flow_run"]]}}})}
    assert names == {"recent-0", "recent-1", "old-unfinished"}


def test_the_stacks_logs_show_no_unexpected_errors(stack: Path) -> None:
    assert log_problems(stack / "state" / "logs") == []
