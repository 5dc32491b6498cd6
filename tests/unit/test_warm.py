"""The warm worker's pure parts: its messages, a child's environment and `sys.path`, exit
statuses, and how the stack file maps onto the worker's command."""

from __future__ import annotations

import os
import signal

import pytest
from pydantic import ValidationError

from prefectstack import topology
from prefectstack.stack.model import CURRENT_VERSION, Stack
from prefectstack.warm import protocol


def test_messages_round_trip() -> None:
    spawn = {"op": "spawn", "id": "r1", "args": ["/tmp/c.json"], "env": {"A": "1"}, "cwd": None}
    assert protocol.decode(protocol.encode(spawn)) == spawn
    for message in (
        {"op": "ready", "pid": 10},
        {"op": "started", "id": "r1", "pid": 11},
        {"op": "failed", "id": "r1", "error": "fork: no memory"},
        {"op": "exited", "id": "r1", "pid": 11, "returncode": -9},
    ):
        assert protocol.decode(protocol.encode(message)) == message


@pytest.mark.parametrize(("data", "error"), [
    (b"\xff", "not JSON"),
    (b"[1]", "JSON object"),
    (b'{"op": "boom"}', "unknown op"),
    (b'{"op": "started", "id": "x"}', "lacks pid"),
    (b'{"op": "spawn", "id": "x", "args": [], "env": {"A": 1}, "cwd": null}', "env"),
    (b'{"op": "spawn", "id": "x", "args": "a", "env": {}, "cwd": null}', "args"),
    (b'{"op": "spawn", "id": "x", "args": [], "env": {}, "cwd": 3}', "cwd"),
])
def test_bad_messages_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.decode(data)


def test_oversized_messages_are_refused() -> None:
    big = {"op": "spawn", "id": "x", "args": [], "env": {"A": "x" * protocol.MAX_MESSAGE},
           "cwd": None}
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.encode(big)
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.decode(b" " * (protocol.MAX_MESSAGE + 1))


def test_returncode_is_subprocess_style() -> None:
    assert protocol.returncode(0) == 0
    assert protocol.returncode(3 << 8) == 3
    assert protocol.returncode(signal.SIGKILL) == -signal.SIGKILL


def test_the_child_environment_is_exactly_the_runs() -> None:
    environ = {"PARENT_ONLY": "x", "PATH": "/bin", "PREFECT_API_URL": "old"}
    protocol.apply_environment(environ, {"PATH": "/usr/bin", "PREFECT_API_URL": "new", "V": "1"})
    assert environ == {"PATH": "/usr/bin", "PREFECT_API_URL": "new", "V": "1"}


def test_child_sys_path_is_that_of_python_dash_m() -> None:
    base = ["/usr/lib/python311.zip", "/usr/lib/python3.11", "/site"]
    env = {"PYTHONPATH": os.pathsep.join(["/flows", "", "/site"])}
    assert protocol.child_sys_path(base, "/work", env) == [
        "/work", "/flows", "/site", "/usr/lib/python311.zip", "/usr/lib/python3.11"]
    assert protocol.child_sys_path(base, "/work", {}) == ["/work", *base]


def _workers(**worker: object) -> dict[str, topology.Service]:
    stack = Stack.model_validate({
        "version": CURRENT_VERSION, "workers": [{"name": "w", "pool": "p", **worker}]})
    return {s.name: s for s in topology.build(stack)}


def test_warm_workers_run_the_warm_worker_with_the_same_arguments() -> None:
    stock, warm = _workers(warm=False)["w"], _workers(preload=["pandas", "my_lib.io"])["w"]
    assert stock.argv[:3] == ("prefect", "worker", "start")
    assert "PREFECTSTACK_WARM_PRELOAD" not in stock.env
    assert warm.argv[:3] == ("python", "-m", "prefectstack.warm.worker")
    assert warm.argv[3:] == stock.argv[3:]  # `prefect worker start`'s own arguments
    assert warm.env["PREFECTSTACK_WARM_PRELOAD"] == "pandas,my_lib.io"


def test_preload_takes_module_names_only() -> None:
    with pytest.raises(ValidationError):
        Stack.model_validate({"version": CURRENT_VERSION, "workers": [
            {"name": "w", "pool": "p", "warm": True, "preload": ["os; rm -rf /"]}]})


def test_a_forked_child_shows_its_run_id_in_proc_environ() -> None:
    import time

    import psutil

    from prefectstack.warm import child

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            protocol.apply_environment(os.environ, {"PATH": "/usr/bin",
                                                    "PREFECT__FLOW_RUN_ID": "run-1"})
            os.write(write, b"1" if child.label_process(os.environ) else b"0")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(read, 1) == b"1"
        assert psutil.Process(pid).environ() == {"PREFECT__FLOW_RUN_ID": "run-1"}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)


def test_the_warm_worker_limits_concurrent_runs_by_the_machine_unless_told() -> None:
    from prefectstack.warm.worker import RUNS_PER_CORE, with_default_limit

    base = ["--pool", "default", "--type", "process"]
    assert with_default_limit(base, 2) == [*base, "--limit", str(2 * RUNS_PER_CORE)]
    assert with_default_limit(base, None) == [*base, "--limit", str(RUNS_PER_CORE)]
    for given in (["--limit", "3"], ["-l", "3"], ["--limit=3"]):
        assert with_default_limit([*base, *given], 64) == [*base, *given]


def test_the_warm_job_configuration_is_prefects_with_the_same_environment() -> None:
    """Same pool template (the stock worker serves the same pools), same base environment
    (built once instead of per run)."""
    from prefect.settings import get_current_settings
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    from prefectstack.warm.worker import WarmJobConfiguration, WarmProcessWorker

    assert (WarmProcessWorker.get_default_base_job_template()
            == ProcessWorker.get_default_base_job_template())
    expected = get_current_settings().to_environment_variables(exclude_unset=True)
    assert WarmJobConfiguration._base_environment() == expected
    assert ProcessJobConfiguration._base_environment() == expected
    first = WarmJobConfiguration._base_environment()
    first["PREFECT_API_URL"] = "changed by one run"  # each run gets its own copy
    assert WarmJobConfiguration._base_environment() == expected


def test_the_forkserver_leaves_no_model_for_a_child_to_build() -> None:
    """Prefect's client models whose build pydantic defers are built in the parent, before
    the first fork, instead of in every child."""
    import subprocess
    import sys

    check = (
        "from prefectstack.warm import forkserver\n"
        "forkserver.preload([])\n"
        "from pydantic import BaseModel\n"
        "todo, seen, left = [BaseModel], set(), []\n"
        "while todo:\n"
        "    for c in todo.pop().__subclasses__():\n"
        "        if c not in seen:\n"
        "            seen.add(c); todo.append(c)\n"
        "            if not getattr(c, '__pydantic_complete__', True): left.append(c)\n"
        "import pydantic.v1, anyio._backends._asyncio\n"
        "print(len(seen), left)\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=120, check=True)
    count, left = done.stdout.split(" ", 1)
    assert int(count) > 100 and left.strip() == "[]"
