"""Slow down, then refuse, repeated failed sign-ins: per address and per account.

Per address: within a window, the first `free` failures cost nothing; after that each new
attempt must wait twice as long as the one before (1 s, 2 s, 4 s, ...), and from
`lock_after` failures the address is refused for `lockout` seconds. "Wait" means the attempt
is answered 429 with Retry-After rather than held open, so an attacker cannot tie up the
service with slow requests. A success clears the address.

Per account (the username tried, known or not): the same ladder with its own, looser
numbers, so that spraying one account from many addresses is slowed down too. An attacker
must not be able to lock a person out with it, so the account lock is bounded twice:
- it lasts `account_lockout` (15 minutes) after the failure that set it, at most; while it
  holds, attempts are refused before any password is checked, so they don't extend it;
- it never applies to an address the account signed in from successfully in the last
  `remember` seconds (30 days): the person at their usual address still gets in, and still
  under that address's own limit.
A success does not clear the account's count (an attacker alongside the real user would
get fresh attempts after each of their sign-ins); the failures age out of the window.

Only password attempts count: API keys and session tokens are 256-bit random values, and a
valid key from a locked address still works.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds, for the Retry-After header


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    blocked_until: float = 0.0


class _Ladder:
    """Failures counted per key (an address or an account); not thread-safe on its own."""

    def __init__(self, *, free: int, lock_after: int, window: float, lockout: float,
                 max_keys: int) -> None:
        self.free = free
        self.lock_after = lock_after
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self.entries: dict[str, _Failures] = {}

    def check(self, key: str, now: float) -> Verdict:
        entry = self._current(key, now)
        if entry is None or entry.blocked_until <= now:
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(entry.blocked_until - now)))

    def failure(self, key: str, now: float) -> Verdict:
        entry = self._current(key, now) or self._new(key)
        entry.times.append(now)
        count = len(entry.times)
        if count >= self.lock_after:
            entry.blocked_until = now + self.lockout
        elif count > self.free:
            entry.blocked_until = now + min(2.0 ** (count - self.free - 1), self.lockout)
        else:
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(entry.blocked_until - now)))

    def clear(self, key: str) -> None:
        self.entries.pop(key, None)

    def _current(self, key: str, now: float) -> _Failures | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        entry.times = [t for t in entry.times if now - t < self.window]
        if not entry.times and entry.blocked_until <= now:
            del self.entries[key]
            return None
        return entry

    def _new(self, key: str) -> _Failures:
        if len(self.entries) >= self.max_keys:
            # Forget the key tracked longest; a flood of keys must not grow memory.
            self.entries.pop(next(iter(self.entries)))
        entry = self.entries[key] = _Failures()
        return entry


def account_key(username: str) -> str:
    """One counter for every spelling of a name that differs only in case or spaces."""
    return username.strip().casefold()


class Throttle:
    def __init__(
        self,
        *,
        free: int = 3,
        lock_after: int = 10,
        window: float = 15 * 60,
        lockout: float = 15 * 60,
        max_addresses: int = 10_000,
        account_free: int = 5,
        account_lock_after: int = 20,
        account_window: float = 15 * 60,
        account_lockout: float = 15 * 60,
        max_accounts: int = 10_000,
        remember: float = 30 * 24 * 3600,
        max_remembered: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses = _Ladder(free=free, lock_after=lock_after, window=window,
                                  lockout=lockout, max_keys=max_addresses)
        self._accounts = _Ladder(free=account_free, lock_after=account_lock_after,
                                 window=account_window, lockout=account_lockout,
                                 max_keys=max_accounts)
        self.remember = remember
        self.max_remembered = max_remembered
        self._known: dict[tuple[str, str], float] = {}  # (account, address) -> last success

    @property
    def _by_address(self) -> dict[str, _Failures]:
        return self._addresses.entries

    @property
    def _by_account(self) -> dict[str, _Failures]:
        return self._accounts.entries

    def check(self, address: str, account: str | None = None) -> Verdict:
        """May this address try a password (for this account) now?"""
        now = self._clock()
        with self._lock:
            verdict = self._addresses.check(address, now)
            if not verdict.allowed or account is None or self._is_known(account, address, now):
                return verdict
            return self._accounts.check(account_key(account), now)

    def failure(self, address: str, account: str | None = None) -> Verdict:
        """Record a failed attempt; the verdict says when the next one may come."""
        now = self._clock()
        with self._lock:
            verdict = self._addresses.failure(address, now)
            if account is None:
                return verdict
            by_account = self._accounts.failure(account_key(account), now)
            if self._is_known(account, address, now):
                return verdict
            return max(verdict, by_account, key=lambda v: (not v.allowed, v.retry_after))

    def success(self, address: str, account: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._addresses.clear(address)
            if account is None:
                return
            pair = (account_key(account), address)
            self._known.pop(pair, None)
            if len(self._known) >= self.max_remembered:
                self._known.pop(next(iter(self._known)))  # the least recently successful
            self._known[pair] = now

    def _is_known(self, account: str, address: str, now: float) -> bool:
        pair = (account_key(account), address)
        last = self._known.get(pair)
        if last is None:
            return False
        if now - last >= self.remember:
            del self._known[pair]
            return False
        return True


THROTTLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_throttle (
    ladder TEXT NOT NULL, key TEXT NOT NULL, times TEXT NOT NULL, blocked_until REAL NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (ladder, key));
CREATE TABLE IF NOT EXISTS auth_signins (
    account TEXT NOT NULL, address TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (account, address));
"""
# Rows untouched this long are past every window and lockout, and past `remember` for
# sign-ins; they are deleted now and then.
SWEEP_INTERVAL = 600.0


