"""Failed sign-ins from one address: free, then slowed down, then refused; clock injected."""

from __future__ import annotations

from prefectstack.auth.throttle import Throttle, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kwargs: float) -> Throttle:
    settings: dict[str, float] = {"free": 3, "lock_after": 6, "window": 900, "lockout": 600}
    settings.update(kwargs)
    return Throttle(
        free=int(settings["free"]),
        lock_after=int(settings["lock_after"]),
        window=settings["window"],
        lockout=settings["lockout"],
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
