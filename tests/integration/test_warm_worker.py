"""The warm worker keeps Prefect's process-worker promises, on a real stack whose only worker
is warm (`workers[].warm: true`), through the edge with per-role keys.

Each run is a forked child of the worker's forkserver with its own pid, recorded as the
run's infrastructure pid; task runs and logs (print and logging) reach the API; cancel kills
the child and ends the run Cancelled; a child killed with -9 ends Crashed and the worker
carries on; a forkserver killed with -9 takes its runs down as Crashed and is restarted;
job variables `env` and `working_dir`, flow timeouts and retries work; an edited flow file
takes effect on the next run (the flow's modules load in the child, never in the parent),
and so does a new commit to a flow pulled from git (pull steps).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import cli, flows_writable, free_port, log_problems, stack_yaml, wait_for
from .test_promises import Stack

# The first test also waits for the stack to start and the deployments to register.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

FLOWS = Path(__file__).with_name("warm_flows.py")
POOL = "itest-pool"
ALLOWED = (
    ("worker-1", r"first attempt fails on purpose|Task run 'fails_once-"),
    ("worker-1", r"exceeded timeout of 3(\.0)? second|Flow run '.*' - Finished in state TimedOut"),
    ("worker-1", r"forkserver .* exited"),
    # `overrun` times out on purpose: Prefect's engine (the same code as in a stock child)
    # logs the flow's FlowRunTimeoutError with its traceback after the TimedOut state.
    ("worker-1", r"Engine execution exited with unexpected exception"),
)
DEPLOY = """
from warm_flows import report, sleeper, overrun, flaky
src = {src!r}
for fn in (report, sleeper, overrun, flaky):
    fn.from_source(source=src, entrypoint=f"warm_flows.py:{{fn.__name__}}").deploy(
        name=fn.__name__, work_pool_name={pool!r}, build=False, push=False)
"""
EDITED = """
from prefect import flow, get_run_logger
VERSION = {version!r}

@flow
def edited() -> str:
    get_run_logger().info("edited version %s", VERSION)
    return VERSION
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("warm")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    text = stack_yaml(**ports)  # the default: the warm worker
    text = text.replace("examples:\n  enabled: true", "examples:\n  enabled: false")
    (root / "stack.yaml").write_text(text)
    (root / "ports.json").write_text(json.dumps(ports))
    shutil.copy(FLOWS, root / "warm_flows.py")
    (root / "edited").mkdir()
    (root / "edited" / "edited_flow.py").write_text(EDITED.format(version="v1"))
    started = time.monotonic()
    try:
        cli("up", "--detach", cwd=root)
        stack = Stack(root, 1, max(1.0, (time.monotonic() - started) / 50), warm=True)
        stack.python("developer", DEPLOY.format(src=str(root), pool=POOL), timeout=600)
        _deploy_without_pull_steps(stack)
        yield stack
    finally:
        cli("down", cwd=root, check=False, timeout=180)


def _deploy_without_pull_steps(stack: Stack) -> None:
    """`edited/edited`: an entrypoint relative to the run's working directory, no pull steps,
    so only `job_variables.working_dir` finds the flow."""
    flow = stack.post("/flows/", {"name": "edited"}, role="developer")
    stack.post("/deployments/", {
        "name": "edited", "flow_id": flow["id"], "work_pool_name": POOL,
        "entrypoint": "edited_flow.py:edited", "pull_steps": [],
        "job_variables": {"working_dir": str(stack.root / "edited")},
    }, role="developer")


def _run(stack: Stack, deployment: str, parameters: dict[str, Any] | None = None,
         job_variables: dict[str, Any] | None = None) -> str:
    dep = stack.deployment(deployment)
    body: dict[str, Any] = {"parameters": parameters or {}}
    if job_variables:
        body["job_variables"] = job_variables
    # Job variables can change what runs (env, command): only a developer may set them.
    role = "developer" if job_variables else "operator"
    run = stack.post(f"/deployments/{dep['id']}/create_flow_run", body, role=role)
    return str(run["id"])


