"""The stack file → desired objects: flow signatures, parameter checks, sources, secrets and
job templates, all checked before any server is contacted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from prefectstack.deploy.desired import Desired, build
from prefectstack.deploy.state import GIT_CLONE, SET_WORKDIR, secret_digest
from prefectstack.errors import StackError
from prefectstack.stack.deployments import MANAGED_TAG
from prefectstack.stack.loader import LoadedStack, parse_stack

FLOW = '''\
from prefect import flow


@flow(name="greeter", log_prints=True)
def greet(name: str, times: int = 1, loud: bool = False) -> str:
    """Say hello."""
    return name * times


@flow
def open_ended(x: int = 0, **extra):
    return x
'''


def load(base: Path, text: str) -> LoadedStack:
    return LoadedStack(parse_stack("version: 1\nworkers: []\n" + text, {}), base, "stack.yaml")


def desired(base: Path, text: str, env: dict[str, str] | None = None) -> Desired:
    work = base / "work"
    work.mkdir(exist_ok=True)
    return build(load(base, text), env=env or {}, server_secrets={}, workdir=work)


@pytest.fixture()
def base(tmp_path: Path) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "greet.py").write_text(FLOW)
    return tmp_path


def test_a_local_deployment_gets_its_flow_name_schema_and_pull_step(base: Path) -> None:
    d = desired(base, """\
deployments:
  - name: daily
    entrypoint: flows/greet.py:greet
    work_pool: pool
    parameters: {name: ada}
    tags: [team-a]
    schedules: [{cron: "0 9 * * *", timezone: Europe/Berlin}]
""")
    (obj,) = d.state.of_kind("deployment")
    assert obj.name == "greeter/daily"
    assert obj.fields["tags"] == sorted(["team-a", MANAGED_TAG])
    assert obj.fields["pull_steps"] == [{SET_WORKDIR: {"directory": str(base.resolve())}}]
    assert sorted(obj.fields["parameter_openapi_schema"]["properties"]) == [
        "loud", "name", "times"]
    assert obj.fields["schedules"] == [{"cron": "0 9 * * *", "timezone": "Europe/Berlin",
                                        "day_or": True, "active": True, "parameters": {}}]


def test_parameters_are_checked_against_the_signature(base: Path) -> None:
    with pytest.raises(StackError) as exc:
        desired(base, """\
deployments:
  - name: bad
    entrypoint: flows/greet.py:greet
    work_pool: pool
    parameters: {name: ada, times: many, colour: red}
    schedules: [{interval: 60, parameters: {nme: typo}}]
""")
    text = exc.value.message
    assert exc.value.exit_code == 2 and "nothing was changed" in text
    assert ("deployments[0].parameters.colour: flow `greet` has no parameter `colour` "
            "(it takes: name, times, loud)") in text
    assert "deployments[0].parameters.times: 'many' is not of type 'integer'" in text
    assert "deployments[0].schedules[0].parameters.nme: flow `greet` has no parameter" in text


def test_scheduled_runs_need_every_required_parameter(base: Path) -> None:
    manual = "deployments: [{name: m, entrypoint: flows/greet.py:greet, work_pool: p}]\n"
    assert desired(base, manual).state.of_kind("deployment")  # given at run time: fine
    with pytest.raises(StackError) as exc:
        scheduled = "work_pool: p, schedules: [{cron: '* * * * *'}]"
        desired(base, manual.replace("work_pool: p", scheduled))
    assert "scheduled runs would have no value for required parameter(s) name" in (
        exc.value.message)


def test_var_keyword_flows_accept_any_parameter(base: Path) -> None:
    d = desired(base, """\
deployments:
  - {name: x, entrypoint: flows/greet.py:open_ended, work_pool: p, parameters: {anything: 1}}
""")
    assert d.state.of_kind("deployment")[0].name == "open-ended/x"


def test_bad_entrypoints_are_reported_together(base: Path) -> None:
    """(Bad cron strings and time zones no longer get this far: loading the stack file
    refuses them, see tests/data/invalid/.)"""
    with pytest.raises(StackError) as exc:
        desired(base, """\
deployments:
  - {name: a, entrypoint: flows/missing.py:f, work_pool: p}
  - {name: b, entrypoint: flows/greet.py:nope, work_pool: p}
  - {name: d, entrypoint: flows/greet.py:greet, work_pool: p, source: {path: nowhere}}