class SharedThrottle(Throttle):
    """The same limits, counted in the auth database, so that every auth process (the pods
    of a replicated auth service) sees the same failures: otherwise each pod would grant an
    attacker its own ladder. Each decision loads the few rows it needs, applies Throttle's
    own rules and writes them back, in one transaction under the database's advisory lock
    (sign-ins are rare; password checks happen outside it). Wall-clock time: pods share it,
    not a monotonic clock."""

    def __init__(self, database: Any, **limits: Any) -> None:
        super().__init__(clock=limits.pop("clock", time.time), **limits)
        self._db = database
        database.script(THROTTLE_SCHEMA)
        self._swept = 0.0

    def check(self, address: str, account: str | None = None) -> Verdict:
        verdict: Verdict = self._shared(address, account,
                                        lambda: Throttle.check(self, address, account))
        return verdict

    def failure(self, address: str, account: str | None = None) -> Verdict:
        verdict: Verdict = self._shared(address, account,
                                        lambda: Throttle.failure(self, address, account))
        return verdict

    def success(self, address: str, account: str | None = None) -> None:
        self._shared(address, account, lambda: Throttle.success(self, address, account))

    def _shared(self, address: str, account: str | None, decide: Callable[[], Any]) -> Any:
        keys = {"address": address}
        if account is not None:
            keys["account"] = account_key(account)
        ladders = {"address": self._addresses, "account": self._accounts}
        with self._db.tx(lock=True) as conn:
            for ladder in ladders.values():
                ladder.entries.clear()
            self._known.clear()
            for name, key in keys.items():
                row = conn.execute(
                    "SELECT times, blocked_until FROM auth_throttle WHERE ladder=? AND key=?",
                    (name, key)).fetchone()
                if row is not None:
                    ladders[name].entries[key] = _Failures(
                        [float(t) for t in json.loads(row["times"])],
                        float(row["blocked_until"]))
            pair = None
            if account is not None:
                pair = (account_key(account), address)
                row = conn.execute("SELECT at FROM auth_signins WHERE account=? AND address=?",
                                   pair).fetchone()
                if row is not None:
                    self._known[pair] = float(row["at"])
            result = decide()
            now = self._clock()
            for name, key in keys.items():
                entry = ladders[name].entries.get(key)
                if entry is None:
                    conn.execute("DELETE FROM auth_throttle WHERE ladder=? AND key=?",
                                 (name, key))
                else:
                    conn.execute(
                        "INSERT INTO auth_throttle VALUES (?,?,?,?,?) ON CONFLICT (ladder, key)"
                        " DO UPDATE SET times=excluded.times,"
                        " blocked_until=excluded.blocked_until, updated_at=excluded.updated_at",
                        (name, key, json.dumps(entry.times), entry.blocked_until, now))
            if pair is not None:
                if pair in self._known:
                    conn.execute(
                        "INSERT INTO auth_signins VALUES (?,?,?) ON CONFLICT (account, address)"
                        " DO UPDATE SET at=excluded.at", (*pair, self._known[pair]))
                else:
                    conn.execute("DELETE FROM auth_signins WHERE account=? AND address=?", pair)
            if now - self._swept >= SWEEP_INTERVAL:
                self._swept = now
                stale = max(self._addresses.window, self._addresses.lockout,
                            self._accounts.window, self._accounts.lockout)
                conn.execute("DELETE FROM auth_throttle WHERE updated_at < ?", (now - stale,))
                conn.execute("DELETE FROM auth_signins WHERE at < ?", (now - self.remember,))
        return result
