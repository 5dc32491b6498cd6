"""The systemd unit and the GitHub Actions workflow."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from prefectstack.render import github_actions, systemd
from prefectstack.stack.model import CURRENT_VERSION, Stack

STACK = Stack.model_validate(
    {
        "version": CURRENT_VERSION,
        "name": "demo",
        "api": {"public_url": "https://prefect.example.com"},
    }
)


def unit(stack_file: str | None = "/srv/demo/stack.yaml", executable: str = "/opt/bin/ps") -> str:
    bundle = systemd.render(
        STACK,
        executable=executable,
        stack_file=stack_file,
        working_dir="/srv/demo",
        state_dir="/srv/demo/.prefectstack",
        user="prefect",
    )
    return bundle.files["prefectstack-demo.service"]


def test_systemd_unit_runs_up_with_a_restart_policy() -> None:
    lines = unit().splitlines()
    for expected in (
        "ExecStart=/opt/bin/ps up -f /srv/demo/stack.yaml",
        "Restart=on-failure",
        "User=prefect",
        "WorkingDirectory=/srv/demo",
        "KillSignal=SIGTERM",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines
    assert "ExecStart=/opt/bin/ps up" in unit(stack_file=None).splitlines()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    file = tmp_path / "prefectstack-demo.service"
    file.write_text(unit(executable=shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "prefectstack-demo.service" not in result.stderr, result.stderr


def test_workflow_validates_against_the_github_schema(
    tmp_path: Path, tool_accepts: Callable[..., None]
) -> None:
    file = tmp_path / "deploy.yml"
    file.write_text(github_actions.render(STACK).files[github_actions.FILE])
    tool_accepts("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(file))


def test_workflow_builds_on_tags_then_plans_and_applies() -> None:
    text = github_actions.render(STACK, stack_file="ops/stack.yaml", context="ops/compose").files[
        github_actions.FILE
    ]
    flow = yaml.safe_load(text)
    assert flow["on"]["push"]["tags"] == ["v*"]  # quoted: YAML 1.1 would read `on` as true
    build = flow["jobs"]["image"]
    assert build["permissions"]["packages"] == "write"
    push = build["steps"][-1]
    assert push["uses"].startswith("docker/build-push-action@")
    assert push["with"]["context"] == "ops/compose" and push["with"]["push"] is True
    deploy = flow["jobs"]["deploy"]
    assert deploy["needs"] == "image"
    # the variables `prefectstack deploy` reads, so CI targets the server, not loopback
    assert deploy["env"]["PREFECTSTACK_API_KEY"] == "${{ secrets.PREFECTSTACK_API_KEY }}"
    assert "PREFECTSTACK_SERVER" in deploy["env"]
    assert "https://prefect.example.com" in deploy["env"]["PREFECTSTACK_SERVER"]
    runs = [step.get("run", "") for step in deploy["steps"]]
    assert any(r.startswith("prefectstack deploy plan -f ops/stack.yaml") for r in runs)
    assert "prefectstack deploy apply -f ops/stack.yaml --yes" in runs  # no prompt in CI


def test_workflow_installs_prefectstack_from_the_repository_not_pypi() -> None:
    """issue 13: `pip install prefectstack==0.1.0` names a package PyPI does not have."""
    flow = yaml.safe_load(github_actions.render(STACK).files[github_actions.FILE])
    for job in ("plan", "deploy"):
        install = next(s for s in flow["jobs"][job]["steps"]
                       if s.get("name") == "Install prefectstack")["run"]
        assert "prefectstack==" not in install
        assert "pip install -c requirements.lock ." in install
        assert 'pip install "$PREFECTSTACK_INSTALL"' in install
        assert flow["jobs"][job]["env"]["PREFECTSTACK_INSTALL"] == (
            "${{ vars.PREFECTSTACK_INSTALL }}")


def test_workflow_plans_on_pull_requests_without_applying() -> None:
    flow = yaml.safe_load(github_actions.render(STACK).files[github_actions.FILE])
    assert "pull_request" in flow["on"]
    plan = flow["jobs"]["plan"]
    assert plan["if"] == "${{ github.event_name == 'pull_request' }}"
    runs = [step.get("run", "") for step in plan["steps"]]
    assert any(r.startswith("prefectstack deploy plan") for r in runs)
    assert not any("deploy apply" in r for r in runs)
    for job in ("image", "deploy"):  # no image push or apply from a pull request
        assert flow["jobs"][job]["if"] == "${{ github.event_name != 'pull_request' }}"


WITH_SECRETS = Stack.model_validate({
    "version": CURRENT_VERSION, "name": "demo",
    "api": {"public_url": "https://prefect.example.com"},
    "secrets": [{"name": "git-token", "env": "GIT_TOKEN"},
                {"name": "db-pass", "file": "secrets/db pass.txt"}],
})


def test_workflow_passes_the_stacks_secrets_to_plan_and_apply(tmp_path: Path) -> None:
    """issue 13: `env` secrets (a private git source's credentials among them) and `file`
    secrets never reached the jobs, so planning in CI failed on them."""
    flow = yaml.safe_load(github_actions.render(WITH_SECRETS, stack_file="ops/stack.yaml")
                          .files[github_actions.FILE])
    for job in ("plan", "deploy"):
        assert flow["jobs"][job]["env"]["GIT_TOKEN"] == "${{ secrets.GIT_TOKEN }}"
        steps = flow["jobs"][job]["steps"]
        names = [s.get("name") for s in steps]
        write = steps[names.index("Write the stack's secret files")]
        assert names.index("Write the stack's secret files") < names.index("Plan")
        assert write["env"] == {"SECRET_0": "${{ secrets.PREFECTSTACK_SECRET_DB_PASS }}"}
        assert "${{" not in write["run"]  # the value is a variable, never script text
    # the step's script writes the file where stack.yaml reads it, 0600
    write = next(s for s in flow["jobs"]["plan"]["steps"] if s.get("env", {}).get("SECRET_0"))
    subprocess.run(["bash", "-c", write["run"]], cwd=tmp_path, check=True, timeout=30,
                   env={"SECRET_0": "s3cr3t\nline", "PATH": "/usr/bin:/bin"})
    written = tmp_path / "ops" / "secrets" / "db pass.txt"
    assert written.read_text() == "s3cr3t\nline" and written.stat().st_mode & 0o777 == 0o600


def test_workflow_sets_prefectstack_image_for_the_stack_file() -> None:
    """issue 13: PREFECTSTACK_IMAGE was set but unused; now documented for the stack file's
    `${PREFECTSTACK_IMAGE}` and set in the plan job too (the commit's tag)."""
    text = github_actions.render(STACK).files[github_actions.FILE]
    assert "`${PREFECTSTACK_IMAGE}`" in text
    flow = yaml.safe_load(text)
    assert flow["jobs"]["deploy"]["env"]["PREFECTSTACK_IMAGE"] == (
        "${{ needs.image.outputs.image }}")
    assert flow["jobs"]["plan"]["env"]["PREFECTSTACK_IMAGE"] == (
        "ghcr.io/${{ github.repository_owner }}/demo-prefect:sha-${{ github.sha }}")
    meta = next(s for s in flow["jobs"]["image"]["steps"] if s.get("id") == "meta")
    assert "type=sha,format=long" in meta["with"]["tags"]


def test_workflow_with_secrets_validates(
    tmp_path: Path, tool_accepts: Callable[..., None]
) -> None:
    file = tmp_path / "deploy.yml"
    file.write_text(github_actions.render(WITH_SECRETS).files[github_actions.FILE])
    tool_accepts("check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(file))
