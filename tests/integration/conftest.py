"""Helpers for integration tests: real PostgreSQL, Redis and Prefect processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_yaml(**ports: int) -> str:
    """A test stack on free ports; `https`, `http` and `auth` are allocated when not given."""
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
    health_port: {ports["worker"]}
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


def status(cwd: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli("status", "--json", cwd=cwd).stdout)
    return data


def service(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["services"] if s["name"] == name)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
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
