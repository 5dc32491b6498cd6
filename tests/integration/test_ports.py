"""A port that is already taken stops `up` before anything starts, naming the holder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from .conftest import cli, free_port, stack_yaml

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
