"""Errors are part of the product: every bad stack file gives one `StackError`, exit code 2,
naming the YAML path and what was expected, with the closest valid key for a typo."""

from __future__ import annotations

import pytest

from prefectstack.errors import StackError
from prefectstack.stack import parse_stack

# (id, stack file, fragments the message must contain, in order)
BAD_FILES = [
    (
        "typo-in-list-item",
        "version: 1\nworkers:\n  - name: w\n    poool: x\n",
        ["workers[0].poool", "unknown key `poool`", "did you mean `pool`?"],
    ),
    (
        "typo-at-top-level",
        "version: 1\nnmae: x\n",
        ["nmae: unknown key `nmae`; did you mean `name`?"],
    ),
    (
        "typo-nested",
        "version: 1\npostgres:\n  prot: 5432\n",
        ["postgres.prot: unknown key `prot`; did you mean `port`?"],
    ),
    (
        "unknown-key-without-close-match-lists-valid-keys",
        "version: 1\nredis:\n  zzzzzz: 1\n",
        ["redis.zzzzzz: unknown key `zzzzzz`; valid keys here: mode, port, url"],
    ),
    (
        "missing-required-field",
        "version: 1\nworkers:\n  - name: w\n",
        ["workers[0].pool: required field is missing"],
    ),
    ("missing-version", "name: x\n", ["version: required field is missing"]),
    ("empty-file", "", ["version: required field is missing"]),
    ("wrong-version", "version: 2\n", ["version: 2 is not supported"]),
    ("version-as-string", "version: '1'\n", ["version: '1' is not supported"]),
    ("not-a-mapping-list", "- a\n- b\n", ["top level must be a mapping", "got list"]),
    ("not-a-mapping-scalar", "just text\n", ["top level must be a mapping", "got str"]),
    ("invalid-yaml", "version: 1\napi:\n  port: [1,\n", ["not valid YAML at line 4"]),
    (
        "invalid-yaml-indentation",
        "version: 1\napi:\n  port: 1\n bad: 2\n",
        ["not valid YAML at line 4"],
    ),
    (
        "external-postgres-without-url",
        "version: 1\npostgres:\n  mode: external\n",
        ["postgres: `url` is required when mode is `external`"],
    ),
    (
        "external-redis-without-url",
        "version: 1\nredis:\n  mode: external\n",
        ["redis: `url` is required when mode is `external`"],
    ),
    (
        "duplicate-worker-names",
        "version: 1\nworkers:\n  - {name: w, pool: a}\n  - {name: w, pool: b}\n",
        ["workers: worker names must be unique; repeated: w"],
    ),
    (
        "examples-pool-without-worker",
        "version: 1\nexamples:\n  pool: nope\n",
        ["examples: pool `nope` has no `process` worker; use one of: default"],
    ),
    (
        "replicas-too-many",
        "version: 1\napi:\n  replicas: 17\n",
        ["api.replicas", "less than or equal to 16", "17"],
    ),
    (
        "replicas-zero",
        "version: 1\napi:\n  replicas: 0\n",
        ["api.replicas", "greater than or equal to 1", "0"],
    ),
    ("port-too-big", "version: 1\napi:\n  port: 70000\n", ["api.port", "65535", "70000"]),
    (
        "worker-health-port-zero",
        "version: 1\nworkers:\n  - {name: w, pool: p, health_port: 0}\n",
        ["workers[0].health_port", "greater than or equal to 1"],
    ),
    ("port-not-a-number", "version: 1\nredis:\n  port: abc\n", ["redis.port", "integer", "'abc'"]),
    (
        "bad-literal",
        "version: 1\npostgres:\n  mode: cloud\n",
        ["postgres.mode: got 'cloud', expected one of 'embedded', 'system' or 'external'"],
    ),
    ("bad-name", "version: 1\nname: Bad_Name\n", ["name:", "pattern", "'Bad_Name'"]),
    ("section-not-a-mapping", "version: 1\napi: 3\n", ["api:", "dictionary"]),
    ("workers-not-a-list", "version: 1\nworkers: 3\n", ["workers:", "valid list"]),
    (
        "reserved-postgres-setting",
        "version: 1\npostgres:\n  settings:\n    listen_addresses: '*'\n",
        ["postgres.settings", "listen_addresses cannot be set"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_bad_file_gives_one_explained_error(text: str, fragments: list[str]) -> None:
    with pytest.raises(StackError) as info:
        parse_stack(text, {}, "bad.yaml")
    err = info.value
    assert err.exit_code == 2
    message = str(err)
    position = 0
    for fragment in fragments:
        found = message.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in (or out of order in):\n{message}"
        position = found + len(fragment)
    assert message.startswith("bad.yaml: ")


def test_several_problems_are_reported_together() -> None:
    text = "version: 1\napi:\n  replicas: 0\n  port: 0\npostgres:\n  prot: 1\n"
    with pytest.raises(StackError) as info:
        parse_stack(text, {})
    message = info.value.message
    for path in ("api.replicas", "api.port", "postgres.prot"):
        assert path in message


def test_missing_version_has_a_hint() -> None:
    with pytest.raises(StackError) as info:
        parse_stack("name: x\n", {})
    assert info.value.hint == "add `version: 1` as the first line"


def test_yaml_error_reports_line_and_column() -> None:
    text = "version: 1\nname: x\nworkers: [\n  {name: a\n"
    with pytest.raises(StackError, match=r"line \d+, column \d+") as info:
        parse_stack(text, {})
    assert info.value.exit_code == 2


def test_messages_do_not_leak_pydantic_urls() -> None:
    with pytest.raises(StackError) as info:
        parse_stack("version: 1\napi:\n  port: 0\n", {})
    assert "errors.pydantic.dev" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: 1\nyes: 1\n", '(top level): key `true` is not text'),
        ("version: 1\napi:\n  settings:\n    on: x\n", 'api.settings: key `true` is not text'),
        ("version: 1\npostgres:\n  settings:\n    work_mem: 64\n",
         "postgres.settings.work_mem: expected a string, got 64; quote it"),
        ("version: 1\nname: true\n", "name: expected a string, got true; quote it"),
    ],
)
def test_yaml_values_that_are_not_text_say_to_quote_them(text: str, fragment: str) -> None:
    with pytest.raises(StackError) as info:
        parse_stack(text, {}, "bad.yaml")
    assert fragment in info.value.message
