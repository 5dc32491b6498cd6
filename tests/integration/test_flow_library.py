"""The flow library, end to end: every flow deployed to a real stack and run by its worker.

One stack for the module (its own ports and pool). The deployments are registered through the
Prefect client against the stack's API, flow runs are created through the REST API, and the
assertions read what the platform recorded: final states, state messages, logs, artifacts,
task runs. Independent runs are created up front so the worker runs them in parallel; each
test then waits (bounded) for its own run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

import prefectstack.flows
from prefectstack.flows.shell import SHELL_COMMAND_ENV
from prefectstack.flows.windows import WINDOWS_QUEUE

from .conftest import (
    api_password,
    cli,
    direct_api,
    flows_writable,
    free_port,
    stack_yaml,
    status,
    wait_for,
)

pytestmark = pytest.mark.integration

FLOWS_DIR = Path(prefectstack.flows.__file__).resolve().parent
POOL = "flowlib-pool"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
WAIT = 180.0

# entrypoint -> deployment options; every deployment is named "lib".
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "hello.py:hello": {},
    "shell.py:shell_command": {},
    "content_verification.py:verify_content": {},
    "fan_out.py:fan_out": {},
    "ingestion.py:ingest_records": {},
    "windows.py:windows_command": {"work_queue_name": WINDOWS_QUEUE},
}
# More deployments of the same flows: (entrypoint, name, options). A shell deployment's
# command is the deployment's own (a job variable), never a run parameter.
MORE_DEPLOYMENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("shell.py:shell_command", "doomed",
     {"job_variables": {"env": {SHELL_COMMAND_ENV: "echo boom; exit 7"}}}),
]


@dataclass
class Platform:
    root: Path
    api: str
    data: Path
    runs: dict[str, str] = field(default_factory=dict)  # test key -> flow run id


# -- the REST API, read the way a user's tooling would -------------------------------------


def post(platform: Platform, path: str, body: dict[str, Any]) -> Any:
    return httpx.post(f"{platform.api}{path}", json=body, timeout=30).raise_for_status().json()


def get(platform: Platform, path: str) -> Any:
    return httpx.get(f"{platform.api}{path}", timeout=30).raise_for_status().json()


def create_run(platform: Platform, deployment: str, parameters: dict[str, Any],
               job_variables: dict[str, Any] | None = None) -> str:
    found = get(platform, f"/deployments/name/{deployment}")
    body: dict[str, Any] = {"parameters": parameters}
    if job_variables is not None:
        body["job_variables"] = job_variables
    run = post(platform, f"/deployments/{found['id']}/create_flow_run", body)
    return str(run["id"])


def shell_run(platform: Platform, command: str, **parameters: Any) -> str:
    """A run of shell-command/lib with `command`: a developer's one-off (these calls use the
    API's own credentials), overriding the deployment's job variables for this run."""
    return create_run(platform, "shell-command/lib", parameters,
                      job_variables={"env": {SHELL_COMMAND_ENV: command}})


def flow_run(platform: Platform, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = get(platform, f"/flow_runs/{run_id}")
    return data


def finished(platform: Platform, run_id: str) -> dict[str, Any]:
    """The flow run once it reached a final state (bounded wait)."""

    def check() -> dict[str, Any] | None:
        run = flow_run(platform, run_id)
        return run if run["state"] and run["state"]["type"] in FINAL else None

    result: dict[str, Any] = wait_for(check, WAIT, f"flow run {run_id} to finish", interval=1)
    return result


def log_messages(platform: Platform, run_ids: list[str]) -> list[str]:
    entries = post(platform, "/logs/filter", {
        "logs": {"flow_run_id": {"any_": run_ids}}, "limit": 200, "sort": "TIMESTAMP_ASC",
    })
    return [entry["message"] for entry in entries]


def logs_with(platform: Platform, run_id: str, line_start: str) -> list[str]:
    """The run's log messages once one of them starts with `line_start` (logs ship in batches).

    "Starts with", because the flow's own "running: <command>" line contains every word.
    """
    result: list[str] = wait_for(
        lambda: (m := log_messages(platform, [run_id]))
        and any(x.startswith(line_start) for x in m) and m,
        60, f"a line starting with {line_start!r} in the logs of {run_id}",
    )
    return result


def artifact(platform: Platform, run_id: str, key: str) -> dict[str, Any]:
    found = post(platform, "/artifacts/filter", {
        "artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}},
    })
    assert len(found) == 1, found
    data: dict[str, Any] = found[0]
    return data


def subflow_runs(platform: Platform, parent_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = post(platform, "/flow_runs/filter", {
        "flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
    })
    return runs


def task_runs(platform: Platform, flow_run_ids: list[str], name_like: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = post(platform, "/task_runs/filter", {
        "flow_runs": {"id": {"any_": flow_run_ids}},
        "task_runs": {"name": {"like_": name_like}},
    })
    return runs


def message(run: dict[str, Any]) -> str:
    return str(run["state"]["message"] or "")


# -- the stack and its deployments ---------------------------------------------------------


async def register(pool: str) -> None:
    from prefect import Flow

    from prefectstack.jobs.examples import ensure_pool

    await ensure_pool(pool)
    every = [(e, "lib", o) for e, o in DEPLOYMENTS.items()] + MORE_DEPLOYMENTS
    for entrypoint, name, options in every:
        flow = await Flow.afrom_source(str(FLOWS_DIR), entrypoint)
        await flow.adeploy(
            name=name, work_pool_name=pool, tags=["flow-library-test"],
            build=False, push=False, print_next_steps=False, **options,
        )


def register_deployments(api: str, home: Path, auth_string: str) -> None:
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_HOME,
        temporary_settings,
    )

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_HOME: str(home),
                                     PREFECT_API_AUTH_STRING: auth_string}):
        asyncio.run(register(POOL))


def write_file(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def prepare_data(data: Path) -> None:
    for name in ("clean/a.txt", "clean/docs/readme.md", "clean/.hidden/Ignored File"):
        write_file(data / name, "x")
    for name in ("bad/ok-file.txt", "bad/Bad Name.TXT", "bad/sub/ok.csv", "bad/sub/OK.csv"):
        write_file(data / name, "x")
    write_file(data / "records/a.json", {"id": 1, "country": "NL"})
    write_file(data / "records/b.json", {"id": 2, "country": "NL"})
    write_file(data / "records/c.json", "{not json")
    write_file(data / "records/d.json", {"id": 4, "country": "XX"})
    write_file(data / "reference.json", {"NL": {"name": "Netherlands", "region": "Europe"}})


def ingestion_parameters(data: Path) -> dict[str, Any]:
    return {
        "source_dir": str(data / "records"),
        "lookup_file": str(data / "reference.json"),
        "cache_dir": str(data / "cache"),
    }


def submit_independent_runs(platform: Platform) -> None:
    data = platform.data
    platform.runs |= {
        # the run's args are data: printed back, never run
        "shell-fail": shell_run(
            platform, """printf 'arg:%s\\n' "$@"; echo alpha-1; echo alpha-2; echo alpha-3 >&2; """
            "exit 3", tail_lines=2, args=[f"$(touch {data}/pwned)", "a b; touch x", "-n"]),
        "shell-timeout": shell_run(platform, "echo started; sleep 171; echo never",
                                   timeout_seconds=3),
        "content-clean": create_run(platform, "content-verification/lib", {
            "folder": str(data / "clean"),
        }),
        "content-bad": create_run(platform, "content-verification/lib", {
            "folder": str(data / "bad"), "artifact_key": "content-bad",
        }),
        "fan-out": create_run(platform, "fan-out/lib", {
            "calls": [
                {"deployment": "hello/lib", "parameters": {"name": "fan-out"}},
                {"deployment": "shell-command/doomed", "label": "doomed"},
            ],
            "timeout_seconds": 150,
            "poll_interval_seconds": 1,
        }),
        "ingest-1": create_run(platform, "ingest-records/lib", ingestion_parameters(data)),
        "windows": create_run(platform, "windows-command/lib", {}),
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A running stack with the library deployed and the independent runs submitted."""
    root = tmp_path_factory.mktemp("flowlib")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker")}
    text = stack_yaml(**ports)
    text = text.replace("itest-pool", POOL).replace("name: itest", "name: flowlib")
    text = text.replace("enabled: true", "enabled: false")  # no example runs competing
    assert POOL in text and "name: flowlib" in text and "enabled: false" in text, text
    if "edge:" not in text:  # the flows need no edge; its fixed default ports may be taken
        text += "edge:\n  enabled: false\n"
    (root / "stack.yaml").write_text(text)
    try:
        cli("up", "--detach", cwd=root)
        assert status(root)["phase"] == "ready"
        api = direct_api(root, ports["api"])
        register_deployments(f"http://127.0.0.1:{ports['api']}/api", root / "client-home",
                             f"prefectstack:{api_password(root)}")
        platform = Platform(root=root, api=api, data=root / "data")
        prepare_data(platform.data)
        flows_writable(platform.data)  # the ingestion flow writes its output there
        submit_independent_runs(platform)
        yield platform
    finally:
        cli("down", cwd=root, check=False, timeout=120)


