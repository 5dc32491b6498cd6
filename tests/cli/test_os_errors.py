"""Unusable state dirs at the CLI boundary: a clear one-line error and an exit code, never a
traceback, whatever the command. (As root, permission bits don't stop anything, so the
paths here fail the way they would for anyone: under a regular file, or inside /proc.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [["up", "--detach"], ["status"], ["status", "--json"], ["down"], ["logs"],
            ["users", "list"], ["keys", "list"], ["audit"], ["down", "--volumes", "--yes"]]


@pytest.fixture(params=["under-a-file", "in-proc"])
def stack_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a directory\n")
    state = "a-file/state" if request.param == "under-a-file" else "/proc/version/state"
    (tmp_path / "stack.yaml").write_text(
        f"version: 1\nstate_dir: {state}\nedge: {{enabled: true}}\n")
    return tmp_path


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_no_traceback_for_a_state_dir_that_cannot_be_used(
    stack_dir: Path, args: list[str],
) -> None:
    result = subprocess.run([sys.executable, "-m", "prefectstack", *args], cwd=stack_dir,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode != 0 or args[0] in ("down", "logs", "audit"), output
    if result.returncode not in (0, 3):  # 3: `status` of a stack that is not running
        assert "error:" in result.stderr, output
