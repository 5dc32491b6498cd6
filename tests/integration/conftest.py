"""Helpers for integration tests: real PostgreSQL, Redis and Prefect processes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


_HANDED_OUT: set[int] = set()
_RANGE = 2500  # ports per xdist worker
_STRIDE = 10  # room for ports a stack derives from one (API replicas take port+1, ...)


def free_port() -> int:
    """A port that is free now and was never handed out before in this test process.

    Asking the OS for port 0 can return the same port twice before either is bound (seen:
    PostgreSQL and the auth service both got 41655), and an ephemeral port can be taken by
    any outgoing connection meanwhile. So each pytest-xdist worker takes ports from its own
    range below Linux's ephemeral range (32768+), every `_STRIDE`-th port, skipping any in
    use. Eight ranges of 2,500: the suite's two workers (gw0, gw1) plus room for runs by
    hand beside it (PYTEST_XDIST_WORKER=gw2 ... gw7)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = 10000 + (index % 8) * _RANGE
    for port in range(start, start + _RANGE, _STRIDE):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {start}-{start + _RANGE}")


def stack_yaml(warm: bool = True, **ports: int) -> str:
    """A test stack on free ports; `https`, `http` and `auth` are allocated when not given.

    Its worker is the default, the warm worker. `warm=False` gives Prefect's stock process
    worker, for the modules where it is the subject (the one-API conformance round of
    test_promises.py, test_reconcile.py's process tree and reaper); it costs several times
    the CPU per flow run, and the suite is CPU-bound."""
    for name in ("https", "http", "auth"):
        ports.setdefault(name, free_port())
    return f"""\
version: 1
name: itest
state_dir: state
postgres:
  port: {ports["pg"]}
redis:
  port: {ports["redis"]}
api:
  port: {ports["api"]}
edge:
  https_port: {ports["https"]}
  http_port: {ports["http"]}
auth:
  port: {ports["auth"]}
workers:
  - name: worker-1
    pool: itest-pool
    limit: 4
    poll_seconds: 2
{"" if warm else "    warm: false" + chr(10)}    health_port: {ports["worker"]}
examples:
  enabled: true
  interval_seconds: 3600
"""


def cli(
    *args: str, cwd: Path, timeout: float = 600, check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "prefectstack", *args],
        cwd=cwd,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"prefectstack {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


# `status` exits like `systemctl is-active`: 0 healthy, else 3 not running, 4 degraded, 5
# failed, 6 stale (1 and 2 stay errors of the command itself).
STATUS_CODES = (0, 3, 4, 5, 6)


def status(cwd: Path) -> dict[str, Any]:
    result = cli("status", "--json", cwd=cwd, check=False)
    assert result.returncode in STATUS_CODES, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def api_password(root: Path, state_dir: str = "state") -> str:
    """The API processes' own password (Prefect's server auth): what a test that plays the
    stack itself, straight to an API process's loopback port, needs. Nobody else has it."""
    values: dict[str, str] = json.loads((root / state_dir / "secrets.json").read_text())
    return values["api_password"]


def direct_api(root: Path, port: int, state_dir: str = "state") -> str:
    """An API process's URL with its server credentials (httpx sends them as Basic auth)."""
    return f"http://prefectstack:{api_password(root, state_dir)}@127.0.0.1:{port}/api"


def service(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["services"] if s["name"] == name)


def load_factor() -> float:
    """How much busier than one runnable process per core the machine is right now: waits
    stretch with it, so a loaded machine (a CI neighbour, a parallel build) slows the tests
    down instead of failing them."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    timeout *= load_factor()
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stack directory with its own free ports; torn down whatever happens."""
    root = tmp_path_factory.mktemp("stack")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_yaml(**ports))
    (root / "ports.json").write_text(json.dumps(ports))
    yield root
    cli("down", cwd=root, check=False, timeout=120)


# -- logs are evidence ------------------------------------------------------------------------

# A log record starts with a time stamp (Prefect: `13:37:55.522 | ERROR   | ...`, PostgreSQL:
# `2026-11-29 13:36:05.423 UTC [14298] ERROR:  ...`); continuation lines (tracebacks) belong
# to the record above them.
_RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d")
_PROBLEM = re.compile(r"\| (ERROR|CRITICAL) +\||\] (ERROR|FATAL|PANIC): |^Traceback |Unknown task")

# Lines that are expected in a healthy stack, each with why. Anything else at ERROR level, any
# traceback and any `Unknown task` fails the test that scans the logs.
ALLOWED_LOG_PROBLEMS: tuple[tuple[str, str], ...] = (
    # Prefect creates work pools and block types "if missing" by inserting and answering 409
    # on the unique violation (the `pools` one-shot and the worker race for the same pool).
    ("postgres", r"ERROR:  duplicate key value violates unique constraint"),
    ("postgres", r"^DETAIL:  Key \(name\)="),
    ("postgres", r"^STATEMENT:  INSERT INTO"),
)


def log_problems(logs_dir: Path, allowed: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Every unexpected ERROR record, traceback and `Unknown task` line in the stack's logs.

    `allowed` adds (service, regex) pairs to ALLOWED_LOG_PROBLEMS for one test's deliberate
    failures; a regex matches the record's first line (its traceback is allowed with it).
    `Unknown task` is never allowed: it means a docket worker dropped a task.
    """
    rules = [(svc, re.compile(rx)) for svc, rx in (*ALLOWED_LOG_PROBLEMS, *allowed)]
    problems: list[str] = []
    for path in sorted(logs_dir.glob("*.log")):
        service = path.stem
        record_allowed = False
        in_traceback = False
        for line in path.read_text(errors="replace").splitlines():
            if _RECORD_START.match(line) or line.startswith(("DETAIL:", "STATEMENT:", "---")):
                record_allowed = any(svc == service and rx.search(line) for svc, rx in rules)
            if "Unknown task" in line or (_PROBLEM.search(line) and not record_allowed):
                problems.append(f"{path.name}: {line[:300]}")
                in_traceback = line.startswith("Traceback ")
            elif in_traceback and line[:1] not in ("", " ", "\t"):
                # The exception a traceback ends with says what happened: keep it with it.
                problems.append(f"{path.name}:   -> {line[:300]}")
                in_traceback = False
    return problems


# -- where flow runs may write ----------------------------------------------------------------

FLOWS_ACCOUNT = "prefectstack-flows"


def flows_writable(path: Path) -> Path:
    """`path` (a directory, made if missing) given to the stack's flow runs to write in. Run
    as root they run as the flows account (issue 9), which may write only where it is given
    the right, as an operator would give it: the tree is chowned to it. A no-op as a normal
    user (flows run as you). Call it after `up`, which creates the account."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(FLOWS_ACCOUNT)
        for directory, _dirs, files in os.walk(path):
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)
    return path