def _log(stack: Stack, run_id: str, pattern: str) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        return next((m for line in stack.logs(run_id) if (m := re.search(pattern, line))), None)

    match: re.Match[str] = wait_for(found, stack.wait(60), f"/{pattern}/ in {run_id}'s logs", 1)
    return match


def _pid(stack: Stack, run_id: str) -> int:
    pid = wait_for(lambda: stack.flow_run(run_id).get("infrastructure_pid"),
                   stack.wait(60), "the run's process id", 1)
    return int(str(pid).rsplit(":", 1)[-1])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_run_completes_with_task_runs_and_logs(stack: Stack) -> None:
    run_id = _run(stack, "report/report", {"label": "first"})
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    # Task runs reach the server as events, recorded asynchronously: wait for all three.
    wait_for(lambda: len([t for t in stack.task_runs(run_id)
                          if t["state"] and t["state"]["type"] == "COMPLETED"]) == 3,
             stack.wait(60), "3 completed task runs", 1)
    _log(stack, run_id, r"^printed first$")  # print, through log_prints
    _log(stack, run_id, r"report first .* results=\[0, 2, 4\]")  # the run logger


def test_each_run_is_a_forked_child_with_its_own_pid(stack: Stack) -> None:
    runs = [_run(stack, "report/report", {"label": f"pid{i}"}) for i in range(2)]
    seen = []
    for i, run_id in enumerate(runs):
        assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
        match = _log(stack, run_id, rf"report pid{i} pid=(\d+) ppid=(\d+)")
        pid, ppid = int(match[1]), int(match[2])
        assert _pid(stack, run_id) == pid  # the child's own pid is the infrastructure pid
        seen.append((pid, ppid))
    assert seen[0][0] != seen[1][0]
    assert seen[0][1] == seen[1][1]  # both forked by the same parent: the forkserver
    forkserver = psutil.Process(seen[0][1])
    assert "prefectstack.warm.forkserver" in forkserver.cmdline()
    assert "prefectstack.warm.worker" in forkserver.parent().cmdline()


def test_cancel_kills_the_child_and_ends_the_run_cancelled(stack: Stack) -> None:
    run_id = _run(stack, "sleeper/sleeper", {"seconds": 300})
    stack.in_state(run_id, "RUNNING")
    pid = _pid(stack, run_id)
    assert not _gone(pid)
    stack.prefect("operator", "flow-run", "cancel", run_id)
    assert stack.finished(run_id, timeout=90)["state"]["type"] == "CANCELLED"
    wait_for(lambda: _gone(pid), stack.wait(30), "the cancelled child to exit")


def test_a_child_killed_with_9_crashes_and_the_worker_carries_on(stack: Stack) -> None:
    run_id = _run(stack, "sleeper/sleeper", {"seconds": 300})
    stack.in_state(run_id, "RUNNING")
    os.kill(_pid(stack, run_id), signal.SIGKILL)
    final = stack.finished(run_id, timeout=60)
    assert final["state"]["type"] == "CRASHED", final["state"]
    after = _run(stack, "report/report", {"label": "after-kill"})
    assert stack.finished(after)["state"]["type"] == "COMPLETED"


def test_job_variables_env_and_working_dir_are_honored(stack: Stack) -> None:
    run_id = _run(stack, "report/report", {"label": "env"},
                  {"env": {"WARM_VAR": "from-job-variables"}})
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"
    _log(stack, run_id, r"report env .* var=from-job-variables ")
    # `edited/edited` has no pull steps: its flow is found only in its working_dir.
    run_id = _run(stack, "edited/edited")
    assert stack.finished(run_id)["state"]["type"] == "COMPLETED"


def test_edited_flow_code_takes_effect_on_the_next_run(stack: Stack) -> None:
    path = stack.root / "edited" / "edited_flow.py"
    path.write_text(EDITED.format(version="v1"))
    first = _run(stack, "edited/edited")
    assert stack.finished(first)["state"]["type"] == "COMPLETED"
    _log(stack, first, r"edited version v1")
    path.write_text(EDITED.format(version="v2"))
    second = _run(stack, "edited/edited")
    assert stack.finished(second)["state"]["type"] == "COMPLETED"
    _log(stack, second, r"edited version v2")


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=itest", "-c", "user.email=itest@localhost",
                    "-c", "init.defaultBranch=main", *args],
                   cwd=cwd, check=True, capture_output=True, timeout=60)


