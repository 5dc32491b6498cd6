"""The `backup` service's timing: when the first backup after a start is due, and that the
loop backs up on each slot, survives a failed backup and stops when told."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.runtime.backup_schedule import first_due, main, next_slot, run_forever

DAILY = "0 3 * * *"
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def test_next_slot_is_strictly_after() -> None:
    assert next_slot(DAILY, NOW) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
    assert next_slot(DAILY, datetime(2026, 11, 30, 3, 0, tzinfo=UTC)) == datetime(
        2026, 12, 1, 3, 0, tzinfo=UTC)


def test_a_new_stack_waits_for_its_first_slot() -> None:
    assert first_due(DAILY, None, NOW) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def test_a_missed_slot_is_caught_up_at_start() -> None:
    last = {"ok": True, "at": (NOW - timedelta(days=2)).isoformat()}
    assert first_due(DAILY, last, NOW) == NOW


def test_a_recent_backup_means_the_next_slot() -> None:
    last = {"ok": True, "at": datetime(2026, 11, 29, 3, 0, 5, tzinfo=UTC).isoformat()}
    assert first_due(DAILY, last, NOW) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize("last", [{"ok": False, "at": "2026-01-01T00:00:00+00:00"},
                                  {"ok": True, "at": "not a time"}, {"ok": True}],
                         ids=["failed", "bad-time", "no-time"])
def test_a_failed_or_unreadable_last_backup_waits_for_the_next_slot(last: dict[str, object],
                                                                   ) -> None:
    # a failure is retried on the next slot, never in a tight loop after every start
    assert first_due(DAILY, last, NOW) == datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


class FakeTime:
    """A clock that `stop.wait` advances: the loop never really sleeps."""

    def __init__(self) -> None:
        self.now = NOW
        self.stop = threading.Event()
        self.waits: list[float] = []
        real_wait = self.stop.wait

        def wait(timeout: float | None = None) -> bool:
            assert timeout is not None and timeout > 0
            self.waits.append(timeout)
            self.now += timedelta(seconds=timeout)
            return real_wait(0)

        self.stop.wait = wait  # type: ignore[method-assign]

    def clock(self) -> datetime:
        return self.now


def test_backs_up_on_each_slot_and_goes_on_after_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    made: list[datetime] = []

    def backup() -> str:
        made.append(time.now)
        if len(made) == 2:
            raise StackError("pg_dump failed: disk full")
        if len(made) == 4:
            time.stop.set()
        return f"backup {len(made)}"

    with caplog.at_level(logging.INFO, logger="prefectstack.backup"):
        run_forever("0 * * * *", backup, None, time.stop, time.clock)
    assert made == [NOW + timedelta(hours=h) for h in (1, 2, 3, 4)]
    assert max(time.waits) <= 60  # the clock is read again at least once a minute
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["backup failed: pg_dump failed: disk full"]


def test_a_slow_backup_skips_the_slots_it_overran(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    made: list[datetime] = []

    def backup() -> str:
        made.append(time.now)
        time.now += timedelta(minutes=150)  # the dump took 2.5 hours
        if len(made) == 2:
            time.stop.set()
        return "ok"

    run_forever("0 * * * *", backup, None, time.stop, time.clock)
    assert made == [NOW + timedelta(hours=1), NOW + timedelta(hours=4)]


def test_stops_while_waiting() -> None:
    stop = threading.Event()
    stop.set()
    run_forever(DAILY, lambda: pytest.fail("no backup once stopped"), None, stop)


def test_an_unloadable_stack_file_is_a_clear_error_not_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "stack.yaml"
    bad.write_text("version: 1\nname: [not, a, name]\n")
    with caplog.at_level(logging.INFO, logger="prefectstack.backup"):
        assert main([str(bad), str(tmp_path)]) == 2
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage().startswith(f"cannot load the stack: {bad}: invalid stack file")
