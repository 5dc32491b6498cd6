"""A port that is already taken stops `up` before anything starts, naming the holder; one
taken after the check fails only the service that needed it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli, free_port, load_factor, stack_yaml, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("detach", [True, False])
def test_port_in_use_is_a_clear_error(tmp_path: Path, detach: bool) -> None:
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker")}
    (tmp_path / "stack.yaml").write_text(stack_yaml(**ports))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["api"]))
        holder.listen()
        args = ["up", "--detach"] if detach else ["up"]
        result = cli(*args, cwd=tmp_path, check=False, timeout=60)
    assert result.returncode == 1
    assert f"port {ports['api']} (api-1) is in use by pid {os.getpid()}" in result.stderr
    assert "api.port" in result.stderr  # the hint says what to change
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "data").exists()  # nothing was started or created


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_failing_api_process_fails_alone_and_up_says_so(tmp_path: Path) -> None:
    """Only the data tier stops the stack (issue 10). Another program takes api-1's port
    after `up` checked it: api-1 gives up after its restarts and fails alone, what needs it
    is blocked, PostgreSQL keeps running, `up --detach` exits 5 naming what the stack started
    without (it applies no deployments to a stack without its API), `status` exits 5, and
    `down` stops what runs."""
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker")}
    (tmp_path / "stack.yaml").write_text(stack_yaml(**ports))
    up = subprocess.Popen([sys.executable, "-m", "prefectstack", "up", "--detach"],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        # PostgreSQL starts first, after the port check: from then on the port is ours to take
        wait_for(lambda: _listening(ports["pg"]) or up.poll() is not None, 300,
                 "PostgreSQL to listen")
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", ports["api"]))
            holder.listen()
            _out, err = up.communicate(timeout=600 * load_factor())
        assert up.returncode == 5, err
        assert "the stack started without: api-1 failed after" in err, err
        assert "Traceback" not in err
        api_log = (tmp_path / "state" / "logs" / "api-1.log").read_text()
        assert f"Port {ports['api']} is already in use" in api_log  # the failure we caused
        state = cli("status", "--json", cwd=tmp_path, check=False)
        assert state.returncode == 5
        units = {s["name"]: s["state"] for s in json.loads(state.stdout)["services"]}
        assert units["api-1"] == "failed" and units["postgres"] == "ready", units
        assert units["edge"] == "blocked", units
    finally:
        if up.poll() is None:
            up.kill()
        cli("down", cwd=tmp_path, check=False, timeout=300)
    assert cli("status", cwd=tmp_path, check=False).returncode == 3  # not running