def _publish(work: Path, bare: Path) -> None:
    """The repository the runs clone, as its own account would serve it: git refuses to
    read a repository another account owns (CVE-2022-24765, even with safe.directory from
    the environment), and run as root the stack's flow runs are the flows account."""
    shutil.rmtree(bare, ignore_errors=True)
    _git("clone", "--bare", "--branch", "main", str(work), str(bare), cwd=work.parent)
    flows_writable(bare)


def test_a_flow_from_git_pull_steps_runs_and_a_new_commit_takes_effect(stack: Stack) -> None:
    """Prefect's `git_clone` pull step, run in the forked child: each run clones the
    repository afresh, so a commit pushed between two runs is what the second one runs."""
    work, bare = stack.root / "git-work", stack.root / "git-flows.git"
    work.mkdir()
    _git("init", cwd=work)
    (work / "git_flow.py").write_text(EDITED.format(version="git-v1"))
    _git("add", "git_flow.py", cwd=work)
    _git("commit", "-m", "v1", cwd=work)
    _publish(work, bare)
    flow = stack.post("/flows/", {"name": "edited"}, role="developer")
    stack.post("/deployments/", {
        "name": "from-git", "flow_id": flow["id"], "work_pool_name": POOL,
        "entrypoint": "git_flow.py:edited",
        "pull_steps": [{"prefect.deployments.steps.git_clone": {
            "repository": f"file://{bare}", "branch": "main"}}],
    }, role="developer")
    first = _run(stack, "edited/from-git")
    assert stack.finished(first)["state"]["type"] == "COMPLETED", stack.logs(first)
    _log(stack, first, r"edited version git-v1")
    (work / "git_flow.py").write_text(EDITED.format(version="git-v2"))
    _git("commit", "-am", "v2", cwd=work)
    _publish(work, bare)
    second = _run(stack, "edited/from-git")
    assert stack.finished(second)["state"]["type"] == "COMPLETED", stack.logs(second)
    _log(stack, second, r"edited version git-v2")


def test_flow_timeout_and_task_retries(stack: Stack) -> None:
    timed_out = _run(stack, "overrun/overrun")
    marker = flows_writable(stack.root / "out") / f"flaky-{time.time_ns()}"
    flaky = _run(stack, "flaky/flaky", {"marker": str(marker)})
    final = stack.finished(timed_out, timeout=120)
    assert final["state"]["type"] == "FAILED" and final["state"]["name"] == "TimedOut"
    assert stack.finished(flaky)["state"]["type"] == "COMPLETED"
    tasks = wait_for(lambda: (t := stack.task_runs(flaky)) and t[0]["run_count"] >= 2
                     and t[0]["state"]["type"] == "COMPLETED" and t,
                     stack.wait(60), "the retried task run", 1)
    assert tasks[0]["run_count"] == 2


def test_a_killed_forkserver_crashes_its_runs_and_is_restarted(stack: Stack) -> None:
    run_id = _run(stack, "sleeper/sleeper", {"seconds": 300})
    stack.in_state(run_id, "RUNNING")
    match = _log(stack, run_id, r"sleeping pid=(\d+) ppid=(\d+)")
    child, forkserver = int(match[1]), int(match[2])
    assert "prefectstack.warm.forkserver" in psutil.Process(forkserver).cmdline()
    os.kill(forkserver, signal.SIGKILL)
    final = stack.finished(run_id, timeout=60)
    assert final["state"]["type"] == "CRASHED", final["state"]
    wait_for(lambda: _gone(child), stack.wait(30), "the orphaned child to die")
    after = _run(stack, "report/report", {"label": "restarted"})
    assert stack.finished(after)["state"]["type"] == "COMPLETED"
    new_parent = int(_log(stack, after, r"report restarted pid=\d+ ppid=(\d+)")[1])
    assert new_parent != forkserver


def test_no_log_shows_a_problem(stack: Stack) -> None:
    problems = log_problems(stack.root / "state" / "logs", ALLOWED)
    assert not problems, "\n".join(problems[:40])
