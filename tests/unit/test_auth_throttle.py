"""Failed sign-ins from one address, and against one account: free, then slowed down, then
refused; clock injected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefectstack.auth.throttle import Throttle, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kwargs: float) -> Throttle:
    settings: dict[str, float] = {"free": 3, "lock_after": 6, "window": 900, "lockout": 600,
                                  "account_free": 5, "account_lock_after": 10,
                                  "account_window": 900, "account_lockout": 900}
    settings.update(kwargs)
    return Throttle(
        free=int(settings["free"]),
        lock_after=int(settings["lock_after"]),
        window=settings["window"],
        lockout=settings["lockout"],
        account_free=int(settings["account_free"]),
        account_lock_after=int(settings["account_lock_after"]),
        account_window=settings["account_window"],
        account_lockout=settings["account_lockout"],
        clock=clock,
    )


def test_first_failures_are_free() -> None:
    throttle = make(Clock())
    for _ in range(3):
        assert throttle.failure("10.0.0.1") == Verdict(True)
        assert throttle.check("10.0.0.1").allowed


def test_then_each_attempt_waits_twice_as_long() -> None:
    clock = Clock()
    throttle = make(clock)
    for _ in range(3):
        throttle.failure("10.0.0.1")
    waits = []
    for _ in range(2):
        verdict = throttle.failure("10.0.0.1")
        assert not verdict.allowed
        waits.append(verdict.retry_after)
        assert throttle.check("10.0.0.1") == Verdict(False, verdict.retry_after)
        clock.now += verdict.retry_after
        assert throttle.check("10.0.0.1").allowed
    assert waits == [1, 2]


def test_then_the_address_is_refused_for_the_lockout() -> None:
    clock = Clock()
    throttle = make(clock)
    for _ in range(5):
        throttle.failure("10.0.0.1")
    verdict = throttle.failure("10.0.0.1")
    assert verdict == Verdict(False, 600)
    clock.now += 599
    assert throttle.check("10.0.0.1") == Verdict(False, 1)
    clock.now += 1
    assert throttle.check("10.0.0.1").allowed


def test_other_addresses_are_unaffected() -> None:
    throttle = make(Clock())
    for _ in range(6):
        throttle.failure("10.0.0.1")
    assert not throttle.check("10.0.0.1").allowed
    assert throttle.check("10.0.0.2").allowed


def test_success_clears_the_address() -> None:
    throttle = make(Clock())
    for _ in range(4):
        throttle.failure("10.0.0.1")
    throttle.success("10.0.0.1")
    assert throttle.check("10.0.0.1").allowed
    assert throttle.failure("10.0.0.1").allowed


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = Clock()
    throttle = make(clock)
    for _ in range(3):
        throttle.failure("10.0.0.1")
    clock.now += 900
    assert throttle.failure("10.0.0.1").allowed  # the count started again


def test_memory_is_bounded() -> None:
    throttle = Throttle(max_addresses=2, clock=Clock())
    for address in ["a", "b", "c"]:
        throttle.failure(address)
    assert len(throttle._by_address) == 2
    assert "a" not in throttle._by_address


def spray(throttle: Throttle, account: str, count: int, start: int = 0) -> list[Verdict]:
    """One failed attempt each from `count` different addresses."""
    return [throttle.failure(f"198.51.100.{n}", account) for n in range(start, start + count)]


def test_spraying_one_account_from_many_addresses_is_slowed_then_locked() -> None:
    clock = Clock()
    throttle = make(clock)
    verdicts = spray(throttle, "alice", 9)
    assert all(v.allowed for v in verdicts[:5])  # account_free
    assert [v.retry_after for v in verdicts[5:]] == [1, 2, 4, 8]
    assert not throttle.check("203.0.113.1", "alice").allowed  # a fresh address waits too
    assert throttle.check("203.0.113.1", "bob").allowed  # other accounts are unaffected
    assert spray(throttle, "alice", 1, start=9) == [Verdict(False, 900)]  # account_lock_after
    clock.now += 899
    assert throttle.check("203.0.113.1", "alice") == Verdict(False, 1)


def test_the_account_lock_is_bounded() -> None:
    clock = Clock()
    throttle = make(clock)
    spray(throttle, "alice", 10)
    # refused attempts during the lock check no password and don't extend it
    for _ in range(50):
        assert not throttle.check("198.51.100.77", "alice").allowed
    clock.now += 900
    assert throttle.check("203.0.113.1", "alice").allowed


def test_an_address_the_account_signed_in_from_is_not_held_by_the_account_lock() -> None:
    clock = Clock()
    throttle = make(clock)
    throttle.success("192.0.2.10", "alice")  # alice's usual address
    spray(throttle, "alice", 10)
    assert not throttle.check("203.0.113.1", "alice").allowed
    assert throttle.check("192.0.2.10", "alice").allowed
    # a typo there is counted for that address only, as before
    assert throttle.failure("192.0.2.10", "alice").allowed
    # after `remember` the address is a stranger again
    clock.now += throttle.remember
    spray(throttle, "alice", 10, start=20)
    assert not throttle.check("192.0.2.10", "alice").allowed


def test_a_success_does_not_clear_the_account_count() -> None:
    throttle = make(Clock())
    spray(throttle, "alice", 5)
    throttle.success("192.0.2.10", "alice")
    assert not throttle.failure("198.51.100.200", "alice").allowed


def test_spellings_of_one_name_share_the_account_count() -> None:
    throttle = make(Clock())
    for n, name in enumerate(["alice", "Alice", " ALICE ", "alice", "aLice", "alice"]):
        last = throttle.failure(f"198.51.100.{n}", name)
    assert not last.allowed


def test_account_memory_is_bounded() -> None:
    throttle = Throttle(max_accounts=2, max_remembered=2, clock=Clock())
    for name in ["a", "b", "c"]:
        throttle.failure("10.0.0.1", name)
        throttle.success("10.0.0.1", name)
    assert len(throttle._by_account) == 2
    assert len(throttle._known) == 2


def test_pods_sharing_a_database_decide_exactly_as_one_throttle(tmp_path: Path) -> None:
    """Two SharedThrottles on one database (two auth pods), picked at random for each
    attempt, give the verdicts one in-memory Throttle gives for the same attempts."""
    import random

    from prefectstack.auth.database import SqliteDatabase
    from prefectstack.auth.throttle import SharedThrottle

    clock = Clock()
    limits: dict[str, Any] = {"free": 2, "lock_after": 5, "window": 300, "lockout": 120,
                              "account_free": 3, "account_lock_after": 7,
                              "account_window": 300, "account_lockout": 200,
                              "remember": 1000, "clock": clock}
    single = Throttle(**limits)
    pods = [SharedThrottle(SqliteDatabase(tmp_path / "auth.db"), **limits) for _ in range(2)]
    rng = random.Random(12)
    for step in range(500):
        clock.now += rng.choice([0, 0, 0.5, 1, 3, 30, 150])
        address = rng.choice(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        account = rng.choice([None, "ada", "Ada ", "bob"])
        op = rng.choices(["check", "failure", "success"], [4, 4, 1])[0]
        pod = rng.choice(pods)
        expected = getattr(single, op)(address, account)
        assert getattr(pod, op)(address, account) == expected, (step, op, address, account)
