"""`prefectstack deploy` and `prefectstack worker join` without a server: exit codes of bad
input and unreachable servers, and the joined worker's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefectstack.cli.worker import worker_env
from prefectstack.prefect_api import Target

STACK = """\
version: 1
workers: []
deployments:
  - {name: d, entrypoint: flows/f.py:f, work_pool: p}
"""
NOWHERE = "http://127.0.0.1:9"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    return subprocess.run([sys.executable, "-m", "prefectstack", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture()
def stack_dir(tmp_path: Path) -> Path:
    (tmp_path / "stack.yaml").write_text(STACK)
    return tmp_path


def test_an_unreachable_server_is_a_platform_error(stack_dir: Path) -> None:
    for extra in ((), ("--detailed-exitcode",)):
        result = run("deploy", "plan", "--server", NOWHERE, *extra, cwd=stack_dir)
        assert result.returncode == 1, result.stderr
        assert f"cannot reach the Prefect API at {NOWHERE}/api" in result.stderr
        assert "Traceback" not in result.stderr


def test_bad_input_is_2_but_1_with_detailed_exitcode(stack_dir: Path) -> None:
    (stack_dir / "stack.yaml").write_text(STACK.replace("work_pool", "work_pol"))
    assert run("deploy", "plan", cwd=stack_dir).returncode == 2
    detailed = run("deploy", "plan", "--detailed-exitcode", cwd=stack_dir)
    assert detailed.returncode == 1 and "did you mean `work_pool`" in detailed.stderr


def test_server_urls_are_checked(stack_dir: Path) -> None:
    bad = run("deploy", "apply", "--server", "ftp://host", cwd=stack_dir)
    assert bad.returncode == 2 and "expected an http:// or https:// URL" in bad.stderr
    join = run("worker", "join", "--server", "host:4200", "--pool", "p", cwd=stack_dir)
    assert join.returncode == 2 and "expected https://HOST[:PORT]" in join.stderr


def test_join_fails_early_on_an_unreachable_server(tmp_path: Path) -> None:
    result = run("worker", "join", "--server", NOWHERE, "--pool", "p", cwd=tmp_path)
    assert result.returncode == 1 and "cannot reach the Prefect API" in result.stderr


def test_the_joined_worker_gets_a_clean_prefect_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere/api")
    monkeypatch.setenv("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "true")
    monkeypatch.setenv("PREFECT_PROFILE", "prod")
    ca = tmp_path / "ca.crt"
    env = worker_env(Target("https://stack.example/api", api_key="k", ca_file=str(ca)),
                     tmp_path / "home", 8123)
    prefect = {k: v for k, v in env.items() if k.startswith("PREFECT_")}
    assert prefect == {
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": "https://stack.example/api",
        "PREFECT_API_AUTH_STRING": "home:k",  # websockets carry only the auth string
        "PREFECT_API_SSL_CERT_FILE": str(ca.resolve()),
        "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        "PREFECT_WORKER_WEBSERVER_PORT": "8123",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    assert env["PATH"] == os.environ["PATH"]