# -- the tests -------------------------------------------------------------------------------


def test_deployments_registered_in_the_pool(platform: Platform) -> None:
    deployments = post(platform, "/deployments/filter", {
        "deployments": {"tags": {"all_": ["flow-library-test"]}},
    })
    assert {d["work_pool_name"] for d in deployments} == {POOL}
    assert len(deployments) == len(DEPLOYMENTS) + len(MORE_DEPLOYMENTS)
    windows = get(platform, "/deployments/name/windows-command/lib")
    assert windows["work_queue_name"] == WINDOWS_QUEUE


def test_shell_streams_lines_while_running(platform: Platform, tmp_path: Path) -> None:
    # The command waits for a gate file that the test creates only after it has seen the
    # first line in the API: proof that lines arrive while the command still runs.
    command = (
        "echo before-gate; echo on-stderr >&2; n=0; "
        'while [ ! -f "$1" ] && [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done; echo after-gate'
    )
    run_id = shell_run(platform, command, args=[str(tmp_path / "gate")])
    logs_with(platform, run_id, "before-gate")
    assert flow_run(platform, run_id)["state"]["type"] == "RUNNING"
    (tmp_path / "gate").touch()
    assert finished(platform, run_id)["state"]["type"] == "COMPLETED"
    messages = logs_with(platform, run_id, "after-gate")
    order = [messages.index(m) for m in ("before-gate", "on-stderr", "after-gate")]
    assert order == sorted(order)


