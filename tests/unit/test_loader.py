"""Reading stack files: the built-in default, the examples, and the file-level errors."""

from __future__ import annotations

import os
import stat
from importlib import resources
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.stack import parse_stack, reader
from prefectstack.stack.loader import default_stack_text, load_stack, locate_state_dir
from prefectstack.stack.model import CURRENT_VERSION, Stack

EXAMPLES = resources.files("prefectstack").joinpath("examples")
EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.name.endswith(".yaml"))
# What the examples expect from the environment (see the comments in each file).
EXAMPLE_ENV = {"PREFECT_DB_URL": "postgresql://prefect:pw@db.internal:5432/prefect"}


def test_there_are_examples() -> None:
    assert "default.yaml" in EXAMPLE_NAMES
    assert len(EXAMPLE_NAMES) >= 2


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_parses(name: str) -> None:
    stack = parse_stack(EXAMPLES.joinpath(name).read_text(), EXAMPLE_ENV, name)
    assert isinstance(stack, Stack)
    assert stack.version == CURRENT_VERSION


def test_default_stack_is_local_and_loopback() -> None:
    stack = parse_stack(default_stack_text(), {})
    assert stack.postgres.mode == "embedded"
    assert stack.redis.mode == "embedded"
    assert stack.api.replicas == 1
    assert stack.api.public_url is None
    assert [w.pool for w in stack.workers] == ["default"]


def test_default_stack_needs_no_environment() -> None:
    assert parse_stack(default_stack_text(), {}) == parse_stack(default_stack_text(), EXAMPLE_ENV)


def test_external_postgres_example_reads_the_url_from_the_environment() -> None:
    text = EXAMPLES.joinpath("external-postgres.yaml").read_text()
    stack = parse_stack(text, EXAMPLE_ENV)
    assert stack.postgres.mode == "external"
    assert stack.postgres.url == EXAMPLE_ENV["PREFECT_DB_URL"]
    with pytest.raises(StackError, match=r"postgres\.url: environment variable PREFECT_DB_URL"):
        parse_stack(text, {})


def test_source_name_is_in_messages() -> None:
    with pytest.raises(StackError, match=r"^my/stack\.yaml: "):
        parse_stack("version: 1\nnmae: x\n", {}, "my/stack.yaml")


def test_load_stack_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "prod.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\nname: prod\nstate_dir: state\n")
    loaded = load_stack(path)
    assert loaded.stack.name == "prod"
    assert loaded.source == str(path)
    # relative state dirs resolve against the stack file, not the working directory
    assert loaded.state_dir == (path.parent / "state").resolve()


def test_load_stack_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="stack file not found") as info:
        load_stack(tmp_path / "nope.yaml")
    assert info.value.exit_code == 2


def test_load_stack_unreadable_path_is_a_stack_error(tmp_path: Path) -> None:
    with pytest.raises(StackError) as info:
        load_stack(tmp_path)  # a directory
    assert info.value.exit_code == 2


def test_load_stack_prefers_stack_yaml_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_stack(None).source == "(built-in default stack)"
    (tmp_path / "stack.yaml").write_text("version: 1\nname: here\n")
    loaded = load_stack(None)
    assert loaded.stack.name == "here"
    assert loaded.base_dir == tmp_path.resolve()


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\nname: bom\n")
    assert load_stack(path).stack.name == "bom"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("version: 1\nname: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 2)"),
        ("version: 1\n".encode("utf-16"), "UTF-16 or UTF-32 text"),
        ("version: 1\n".encode("utf-16-be"), "NUL bytes at line 1"),
    ],
)
def test_files_not_in_utf8_are_stack_errors_for_every_command(
    tmp_path: Path, data: bytes, fragment: str
) -> None:
    path = tmp_path / "stack.yaml"
    path.write_bytes(data)
    # load_stack: up, validate, render...; locate_state_dir: status, down, logs, audit
    for read in (load_stack, locate_state_dir):
        with pytest.raises(StackError) as info:
            read(path)
        assert info.value.exit_code == 2
        assert info.value.message.startswith(f"{path}: ")
        assert fragment in info.value.message
        assert info.value.hint is not None and "save it as UTF-8" in info.value.hint


def test_locate_state_dir_is_lenient_about_duplicate_keys_only(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("version: 1\nstate_dir: a\nstate_dir: b\nnot_a_key: 1\n")
    assert locate_state_dir(path) == (tmp_path / "b").resolve()
    with pytest.raises(StackError, match="duplicate key `state_dir`"):
        load_stack(path)
    path.write_text("version: 1\nstate_dir: ${STATE\n")
    with pytest.raises(StackError, match=r"stack\.yaml: state_dir: `\$\{STATE` is not closed"):
        locate_state_dir(path)


def test_anchors_aliases_and_merge_keys_still_work() -> None:
    text = (
        "version: 1\n"
        "workers:\n"
        "  - &w {name: w1, pool: p, limit: 2}\n"
        "  - <<: *w\n"
        "    name: w2\n"  # overriding a merged key is not a duplicate
        "    limit: 3\n"
    )
    workers = parse_stack(text, {}).workers
    assert [(w.name, w.pool, w.limit) for w in workers] == [("w1", "p", 2), ("w2", "p", 3)]


def test_a_reasonable_file_with_many_values_parses() -> None:
    variables = "".join(f"  - {{name: v{i}, value: {{a: [1, 2, x{i}]}}}}\n" for i in range(500))
    stack = parse_stack("version: 1\nvariables:\n" + variables, {})
    assert len(stack.variables) == 500


def test_a_text_over_the_limit_is_refused_before_parsing() -> None:
    with pytest.raises(StackError, match="larger than 256 KB") as info:
        parse_stack("version: 1\n" + "#" * reader.MAX_BYTES, {}, "big.yaml")
    assert info.value.exit_code == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the rule is for root")
def test_root_keeps_state_where_the_unprivileged_account_can_reach_it() -> None:
    """As root, the default `.prefectstack` next to a stack file in a directory the stack's
    account can't enter (root's 0700 home) moves to /var/lib/prefectstack/<name>; nothing's
    permissions change. A state_dir set to another path is used as given (and `up` refuses
    it, naming the blocking directory, if it is out of reach)."""
    import shutil
    import tempfile

    from prefectstack.stack.loader import SYSTEM_STATE_ROOT

    top = Path(tempfile.mkdtemp(prefix="prefectstack-home-", dir="/tmp"))
    top.chmod(0o755)  # mkdtemp's 0700 would block everything below it
    try:
        home = top / "home"
        home.mkdir(mode=0o700)
        home.chmod(0o700)
        (home / "stack.yaml").write_text("version: 1\nname: blocked\n")
        assert load_stack(home / "stack.yaml").state_dir == SYSTEM_STATE_ROOT / "blocked"
        assert locate_state_dir(home / "stack.yaml") == SYSTEM_STATE_ROOT / "blocked"
        (home / "stack.yaml").write_text("version: 1\nname: blocked\nstate_dir: mine\n")
        assert load_stack(home / "stack.yaml").state_dir == (home / "mine").resolve()
        home.chmod(0o711)  # reachable: the default stays next to the stack file
        (home / "stack.yaml").write_text("version: 1\nname: open\n")
        assert load_stack(home / "stack.yaml").state_dir == (home / ".prefectstack").resolve()
        assert stat.S_IMODE(home.stat().st_mode) == 0o711  # untouched by the loader
    finally:
        shutil.rmtree(top)
