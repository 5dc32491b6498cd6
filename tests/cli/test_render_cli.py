"""`prefectstack render ...` writes files (atomically, secrets 0600, seeds once); the
Compose backend (runtime/compose.py) fails clearly without a Docker engine."""

from __future__ import annotations

import json
import os
import stat
from importlib import resources
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.errors import StackError
from prefectstack.render import dockerfile
from prefectstack.runtime import compose
from prefectstack.stack.loader import load_stack

STACK = "version: 1\nname: demo\nstate_dir: state\napi:\n  replicas: 2\n"


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(STACK)
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stored_secrets(stack_file: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((stack_file.parent / "state" / "secrets.json").read_text())
    return data


def test_render_compose_writes_the_project(stack_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    output = invoke("render", "compose", "-f", str(stack_file), "-o", str(out))
    for rel in ("docker-compose.yml", "Caddyfile", ".env", "Dockerfile", "README.md",
                "requirements.txt", "flows/README.md", "app/prefectstack/jobs/dbinit.py"):
        assert (out / rel).is_file(), rel
    assert mode(out / ".env") == 0o600
    assert mode(out / "docker-compose.yml") == 0o644
    assert not list(out.rglob("*.tmp"))
    secrets = stored_secrets(stack_file)
    env = (out / ".env").read_text()
    for value in secrets.values():
        assert value in env
        assert value not in output, "secret values are never printed"
        assert value not in (out / "docker-compose.yml").read_text()
    doc = yaml.safe_load((out / "docker-compose.yml").read_text())
    assert "api-2" in doc["services"] and "api-replicas" not in doc["services"]
    # The edge's keys and the bootstrap admin password: generated, stored, only in .env.
    for name in ("worker_api_key", "deployer_api_key", "admin_password"):
        assert f"{name.upper()}={secrets[name]}" in env.splitlines()
    assert "forward_auth auth:14180" in (out / "Caddyfile").read_text()


def test_secrets_are_generated_once_and_seeds_kept(stack_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    invoke("render", "compose", "-f", str(stack_file), "-o", str(out))
    first_env, first_secrets = (out / ".env").read_text(), stored_secrets(stack_file)
    (out / "requirements.txt").write_text("httpx==0.27.0\n")
    invoke("render", "compose", "-f", str(stack_file), "-o", str(out))
    assert (out / ".env").read_text() == first_env
    assert stored_secrets(stack_file) == first_secrets
    assert (out / "requirements.txt").read_text() == "httpx==0.27.0\n"


def test_image_context_copies_the_runtime_modules(stack_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    invoke("render", "compose", "-f", str(stack_file), "-o", str(out))
    package = resources.files("prefectstack")
    expected: list[str] = []
    for entry in dockerfile.PACKAGE_FILES:  # a trailing `/`: every .py file of that package
        expected += ([f"{entry}{p.name}" for p in package.joinpath(entry).iterdir()
                      if p.name.endswith(".py")] if entry.endswith("/") else [entry])
    assert {"jobs/dbinit.py", "auth/__main__.py", "flows/shell.py"} <= set(expected)
    for rel in expected:
        assert (out / "app" / "prefectstack" / rel).read_text() == (
            package.joinpath(rel).read_text())


def test_default_output_directory_is_next_to_the_stack_file(stack_file: Path) -> None:
    invoke("render", "compose", "-f", str(stack_file))
    assert (stack_file.parent / "deploy" / "compose" / "docker-compose.yml").is_file()


def test_render_kubernetes_keeps_secret_values_in_secret_yaml(
    stack_file: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "k8s"
    invoke("render", "kubernetes", "-f", str(stack_file), "-o", str(out), "--image", "reg/app:7")
    assert mode(out / "secret.yaml") == 0o600
    assert "image: reg/app:7" in (out / "api.yaml").read_text()
    values = stored_secrets(stack_file).values()
    for path in out.iterdir():
        assert not [v for v in values if v in path.read_text()], path.name


def test_render_systemd_and_github_actions(stack_file: Path, tmp_path: Path) -> None:
    invoke("render", "systemd", "-f", str(stack_file), "-o", str(tmp_path / "sd"),
           "--user", "svc")
    unit = (tmp_path / "sd" / "prefectstack-demo.service").read_text().splitlines()
    assert "User=svc" in unit
    assert any(line.startswith("ExecStart=") and line.endswith(f"up -f {stack_file}")
               for line in unit)
    invoke("render", "github-actions", "-f", str(stack_file), "-o", str(tmp_path / "wf"))
    flow = yaml.safe_load((tmp_path / "wf" / "prefectstack-deploy.yml").read_text())
    last = flow["jobs"]["deploy"]["steps"][-1]["run"]
    assert last == "prefectstack deploy apply -f stack.yaml --yes"


def _fake_docker(directory: Path, script: str) -> None:
    docker = directory / "docker"
    docker.write_text("#!/bin/sh\n" + script)
    docker.chmod(0o755)


def test_compose_backend_without_an_engine_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_docker(bin_dir, 'echo "Cannot connect to the Docker daemon at '
                          'unix:///var/run/docker.sock." >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(StackError) as caught:
        compose.check_docker()
    assert "no Docker engine is reachable" in caught.value.message
    assert "Cannot connect to the Docker daemon" in caught.value.message
    assert caught.value.hint and "prefectstack up" in caught.value.hint


def test_compose_backend_checks_before_writing(
    stack_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match="docker is not installed"):
        compose.check_docker()
    with pytest.raises(StackError):
        compose.up(load_stack(stack_file))
    assert not (stack_file.parent / "state").exists(), "nothing written, no backend recorded"


def test_compose_backend_runs_docker_compose_up(
    stack_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _fake_docker(bin_dir, f'echo "$@" >> {calls}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    target = compose.up(load_stack(stack_file))
    assert target == stack_file.parent / "state" / "compose"
    assert (target / "docker-compose.yml").is_file()
    assert calls.read_text().splitlines()[-1] == (
        f"compose -f {target / 'docker-compose.yml'} up -d --build")


def test_render_warns_that_backup_encryption_and_s3_are_local_only(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(STACK + "backup:\n  s3:\n    bucket: my-backups\n")
    for target in ("compose", "kubernetes"):
        result = CliRunner().invoke(cli, ["render", target, "-f", str(path), "-o",
                                          str(tmp_path / target)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "warning: backup.s3 is not applied in" in result.stderr, result.stderr
    plain = tmp_path / "plain" / "stack.yaml"
    plain.parent.mkdir()
    plain.write_text(STACK)
    result = CliRunner().invoke(cli, ["render", "compose", "-f", str(plain)],
                                catch_exceptions=False)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


CLUSTER_STACK = STACK + """\
workers:
  - name: worker-1
    pool: default
  - name: cluster
    pool: pods
    type: kubernetes
"""


@pytest.mark.parametrize("args", [["up", "--detach"], ["render", "compose"],
                                  ["render", "systemd"], ["up", "--backend", "compose"]])
def test_targets_without_a_cluster_refuse_a_kubernetes_pool_and_write_nothing(
        tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "stack.yaml").write_text(CLUSTER_STACK)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, [*args, "-f", str(tmp_path / "stack.yaml")])
    assert isinstance(result.exception, StackError)  # the CLI's error boundary prints it
    assert "workers cluster: a `kubernetes` pool's runs are Kubernetes Jobs" in str(
        result.exception)
    assert "render kubernetes" in (result.exception.hint or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no state dir, no files


def test_render_kubernetes_takes_a_kubernetes_pool(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text(CLUSTER_STACK)
    invoke("render", "kubernetes", "-f", str(tmp_path / "stack.yaml"),
           "--output", str(tmp_path / "k8s"))
    assert (tmp_path / "k8s" / "kubernetes-workers.yaml").exists()
