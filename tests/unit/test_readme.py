"""The README is the contract: its commands exist and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import click

from prefectstack.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "prefectstack") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        names.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix} {name}")
    return names


def test_every_command_is_documented() -> None:
    missing = [c for c in _commands(cli) if c not in README]
    assert missing == [], f"document these commands in README.md: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    match = re.search(r"<!-- test-command -->\s*```(?:sh|bash)?\n(.+?)\n```", README, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), f".ci/run must run exactly: {command}"


def test_readme_install_command_runs_up() -> None:
    match = re.search(r"<!-- install-command -->\s*```(?:sh|bash)?\n(.+?)\n```", README, re.S)
    assert match and "prefectstack up" in match.group(1)
    assert "pip install -c requirements.lock -e ." in match.group(1), "install the tested lock"