def test_shell_failure_quotes_the_tail(platform: Platform) -> None:
    run = finished(platform, platform.runs["shell-fail"])
    assert run["state"]["type"] == "FAILED"
    text = message(run)
    assert "exited with code 3" in text
    assert "alpha-2\nalpha-3" in text and "alpha-1" not in text  # tail_lines=2
    messages = logs_with(platform, run["id"], "alpha-1")
    data = platform.data
    assert [m for m in messages if m.startswith("arg:")] == [
        f"arg:$(touch {data}/pwned)", "arg:a b; touch x", "arg:-n"]
    assert not (data / "pwned").exists()


def test_shell_timeout_kills_the_command(platform: Platform) -> None:
    run = finished(platform, platform.runs["shell-timeout"])
    assert run["state"]["type"] == "FAILED"
    assert "timed out after 3s" in message(run) and "started" in message(run)

    def leftovers() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["sleep", "171"]]

    wait_for(lambda: not leftovers(), 30, "the timed-out command's child to be gone")
    assert "never" not in log_messages(platform, [run["id"]])


def test_content_verification_passes_on_a_clean_folder(platform: Platform) -> None:
    run = finished(platform, platform.runs["content-clean"])
    assert run["state"]["type"] == "COMPLETED", message(run)
    report = artifact(platform, run["id"], "content-verification")
    assert report["type"] == "markdown" and "All 2 file(s)" in report["data"]


def test_content_verification_reports_every_violation(platform: Platform) -> None:
    run = finished(platform, platform.runs["content-bad"])
    assert run["state"]["type"] == "FAILED"
    assert "4 naming violation(s) in 4 file(s)" in message(run)
    report = artifact(platform, run["id"], "content-bad")
    assert report["type"] == "table"
    rows = json.loads(report["data"])
    assert sorted((r["path"], r["rule"]) for r in rows) == [
        ("Bad Name.TXT", "pattern"),
        ("sub/OK.csv", "case-collision"),
        ("sub/OK.csv", "pattern"),
        ("sub/ok.csv", "case-collision"),
    ]


