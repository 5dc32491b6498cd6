"""The secret store: generated once, stored 0600, reused, refused when others can read it.

Assertions compare values with each other and never put one in a message: a failing test
must not print a secret.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.runtime import files, secret_store

FILE = "secrets.json"  # the name `down --volumes` keeps and the compose README documents
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)
# What the auth service accepts as an API key: `pfs_<8 hex>_<43 url-safe chars>`.
API_KEY = re.compile(r"^pfs_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_generates_missing_secrets_and_stores_them_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"  # created on demand
    values = secret_store.ensure(state_dir, {"postgres_password", "redis_password"})
    assert set(values) == {"postgres_password", "redis_password"}
    assert values["postgres_password"] != values["redis_password"]
    assert all(URL_SAFE.match(v) for v in values.values()), "not 32 url-safe random bytes"
    path = state_dir / FILE
    assert _mode(path) == 0o600
    assert json.loads(path.read_text()) == values
    assert not (state_dir / (FILE + ".tmp")).exists()  # written atomically, nothing left over


def test_second_ensure_reuses_the_values_without_rewriting(tmp_path: Path) -> None:
    first = secret_store.ensure(tmp_path, {"a_password", "b_password"})
    path = tmp_path / FILE
    content, inode = path.read_bytes(), path.stat().st_ino
    second = secret_store.ensure(tmp_path, {"a_password", "b_password"})
    assert second == first
    assert path.read_bytes() == content
    assert path.stat().st_ino == inode  # not even replaced by an identical copy
    assert secret_store.ensure(tmp_path, {"a_password"})["a_password"] == first["a_password"]


def test_a_new_name_is_added_and_the_old_values_kept(tmp_path: Path) -> None:
    first = secret_store.ensure(tmp_path, {"old_password"})
    both = secret_store.ensure(tmp_path, {"old_password", "new_password"})
    assert both["old_password"] == first["old_password"]
    assert URL_SAFE.match(both["new_password"])
    assert secret_store.load(tmp_path) == both
    assert _mode(tmp_path / FILE) == 0o600


def test_a_name_no_longer_asked_for_is_kept(tmp_path: Path) -> None:
    first = secret_store.ensure(tmp_path, {"a_password", "b_password"})
    secret_store.ensure(tmp_path, {"c_password"})
    kept = secret_store.load(tmp_path)
    assert kept["a_password"] == first["a_password"]
    assert kept["b_password"] == first["b_password"]


def test_api_key_names_get_the_api_key_format(tmp_path: Path) -> None:
    values = secret_store.ensure(tmp_path, {"exporter_api_key", "session_secret"})
    assert API_KEY.match(values["exporter_api_key"]), "not a pfs_<8 hex>_<43> key"
    assert not values["session_secret"].startswith("pfs_")
    assert URL_SAFE.match(values["session_secret"])


def test_load_without_a_file_is_empty(tmp_path: Path) -> None:
    assert secret_store.load(tmp_path) == {}
    assert not (tmp_path / FILE).exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused_with_a_chmod_hint(tmp_path: Path, mode: int) -> None:
    secret_store.ensure(tmp_path, {"a_password"})
    path = tmp_path / FILE
    path.chmod(mode)
    with pytest.raises(StackError) as caught:
        secret_store.ensure(tmp_path, {"a_password"})
    assert caught.value.hint == f"chmod 600 {path}"
    assert "chmod 600" in str(caught.value)
    assert f"{mode:o}" in caught.value.message
    assert _mode(path) == mode  # reported, not silently "fixed"


def test_corrupt_json_is_a_stack_error(tmp_path: Path) -> None:
    path = tmp_path / FILE
    secret_store.write_private(path, '{"a_password": "trunc')
    with pytest.raises(StackError) as caught:
        secret_store.ensure(tmp_path, {"a_password"})
    assert "corrupt" in caught.value.message and str(path) in caught.value.message
    assert caught.value.hint and "backup" in caught.value.hint
    assert path.read_text() == '{"a_password": "trunc'  # never overwritten with new values


@pytest.mark.parametrize("text", ["[]", "null", '"s"', "1", '["a_password"]'])
def test_json_that_is_not_an_object_is_a_stack_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / FILE
    secret_store.write_private(path, text)
    with pytest.raises(StackError) as caught:
        secret_store.load(tmp_path)
    assert "corrupt" in caught.value.message and str(path) in caught.value.message
    assert "JSON object" in caught.value.message
    assert caught.value.hint and "backup" in caught.value.hint
    with pytest.raises(StackError):
        secret_store.ensure(tmp_path, {"a_password"})
    assert path.read_text() == text  # never overwritten with new values


def test_bytes_that_are_not_utf8_are_a_stack_error(tmp_path: Path) -> None:
    path = tmp_path / FILE
    path.write_bytes(b"\xff\xfe garbage")
    path.chmod(0o600)
    with pytest.raises(StackError) as caught:
        secret_store.load(tmp_path)
    assert "corrupt" in caught.value.message and str(path) in caught.value.message


def test_a_leftover_temporary_file_does_not_widen_the_mode(tmp_path: Path) -> None:
    leftover = tmp_path / (FILE + ".tmp")
    leftover.write_text("")
    leftover.chmod(0o644)
    secret_store.ensure(tmp_path, {"a_password"})
    assert _mode(tmp_path / FILE) == 0o600
    assert leftover.read_text() == "" and _mode(leftover) == 0o644  # not reused


def test_writes_leave_no_temporary_file_behind(tmp_path: Path) -> None:
    secret_store.ensure(tmp_path, {"a_password"})
    secret_store.ensure(tmp_path, {"a_password", "b_password"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = secret_store.ensure(tmp_path, {"a_password"})
    content = (tmp_path / FILE).read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        secret_store.ensure(tmp_path, {"a_password", "b_password"})
    assert (tmp_path / FILE).read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE]
    monkeypatch.undo()
    assert secret_store.load(tmp_path) == first


def test_write_private_creates_parents_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "file.env"
    secret_store.write_private(path, "X=1\n")
    assert path.read_text() == "X=1\n"
    assert _mode(path) == 0o600
    path.chmod(0o644)
    secret_store.write_private(path, "X=2\n")  # rewriting replaces the file: 0600 again
    assert _mode(path) == 0o600
