"""`${VAR}`, `${VAR:-default}` and `$$` in stack-file values."""

from __future__ import annotations

import pytest

from prefectstack.errors import StackError
from prefectstack.stack import parse_stack
from prefectstack.stack.interpolate import interpolate, yaml_path

EXTERNAL = "version: 1\npostgres:\n  mode: external\n  url: {url}\n"


def test_set_variable_is_substituted() -> None:
    stack = parse_stack(
        EXTERNAL.format(url="postgresql://prefect:${DB_PASSWORD}@db:5432/prefect"),
        {"DB_PASSWORD": "s3cret"},
    )
    assert stack.postgres.url == "postgresql://prefect:s3cret@db:5432/prefect"


def test_default_is_used_only_when_unset() -> None:
    text = "version: 1\napi:\n  port: ${API_PORT:-4300}\n"
    assert parse_stack(text, {}).api.port == 4300
    assert parse_stack(text, {"API_PORT": "4400"}).api.port == 4400


def test_empty_default_is_allowed() -> None:
    assert interpolate({"a": "x${NOPE:-}y"}, {}) == {"a": "xy"}


def test_double_dollar_is_a_literal_dollar() -> None:
    assert interpolate("pa$$word", {}) == "pa$word"
    # `$${VAR}` is the escaped literal text `${VAR}`, not a reference
    assert interpolate("$${HOME}", {"HOME": "/root"}) == "${HOME}"


def test_lone_dollar_and_bare_names_are_left_alone() -> None:
    assert interpolate("cost: $5 and $HOME", {"HOME": "/root"}) == "cost: $5 and $HOME"


def test_several_references_in_one_value() -> None:
    assert interpolate("${A}-${B:-b}-${C}", {"A": "a", "C": "c"}) == "a-b-c"


def test_substituted_values_are_not_interpolated_again() -> None:
    assert interpolate("${A}", {"A": "${B}", "B": "nope"}) == "${B}"


def test_non_strings_and_nested_structures() -> None:
    data = {"n": 3, "flag": True, "none": None, "list": ["${A}", {"deep": "${A}"}]}
    assert interpolate(data, {"A": "x"}) == {
        "n": 3, "flag": True, "none": None, "list": ["x", {"deep": "x"}],
    }


def test_unset_variable_names_the_yaml_path() -> None:
    with pytest.raises(StackError) as info:
        parse_stack(EXTERNAL.format(url="${PREFECT_DB_URL}"), {})
    err = info.value
    assert err.exit_code == 2
    assert "postgres.url" in err.message
    assert "PREFECT_DB_URL" in err.message
    assert err.hint is not None and "${PREFECT_DB_URL:-" in err.hint


def test_unset_variable_inside_a_list_names_the_index() -> None:
    text = "version: 1\nworkers:\n  - name: w1\n    pool: p\n  - name: w2\n    pool: ${POOL}\n"
    with pytest.raises(StackError, match=r"workers\[1\]\.pool: environment variable POOL"):
        parse_stack(text, {})


def test_environment_is_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_IN_OS_ENV", "4500")
    text = "version: 1\napi:\n  port: ${ONLY_IN_OS_ENV:-4600}\n"
    assert parse_stack(text, {}).api.port == 4600


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        ((), "(top level)"),
        (("api",), "api"),
        (("api", "port"), "api.port"),
        (("workers", 0, "pool"), "workers[0].pool"),
        (("workers", 2), "workers[2]"),
    ],
)
def test_yaml_path(loc: tuple[str | int, ...], expected: str) -> None:
    assert yaml_path(loc) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("${VAR", "`${VAR` is not closed: a `}` is missing"),
        ("postgresql://${USER:-prefect@db/prefect", "`${USER:-prefect@db/prefect` is not closed"),
        ("${VAR:default}", "`${VAR:default}` is not a valid environment reference"),
        ("${1VAR}", "`${1VAR}` is not a valid environment reference"),
        ("${}", "`${}` is not a valid environment reference"),
        ("${A B}", "`${A B}` is not a valid environment reference"),
    ],
)
def test_a_malformed_reference_is_an_error(value: str, fragment: str) -> None:
    with pytest.raises(StackError) as info:
        interpolate({"api": {"public_url": value}}, {"VAR": "x", "USER": "u", "A": "a"})
    err = info.value
    assert err.exit_code == 2
    assert err.message.startswith("api.public_url: ")
    assert fragment in err.message
    assert err.hint is not None and "$${" in err.hint


def test_an_escaped_opening_is_not_a_reference() -> None:
    assert interpolate("$${VAR", {}) == "${VAR"
    assert interpolate("echo $${HOME:-x} ${A}", {"A": "a"}) == "echo ${HOME:-x} a"