def test_fan_out_reports_one_success_and_one_failure(platform: Platform) -> None:
    run = finished(platform, platform.runs["fan-out"])
    assert run["state"]["type"] == "FAILED"
    assert message(run).startswith("1 of 2 run(s) succeeded; failed: doomed: Failed")
    assert "exited with code 7" in message(run)
    table = json.loads(artifact(platform, run["id"], "fan-out-summary")["data"])
    rows = {r["label"]: r for r in table}
    assert {k: v["outcome"] for k, v in rows.items()} == {
        "hello/lib": "succeeded", "doomed": "failed",
    }
    children = {c["id"]: c for c in subflow_runs(platform, run["id"])}
    assert set(children) == {r["flow_run_id"] for r in rows.values()}
    hello = children[rows["hello/lib"]["flow_run_id"]]
    assert hello["state"]["type"] == "COMPLETED"
    # hello's print() reached the run's logs through log_prints
    assert logs_with(platform, hello["id"], "Hello, fan-out! (from prefectstack on ")


def test_ingestion_quarantines_bad_records_and_keeps_going(platform: Platform) -> None:
    data = platform.data
    run = finished(platform, platform.runs["ingest-1"])
    assert run["state"]["type"] == "COMPLETED", message(run)
    assert sorted(p.name for p in (data / "records" / "enriched").iterdir()) == ["a.json", "b.json"]
    enriched = json.loads((data / "records" / "enriched" / "a.json").read_text())
    assert enriched["enrichment"] == {"country": {"name": "Netherlands", "region": "Europe"}}
    quarantine = data / "records" / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == [
        "c.json", "c.json.error.txt", "d.json", "d.json.error.txt",
    ]
    assert "not valid JSON" in (quarantine / "c.json.error.txt").read_text()
    assert "no reference data for country='XX'" in (quarantine / "d.json.error.txt").read_text()
    assert sorted(p.name for p in (data / "records").glob("*.json")) == ["a.json", "b.json"]
    # one subflow run per record; the two bad ones failed without stopping the batch
    records = {r["name"]: r["state"]["type"] for r in subflow_runs(platform, run["id"])}
    assert records == {
        "record-a.json": "COMPLETED", "record-b.json": "COMPLETED",
        "record-c.json": "FAILED", "record-d.json": "FAILED",
    }
    summary = artifact(platform, run["id"], "ingestion-summary")["data"]
    assert "2 processed, 2 quarantined, 1 enrichment lookup(s) served from cache" in summary
    assert str(quarantine) in summary


def test_second_ingestion_hits_the_enrichment_cache(platform: Platform) -> None:
    finished(platform, platform.runs["ingest-1"])
    run = finished(platform, create_run(
        platform, "ingest-records/lib", ingestion_parameters(platform.data)))
    assert run["state"]["type"] == "COMPLETED", message(run)
    children = [c["id"] for c in subflow_runs(platform, run["id"])]
    assert len(children) == 2  # the quarantined records are no longer in the source folder
    lookups = task_runs(platform, children, "lookup")
    assert [t["state"]["name"] for t in lookups] == ["Cached", "Cached"]
    summary = artifact(platform, run["id"], "ingestion-summary")["data"]
    assert "2 processed, 0 quarantined, 2 enrichment lookup(s) served from cache" in summary
    assert not any("looking up" in m for m in log_messages(platform, children))
    assert any((platform.data / "cache").iterdir())


def test_windows_flow_fails_clearly_elsewhere(platform: Platform) -> None:
    run = finished(platform, platform.runs["windows"])
    assert run["state"]["type"] == "FAILED"
    text = message(run)
    assert "NotOnWindows" in text and "needs a Windows worker" in text
    assert f"--work-queue {WINDOWS_QUEUE}" in text
    assert run["work_queue_name"] == WINDOWS_QUEUE


def test_no_run_left_behind(platform: Platform) -> None:
    """Every run this module started reached a final state (the fan-out cancelled nothing)."""
    runs = post(platform, "/flow_runs/filter", {"limit": 200})
    assert runs and all(r["state"]["type"] in FINAL for r in runs), [
        (r["name"], r["state"]["type"]) for r in runs if r["state"]["type"] not in FINAL
    ]
