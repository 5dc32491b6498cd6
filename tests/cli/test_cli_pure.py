"""The CLI's pure commands (schema, validate, --help) and its error boundary.

`CliRunner` drives `cli` in-process; the exit codes of bad input are checked through
`python -m prefectstack`, because the boundary that turns a `StackError` into a message and
exit code 2 lives in `main()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from prefectstack.cli import cli
from prefectstack.errors import StackError
from prefectstack.stack.loader import default_stack_text

GOOD = "version: 1\nname: demo\napi:\n  replicas: 2\nworkers:\n  - {name: w1, pool: p1}\n"
TYPO = "version: 1\nworkers:\n  - name: w1\n    poool: p1\n"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    return subprocess.run(
        [sys.executable, "-m", "prefectstack", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60, check=False,
    )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(tmp_path: Path, text: str, name: str = "stack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- schema ---------------------------------------------------------------------------------


def schema_json(runner: CliRunner) -> dict[str, Any]:
    result = runner.invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_schema_is_a_valid_json_schema(runner: CliRunner) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = schema_json(runner)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    # the built-in default stack validates against it, and a typo does not
    assert not list(validator.iter_errors(yaml.safe_load(default_stack_text())))
    assert list(validator.iter_errors(yaml.safe_load(TYPO)))


def _properties(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            found.append((f"{where}.{name}", prop))
            found += _properties(prop, f"{where}.{name}")
        for name, sub in node.get("$defs", {}).items():
            found += _properties(sub, name)
        for key in ("items", "additionalProperties"):
            found += _properties(node.get(key), where)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                found += _properties(sub, where)
    return found


def test_every_schema_property_has_a_description(runner: CliRunner) -> None:
    schema = schema_json(runner)
    props = _properties(schema, "Stack")
    assert len(props) > 20  # the walk reached the nested models in $defs
    assert {"Stack.workers", "WorkerConfig.pool", "PostgresConfig.url"} <= {p for p, _ in props}
    undocumented = [path for path, prop in props if not prop.get("description", "").strip()]
    assert undocumented == []


def test_every_schema_model_forbids_additional_properties(runner: CliRunner) -> None:
    schema = schema_json(runner)
    models = [schema, *schema["$defs"].values()]
    assert all(m.get("additionalProperties") is False for m in models)


# -- validate -------------------------------------------------------------------------------


def test_validate_good_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = runner.invoke(cli, ["validate", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    assert "api-1, api-2" in result.stdout and "w1" in result.stdout


def test_validate_json(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = runner.invoke(cli, ["validate", "-f", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["source"] == str(path)
    assert data["services"][:4] == ["postgres", "redis", "db-init", "migrate"]
    assert {"api-1", "api-2", "w1"} <= set(data["services"])


def test_validate_positional_file_still_works_but_is_deprecated(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path, GOOD)
    result = runner.invoke(cli, ["validate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["source"] == str(path)  # stdout stays machine-readable
    assert "deprecated; use `prefectstack validate -f FILE`" in result.stderr


def test_validate_refuses_two_files(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = runner.invoke(cli, ["validate", "-f", str(path), str(path)])
    assert isinstance(result.exception, StackError)
    assert result.exception.exit_code == 2


def test_validate_defaults_to_the_built_in_stack(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["validate"])
    assert result.exit_code == 0, result.output
    assert "(built-in default stack): valid" in result.stdout


def test_validate_bad_file_raises_a_stack_error_in_process(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(cli, ["validate", "--file", str(write(tmp_path, TYPO))])
    assert isinstance(result.exception, StackError)
    assert result.exception.exit_code == 2
    assert "did you mean `pool`" in str(result.exception)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TYPO, "workers[0].poool: unknown key `poool`; did you mean `pool`?"),
        ("version: 1\napi: [1,\n", "not valid YAML at line"),
    ],
    ids=["typo", "yaml"],
)
def test_validate_bad_file_exits_2_with_a_message(
    tmp_path: Path, text: str, expected: str
) -> None:
    proc = run("validate", "-f", str(write(tmp_path, text)))
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""


def test_validate_missing_file_and_unknown_command_exit_2(tmp_path: Path) -> None:
    missing = run("validate", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "stack file not found" in missing.stderr
    unknown = run("frobnicate")
    assert unknown.returncode == 2
    assert "No such command" in unknown.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr


def test_validate_good_file_exits_0_through_main(tmp_path: Path) -> None:
    proc = run("validate", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == "(built-in default stack)"


# -- help -----------------------------------------------------------------------------------


def test_group_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_help(runner: CliRunner, name: str) -> None:
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: cli {name}")
    command = cli.commands[name]
    assert command.help and command.help.strip()
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert getattr(param, "help", None), f"{name} {param.opts} has no help text"


def test_short_help_flag_and_version(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["-h"]).exit_code == 0
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "version" in result.stdout


def test_state_commands_work_when_the_stack_file_no_longer_loads(tmp_path: Path) -> None:
    """`status`/`down` need only the state dir: an unset variable or a now-invalid field must
    not leave a running stack impossible to stop."""
    (tmp_path / "stack.yaml").write_text(
        "version: 1\nstate_dir: my-state\npostgres:\n  mode: external\n  url: ${UNSET_VAR}\n"
        "bogus_key: 1\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "UNSET_VAR"}
    for args, code in ((["status", "--json"], 3), (["down"], 0)):  # 3: not running
        result = subprocess.run([sys.executable, "-m", "prefectstack", *args], cwd=tmp_path,
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == code, result.stderr
    bad = subprocess.run([sys.executable, "-m", "prefectstack", "validate"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2  # the file itself is still reported as invalid
