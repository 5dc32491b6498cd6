"""Users, API keys and sessions: in one SQLite file (WAL, mode 0600), or in PostgreSQL when
several auth processes share them (auth/database.py).

Passwords are argon2id hashes. API keys and session tokens are 256-bit random values, so a
sha256 of them is enough and lets every request look them up in one indexed read; only the
hash is stored, and a key is shown once, at creation. The store is read on every request, so a
revoked key or a removed user stops working at once, from any process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from prefectstack.apikeys import key_prefix, new_api_key
from prefectstack.auth.database import Database, SqliteDatabase
from prefectstack.auth.roles import Role
from prefectstack.errors import StackError

DB_FILE = "auth.db"
USERNAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
SESSION_SECONDS = 12 * 3600
# last_used is bookkeeping, not security: writing it on every request would turn each read
# through the edge into a database write.
LAST_USED_RESOLUTION = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    prefix TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, key_hash TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, last_used_at REAL,
    pools TEXT);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(username);
"""


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    prefix: str
    name: str
    role: Role
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    pools: tuple[str, ...] | None = None
    """the work pools a `worker` key serves (auth/pools.py); None: any pool"""

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class Identity:
    """Who a request is: a user (by password or session) or an API key."""

    name: str  # the username, or `key:<prefix>` for an API key
    role: Role
    key_prefix: str | None = None
    via: str = "password"  # password | session | key
    pools: frozenset[str] | None = None  # a worker key scoped to these work pools


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Store:
    def __init__(
        self,
        directory: Path,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
        database: Database | None = None,
    ) -> None:
        """`directory`: where the SQLite file is, unless `database` is given."""
        if database is None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            database = SqliteDatabase(directory / DB_FILE)
        self.db = database
        # The SQLite file, which `GET /auth/backup` copies; None in PostgreSQL (pg_dump).
        self.path: Path | None = database.path if isinstance(database, SqliteDatabase) else None
        self._hasher = hasher or PasswordHasher()
        self._clock = clock
        database.script(_SCHEMA)
        if "pools" not in database.columns("api_keys"):  # a store from before pool scopes
            database.execute("ALTER TABLE api_keys ADD COLUMN pools TEXT")
        # A dummy hash to verify against for unknown users, so timing does not tell
        # whether a username exists.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        # Verified Basic credentials -> the stored hash they matched; valid while that hash is
        # still the user's (a password change invalidates it). Saves an argon2 run per request.
        self._verified: dict[str, str] = {}
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> Any:
        return self.db.tx()

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[Mapping[str, Any]]:
        return self.db.query(sql, args)

    # -- users

    def add_user(self, username: str, role: Role, password: str) -> User:
        if not USERNAME_PATTERN.fullmatch(username):
            raise StackError(
                f"invalid username {username!r}",
                hint="lowercase letters, digits, '.', '_' or '-', starting with a letter",
                exit_code=2,
            )
        _check_password(password)
        now = self._clock()
        password_hash = self._hasher.hash(password)
        with self._tx() as conn:
            added = conn.execute(
                "INSERT INTO users VALUES (?,?,?,?) ON CONFLICT (username) DO NOTHING",
                (username, role.value, password_hash, now),
            ).rowcount
        if not added:  # also when another auth process added it just now
            raise StackError(f"user {username!r} already exists", exit_code=2)
        return User(username, role, now)

    def users(self) -> list[User]:
        rows = self._query("SELECT username, role, created_at FROM users ORDER BY username")
        return [User(r["username"], Role(r["role"]), r["created_at"]) for r in rows]

    def has_user(self, username: str) -> bool:
        return bool(self._query("SELECT 1 FROM users WHERE username=?", (username,)))

    def remove_user(self, username: str) -> None:
        with self._tx() as conn:
            if not conn.execute("DELETE FROM users WHERE username=?", (username,)).rowcount:
                raise StackError(f"no user {username!r}", exit_code=2)
            conn.execute("DELETE FROM sessions WHERE username=?", (username,))

    def set_password(self, username: str, password: str) -> None:
        """Change a password and end every session of that user."""
        _check_password(password)
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE users SET password_hash=? WHERE username=?",
                (self._hasher.hash(password), username),
            ).rowcount
            if not changed:
                raise StackError(f"no user {username!r}", exit_code=2)
            conn.execute("DELETE FROM sessions WHERE username=?", (username,))

    def verify_password(self, username: str, password: str) -> Identity | None:
        rows = self._query("SELECT role, password_hash FROM users WHERE username=?", (username,))
        if not rows:
            self._argon2_matches(self._dummy_hash, password)
            return None
        stored: str = rows[0]["password_hash"]
        cache_key = _sha256(f"{username}\0{password}")
        with self._cache_lock:
            cached = self._verified.get(cache_key)
        if cached is None or not hmac.compare_digest(cached, stored):
            if not self._argon2_matches(stored, password):
                return None
            if self._hasher.check_needs_rehash(stored):
                stored = self._hasher.hash(password)
                self._store_hash(username, stored)
            self._remember(cache_key, stored)
        return Identity(username, Role(rows[0]["role"]), via="password")

    def _store_hash(self, username: str, password_hash: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE users SET password_hash=? WHERE username=?", (password_hash, username)
            )

    def _argon2_matches(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def _remember(self, cache_key: str, stored: str) -> None:
        with self._cache_lock:
            if len(self._verified) >= 1024:
                self._verified.pop(next(iter(self._verified)))
            self._verified[cache_key] = stored

    # -- API keys

    def create_key(self, name: str, role: Role, *, expires_at: float | None = None,
                   pools: Sequence[str] | None = None) -> str:
        """A new key, returned once; only its hash is kept."""
        key = new_api_key()
        self.import_key(name, role, key, expires_at=expires_at, pools=pools)
        return key

    def import_key(
        self, name: str, role: Role, key: str, *, expires_at: float | None = None,
        pools: Sequence[str] | None = None,
    ) -> bool:
        """Register a key generated elsewhere (the stack's own service keys live in its
        secrets file). Idempotent: False when the key is already known, even if revoked —
        a revoked service key stays revoked; a known key's pools are set to `pools` (the
        stack's workers may serve other pools since the last start)."""
        prefix = key_prefix(key)
        if prefix is None:
            raise StackError("not a prefectstack API key (expected pfs_<8 hex>_<43 chars>)")
        stored_pools = _pools_text(role, pools)
        with self._tx() as conn:
            added = conn.execute(
                "INSERT INTO api_keys (prefix, name, role, key_hash, created_at, expires_at,"
                " revoked_at, last_used_at, pools) VALUES (?,?,?,?,?,?,NULL,NULL,?)"
                " ON CONFLICT (prefix) DO NOTHING",
                (prefix, name, role.value, _sha256(key), self._clock(), expires_at,
                 stored_pools),
            ).rowcount
            if not added:  # known, also to another auth process starting at the same time
                conn.execute("UPDATE api_keys SET pools=? WHERE prefix=?",
                             (stored_pools, prefix))
        return bool(added)

    def keys(self) -> list[ApiKey]:
        rows = self._query("SELECT * FROM api_keys ORDER BY created_at, prefix")
        return [_key(r) for r in rows]

    def revoke_key(self, prefix: str) -> None:
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE api_keys SET revoked_at=? WHERE prefix=? AND revoked_at IS NULL",
                (self._clock(), prefix),
            ).rowcount
        if not changed:
            raise StackError(f"no active key {prefix!r}", hint="see `prefectstack keys list`")

    def verify_key(self, key: str) -> Identity | None:
        prefix = key_prefix(key)
        if prefix is None:
            return None
        rows = self._query("SELECT * FROM api_keys WHERE prefix=?", (prefix,))
        if not rows or not hmac.compare_digest(rows[0]["key_hash"], _sha256(key)):
            return None
        found, now = _key(rows[0]), self._clock()
        if not found.usable(now):
            return None
        if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
            with self._tx() as conn:
                conn.execute("UPDATE api_keys SET last_used_at=? WHERE prefix=?", (now, prefix))
        pools = None if found.pools is None else frozenset(found.pools)
        return Identity(f"key:{prefix}", found.role, key_prefix=prefix, via="key",
                        pools=pools)

    # -- sessions

    def create_session(self, username: str, seconds: float = SESSION_SECONDS) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO sessions VALUES (?,?,?,?)",
                (_sha256(token), username, now, now + seconds),
            )
        return token

    def verify_session(self, token: str) -> Identity | None:
        rows = self._query(
            "SELECT s.username, s.expires_at, u.role FROM sessions s"
            " JOIN users u ON u.username = s.username WHERE s.token_hash=?",
            (_sha256(token),),
        )
        if not rows or rows[0]["expires_at"] <= self._clock():
            return None
        return Identity(rows[0]["username"], Role(rows[0]["role"]), via="session")

    def end_session(self, token: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash=?", (_sha256(token),))


def _key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        row["prefix"],
        row["name"],
        Role(row["role"]),
        row["created_at"],
        row["expires_at"],
        row["revoked_at"],
        row["last_used_at"],
        None if row["pools"] is None else tuple(json.loads(row["pools"])),
    )


def _pools_text(role: Role, pools: Sequence[str] | None) -> str | None:
    """How a key's pools are stored: a JSON list (pool names may hold any character)."""
    if pools is None:
        return None
    if role is not Role.WORKER:
        raise StackError("only a worker key serves work pools", hint="use --role worker",
                         exit_code=2)
    names = sorted(set(pools))
    if any(not name or not name.strip() for name in names):
        raise StackError("a work pool name cannot be empty", exit_code=2)
    return json.dumps(names)


def _check_password(password: str) -> None:
    if len(password) < 12:
        raise StackError("a password needs at least 12 characters", exit_code=2)
