"""Golden files: every example stack rendered for every target, reviewed in diffs.

Regenerate after an intended change, then review `git diff tests/golden`:

    PREFECTSTACK_REGEN_GOLDEN=1 python -m pytest tests/unit/test_render_golden.py
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

import pytest

from prefectstack.render import Bundle, compose, github_actions, kubernetes, systemd
from prefectstack.stack.loader import parse_stack
from prefectstack.stack.model import Stack

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EXAMPLES = sorted(p.name for p in resources.files("prefectstack").joinpath("examples").iterdir()
                  if p.name.endswith(".yaml"))
# Fixed inputs, so the output is a pure function of the example and the code.
ENV = {"PREFECT_DB_URL": "postgresql://prefect:fake-db-password@db.internal:5432/prefect"}
REGENERATE = os.environ.get("PREFECTSTACK_REGEN_GOLDEN") == "1"
HINT = "review the change, then: PREFECTSTACK_REGEN_GOLDEN=1 python -m pytest " \
       "tests/unit/test_render_golden.py"


def bundles(stack: Stack) -> dict[str, Bundle]:
    names = compose.secret_names(stack) | kubernetes.secret_names(stack)
    secrets = {name: f"fake-{name}" for name in sorted(names)}
    return {
        "compose": compose.render(stack, secrets),
        "kubernetes": kubernetes.render(stack, secrets),
        "systemd": systemd.render(
            stack, executable="/opt/prefectstack/bin/prefectstack",
            stack_file="/srv/prefectstack/stack.yaml", working_dir="/srv/prefectstack",
            state_dir="/srv/prefectstack/.prefectstack", user="prefectstack"),
        "github-actions": github_actions.render(stack),
    }


def rendered(example: str) -> dict[str, str]:
    text = resources.files("prefectstack").joinpath("examples", example).read_text()
    stack = parse_stack(text, ENV, example)
    files: dict[str, str] = {}
    for target, bundle in bundles(stack).items():
        for rel, content in {**bundle.files, **bundle.seeds}.items():
            files[f"{target}/{rel}"] = content
    return files


@pytest.mark.parametrize("example", EXAMPLES)
def test_rendered_files_match_the_golden_files(example: str) -> None:
    root = GOLDEN / example.removesuffix(".yaml")
    files = rendered(example)
    if REGENERATE:
        shutil.rmtree(root, ignore_errors=True)
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
    on_disk = {p.relative_to(root).as_posix(): p.read_text()
               for p in sorted(root.rglob("*")) if p.is_file()}
    assert sorted(on_disk) == sorted(files), HINT
    for rel, content in files.items():
        assert on_disk[rel] == content, f"{example}: {rel} changed; {HINT}"


def test_every_golden_directory_has_an_example() -> None:
    stems = {e.removesuffix(".yaml") for e in EXAMPLES}
    assert {p.name for p in GOLDEN.iterdir() if p.is_dir()} <= stems