""")
    text = exc.value.message
    assert "deployments[0].entrypoint: no file flows/missing.py" in text
    assert "deployments[1].entrypoint: cannot read `flows/greet.py:nope`" in text
    assert "deployments[2].source.path: directory" in text


def test_secrets_come_from_env_or_files_and_are_only_digested(base: Path) -> None:
    (base / "db.txt").write_text("from-file\n")
    text = "secrets: [{name: a, env: TOKEN_A}, {name: b, file: db.txt}]\n"
    d = desired(base, text, env={"TOKEN_A": "from-env"})
    a, b = d.state.of_kind("secret")
    assert a.fields == {"value": secret_digest("from-env")} and a.extra["value"] == "from-env"
    assert b.extra["value"] == "from-file"
    with pytest.raises(StackError) as exc:
        desired(base, text.replace("db.txt", "nope.txt"))
    assert "secrets[0].env: environment variable TOKEN_A is not set" in exc.value.message
    assert "secrets[1].file: cannot read" in exc.value.message


def test_job_template_overrides_are_checked_against_the_type(base: Path) -> None:
    d = desired(base, "work_pools: [{name: p, base_job_template: {stream_output: false}}]\n")
    (pool,) = d.state.of_kind("work_pool")
    assert pool.fields["base_job_template"]["stream_output"] is False
    assert "base_job_template" not in pool.loose  # process: installed, compared in full
    with pytest.raises(StackError) as exc:
        desired(base, "work_pools: [{name: p, base_job_template: {imagee: x, "
                      "stream_output: 3}}]\n")
    assert "work_pools[0].base_job_template.imagee: not a job variable" in exc.value.message
    assert "work_pools[0].base_job_template.stream_output: 3 is not of type 'boolean'" in (
        exc.value.message)


def test_uninstalled_and_unknown_types_pass_through_with_a_warning(base: Path) -> None:
    d = desired(base, """\
work_pools:
  - {name: d, type: docker, base_job_template: {image: "python:3.11"}}
  - {name: u, type: my-custom-type, base_job_template: {anything: 1}}
""")
    docker, custom = d.state.of_kind("work_pool")
    assert docker.fields["base_job_template"] == {"image": "python:3.11"}
    assert docker.loose == frozenset({"base_job_template"})
    assert docker.extra["template"]["job_configuration"]  # prefect's bundled template
    assert custom.extra["template"] is None
    assert any("bundled with prefect" in w for w in d.warnings)
    assert any("passed through unchecked" in w for w in d.warnings)


def test_worker_pools_are_ensured_but_not_managed(base: Path) -> None:
    loaded = LoadedStack(parse_stack("version: 1\nworkers: [{name: w, pool: local}]\n", {}),
                         base, "stack.yaml")
    d = build(loaded, env={}, server_secrets={}, workdir=base)
    (pool,) = d.state.of_kind("work_pool")
    assert pool.name == "local" and pool.ensure_only and not pool.managed


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_sources_are_cloned_to_read_the_flow(
    base: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("git")
    git("init", "--bare", "-b", "main", "repo.git", cwd=root)
    git("clone", "repo.git", "work", cwd=root)
    (root / "work" / "pkg").mkdir()
    (root / "work" / "pkg" / "flow.py").write_text(FLOW.replace('"greeter"', '"from-git"'))
    git("add", ".", cwd=root / "work")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-m", "flow", cwd=root / "work")
    git("push", "origin", "main", cwd=root / "work")
    url = f"file://{root / 'repo.git'}"
    d = desired(base, f"""\
deployments:
  - name: g
    entrypoint: pkg/flow.py:greet
    work_pool: p
    parameters: {{name: x}}
    source: {{git: "{url}", branch: main, credentials: gh-token}}
secrets: [{{name: gh-token, env: GH}}]
""", env={"GH": "t0ken"})
    obj = d.state.get("deployment", "from-git/g")
    assert obj is not None
    assert obj.fields["pull_steps"] == [{GIT_CLONE: {
        "repository": url, "branch": "main",
        "access_token": "{{ prefect.blocks.secret.gh-token }}"}}]
    with pytest.raises(StackError) as exc:
        desired(base, f"deployments: [{{name: g, entrypoint: pkg/flow.py:greet, work_pool: p, "
                      f"source: {{git: '{url}', branch: nope}}}}]\n")
    assert "deployments[0].source.git: cannot clone" in exc.value.message
