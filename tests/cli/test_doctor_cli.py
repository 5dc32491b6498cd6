"""`prefectstack doctor` at the CLI boundary: a stack that never ran, a stopped one with a
loose secret file and a held port, and the --json shape."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.cli.doctor import EXIT_CLEAN, EXIT_FAIL

NAMES = ["ports", "state-dir", "secrets", "disk", "dependencies", "services", "logs",
         "certificates", "api-keys"]


def stack_file(root: Path, pg_port: int) -> Path:
    path = root / "stack.yaml"
    path.write_text(f"version: 1\nname: doc\nstate_dir: state\npostgres:\n  port: {pg_port}\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_stack_that_never_ran_is_clean_and_nothing_is_created(tmp_path: Path) -> None:
    path = stack_file(tmp_path, free_port())
    result = CliRunner().invoke(cli, ["doctor", "--json", "-f", str(path)])
    assert result.exit_code == EXIT_CLEAN, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == NAMES
    assert set(report["checks"][0]) == {"name", "status", "summary", "details", "next"}
    assert not (tmp_path / "state").exists()


def test_problems_are_explained_with_the_next_command(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = stack_file(tmp_path, port)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        secrets = state / "secrets.json"
        secrets.write_text("{}")
        os.chmod(secrets, 0o644)
        (state / "logs").mkdir()
        (state / "logs" / "api-1.log").write_text(
            "12:00:00.000 | ERROR   | prefect.server - boom\nTraceback (most recent call last):\n")
        result = CliRunner().invoke(cli, ["doctor", "-f", str(path)])
    assert result.exit_code == EXIT_FAIL, result.output
    out = result.output
    assert f"postgres: port {port} is in use" in out
    assert f"next: chmod 600 {secrets}" in out
    assert "next: prefectstack logs api-1" in out
    assert "Traceback" not in out.split("api-1:")[0]  # reported, not raised


@pytest.mark.parametrize("flag", ["--json", None])
def test_a_bad_stack_file_is_a_clear_error(tmp_path: Path, flag: str | None) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nname: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "prefectstack", "doctor", "-f", str(path),
         *([flag] if flag else [])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "stack.yaml" in result.stderr
