"""The auth service's first run (`python -m prefectstack.auth`): the bootstrap admin while
there is no user, and the stack's own service keys, each registered once."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from prefectstack.auth.__main__ import ADMIN_USERNAME, bootstrap
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store

PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024,
                                                          parallelism=1))


def _key() -> str:
    return f"pfs_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def test_admin_is_created_only_while_there_is_no_user(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECTSTACK_ADMIN_PASSWORD", PASSWORD)
    bootstrap(store)
    identity = store.verify_password(ADMIN_USERNAME, PASSWORD)
    assert identity is not None and identity.role is Role.ADMIN
    store.set_password(ADMIN_USERNAME, "changed by the admin")
    bootstrap(store)  # every restart: the changed password stays
    assert store.verify_password(ADMIN_USERNAME, PASSWORD) is None


def test_no_admin_without_a_password(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECTSTACK_ADMIN_PASSWORD", raising=False)
    bootstrap(store)
    assert store.users() == []


def test_service_keys_are_registered_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _key()
    monkeypatch.setenv("PREFECTSTACK_SERVICE_KEYS",
                       json.dumps([{"name": "worker", "role": "worker", "key": worker}]))
    bootstrap(store)
    bootstrap(store)
    registered = store.keys()
    assert [(k.name, k.role) for k in registered] == [("worker", Role.WORKER)]
    identity = store.verify_key(worker)
    assert identity is not None and identity.role is Role.WORKER
