"""Slow down, then refuse, repeated failed sign-ins from one address.

Within a window, the first `free` failures cost nothing; after that each new attempt must
wait twice as long as the one before (1 s, 2 s, 4 s, ...), and from `lock_after` failures
the address is refused for `lockout` seconds. "Wait" means the attempt is answered 429 with
Retry-After rather than held open, so an attacker cannot tie up the service with slow
requests. A success clears the address. Only password attempts count: API keys and session
tokens are 256-bit random values, and a valid key from a locked address still works.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds, for the Retry-After header


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    blocked_until: float = 0.0


class Throttle:
    def __init__(
        self,
        *,
        free: int = 3,
        lock_after: int = 10,
        window: float = 15 * 60,
        lockout: float = 15 * 60,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.lock_after = lock_after
        self.window = window
        self.lockout = lockout
        self.max_addresses = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._by_address: dict[str, _Failures] = {}

    def check(self, address: str) -> Verdict:
        """May this address try a password now?"""
        now = self._clock()
        with self._lock:
            entry = self._current(address, now)
            if entry is None or entry.blocked_until <= now:
                return Verdict(True)
            return Verdict(False, max(1, math.ceil(entry.blocked_until - now)))

    def failure(self, address: str) -> Verdict:
        """Record a failed attempt; the verdict says when the next one may come."""
        now = self._clock()
        with self._lock:
            entry = self._current(address, now) or self._new(address)
            entry.times.append(now)
            count = len(entry.times)
            if count >= self.lock_after:
                entry.blocked_until = now + self.lockout
            elif count > self.free:
                entry.blocked_until = now + 2.0 ** (count - self.free - 1)
            else:
                return Verdict(True)
            return Verdict(False, max(1, math.ceil(entry.blocked_until - now)))

    def success(self, address: str) -> None:
        with self._lock:
            self._by_address.pop(address, None)

    def _current(self, address: str, now: float) -> _Failures | None:
        entry = self._by_address.get(address)
        if entry is None:
            return None
        entry.times = [t for t in entry.times if now - t < self.window]
        if not entry.times and entry.blocked_until <= now:
            del self._by_address[address]
            return None
        return entry

    def _new(self, address: str) -> _Failures:
        if len(self._by_address) >= self.max_addresses:
            # Forget the address tracked longest; a flood of addresses must not grow memory.
            self._by_address.pop(next(iter(self._by_address)))
        entry = self._by_address[address] = _Failures()
        return entry
