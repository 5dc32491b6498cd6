"""Users, keys and sessions in SQLite."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from prefectstack.apikeys import KEY_PATTERN, key_prefix
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.errors import StackError

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fast_hasher() -> PasswordHasher:
    # argon2id still, with test-sized costs; production uses argon2-cffi's defaults.
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    return Store(tmp_path / "auth", hasher=fast_hasher(), clock=clock)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_is_private_and_in_wal_mode(store: Store) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    assert mode(store.path) == 0o600
    assert mode(store.path.parent) == 0o700
    for sidecar in store.path.parent.glob("auth.db-*"):
        assert mode(sidecar) == 0o600, sidecar
    assert (store.path.parent / "auth.db-wal").exists()


def test_passwords_are_argon2id_hashes(store: Store) -> None:
    store.add_user("alice", Role.OPERATOR, PASSWORD)
    raw = store.path.read_bytes() + (store.path.parent / "auth.db-wal").read_bytes()
    assert b"$argon2id$" in raw
    assert PASSWORD.encode() not in raw


def test_verify_password(store: Store) -> None:
    store.add_user("alice", Role.OPERATOR, PASSWORD)
    identity = store.verify_password("alice", PASSWORD)
    assert identity is not None
    assert (identity.name, identity.role, identity.via) == ("alice", Role.OPERATOR, "password")
    assert store.verify_password("alice", PASSWORD + "x") is None
    assert store.verify_password("bob", PASSWORD) is None
    # the second check of the same credentials comes from the cache, with the same answer
    assert store.verify_password("alice", PASSWORD) == identity


def test_password_change_invalidates_cache_and_sessions(store: Store) -> None:
    store.add_user("alice", Role.ADMIN, PASSWORD)
    assert store.verify_password("alice", PASSWORD) is not None
    token = store.create_session("alice")
    store.set_password("alice", "another long password")
    assert store.verify_password("alice", PASSWORD) is None
    assert store.verify_password("alice", "another long password") is not None
    assert store.verify_session(token) is None


def test_user_rules(store: Store) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    with pytest.raises(StackError, match="already exists"):
        store.add_user("alice", Role.ADMIN, PASSWORD)
    with pytest.raises(StackError, match="invalid username"):
        store.add_user("Alice:1", Role.VIEWER, PASSWORD)
    with pytest.raises(StackError, match="12 characters"):
        store.add_user("bob", Role.VIEWER, "short")
    with pytest.raises(StackError, match="no user"):
        store.remove_user("carol")
    assert [u.username for u in store.users()] == ["alice"]


def test_removing_a_user_ends_their_sessions(store: Store) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    token = store.create_session("alice")
    assert store.verify_session(token) is not None
    store.remove_user("alice")
    assert store.verify_session(token) is None
    assert store.verify_password("alice", PASSWORD) is None


def test_role_changes_apply_to_existing_sessions(store: Store) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    token = store.create_session("alice")
    session = store.verify_session(token)
    assert session is not None and session.role is Role.VIEWER and session.via == "session"


def test_sessions_expire(store: Store, clock: Clock) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    token = store.create_session("alice", seconds=60)
    clock.now += 59
    assert store.verify_session(token) is not None
    clock.now += 1
    assert store.verify_session(token) is None
    store.end_session(token)
    assert store.verify_session("not a token") is None


def test_session_tokens_are_stored_hashed(store: Store) -> None:
    store.add_user("alice", Role.VIEWER, PASSWORD)
    token = store.create_session("alice")
    raw = store.path.read_bytes() + (store.path.parent / "auth.db-wal").read_bytes()
    assert token.encode() not in raw


def test_keys_are_shown_once_and_stored_hashed(store: Store) -> None:
    key = store.create_key("ci", Role.DEVELOPER)
    assert KEY_PATTERN.fullmatch(key)
    prefix = key_prefix(key)
    assert prefix is not None and prefix.startswith("pfs_") and len(prefix) == 12
    raw = store.path.read_bytes() + (store.path.parent / "auth.db-wal").read_bytes()
    assert key.encode() not in raw
    assert key[13:].encode() not in raw  # not even the secret part
    identity = store.verify_key(key)
    assert identity is not None
    assert (identity.name, identity.role, identity.key_prefix) == (
        f"key:{prefix}",
        Role.DEVELOPER,
        prefix,
    )


def test_wrong_or_malformed_keys(store: Store) -> None:
    key = store.create_key("ci", Role.VIEWER)
    assert store.verify_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.verify_key("pfs_nothex00_" + "a" * 43) is None
    assert store.verify_key("") is None
    assert key_prefix("pfs_ab12cd34") is None


def test_revoked_key_stops_at_once(store: Store, tmp_path: Path) -> None:
    key = store.create_key("ci", Role.VIEWER)
    prefix = key_prefix(key)
    assert prefix is not None
    # revoked from another process's connection (the CLI), seen by this one immediately
    other = Store(tmp_path / "auth", hasher=fast_hasher())
    other.revoke_key(prefix)
    assert store.verify_key(key) is None
    with pytest.raises(StackError, match="no active key"):
        other.revoke_key(prefix)
    (listed,) = store.keys()
    assert listed.revoked_at is not None and listed.name == "ci"


def test_expired_key_is_refused(store: Store, clock: Clock) -> None:
    key = store.create_key("temp", Role.VIEWER, expires_at=clock.now + 3600)
    assert store.verify_key(key) is not None
    clock.now += 3600
    assert store.verify_key(key) is None


def test_last_used_is_recorded_coarsely(store: Store, clock: Clock) -> None:
    key = store.create_key("ci", Role.VIEWER)
    assert store.keys()[0].last_used_at is None
    store.verify_key(key)
    first = store.keys()[0].last_used_at
    assert first == clock.now
    clock.now += 10
    store.verify_key(key)
    assert store.keys()[0].last_used_at == first  # within the resolution: no write
    clock.now += 60
    store.verify_key(key)
    assert store.keys()[0].last_used_at == clock.now
