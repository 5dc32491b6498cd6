"""The `backup` service: `prefectstack backup` on the stack's `backup.schedule`.

Each backup is the CLI's (`runtime.backup.create`): one consistent file, 0600, written
atomically, then the destination pruned to `backup.keep`. Its outcome goes to the status file
that `status`, `backup list` and `doctor` read, so a failed or overdue backup is visible
there; a failure is also logged at ERROR here, and the next slot is tried as usual.

A backup missed while the stack was down is taken right after the start (the last one is
older than the schedule allows). A stack that never had one waits for its first slot: a
brand-new stack has nothing worth a dump yet, and every `up` would pay for one.

Run by the supervisor: `python -m prefectstack.runtime.backup_schedule STACK_FILE BASE_DIR`
(an empty STACK_FILE: the built-in default stack, whose state lives under BASE_DIR).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cronsim import CronSim

from prefectstack.errors import StackError

log = logging.getLogger("prefectstack.backup")

MAX_SLEEP_SECONDS = 60.0  # re-read the clock at least this often (suspend, clock changes)


def next_slot(schedule: str, after: datetime) -> datetime:
    """The first time of `schedule` (5-field cron, UTC) strictly after `after`."""
    return next(CronSim(schedule, after.astimezone(UTC).replace(microsecond=0)))


def first_due(schedule: str, last: dict[str, Any] | None, now: datetime) -> datetime:
    """When the first backup after a start is due: now if the last successful one missed a
    slot (the stack was down), else the schedule's next slot."""
    if last and last.get("ok"):
        try:
            made = datetime.fromisoformat(str(last["at"]))
        except (KeyError, ValueError):
            return next_slot(schedule, now)
        if next_slot(schedule, made) <= now:
            return now
    return next_slot(schedule, now)


def run_forever(
    schedule: str,
    backup: Callable[[], str],
    last: dict[str, Any] | None,
    stop: threading.Event,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Back up at each due time until `stop` is set. `backup` returns a line saying what it
    wrote; a StackError or OSError from it is logged and the next slot is tried."""
    due = first_due(schedule, last, clock())
    log.info("next backup at %s", due.isoformat())
    while not stop.is_set():
        remaining = (due - clock()).total_seconds()
        if remaining > 0:
            stop.wait(min(remaining, MAX_SLEEP_SECONDS))
            continue
        try:
            log.info("%s", backup())
        except (StackError, OSError) as exc:
            log.error("backup failed: %s", getattr(exc, "message", None) or exc)
        except Exception:  # a bug of ours: reported with its traceback, the schedule goes on
            log.exception("backup failed")
        due = next_slot(schedule, max(due, clock()))
        log.info("next backup at %s", due.isoformat())


def main(argv: list[str]) -> int:
    from prefectstack.runtime import backup as backups
    from prefectstack.stack.loader import default_stack, load_stack

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - "
                               "%(message)s", datefmt="%H:%M:%S")
    source, base = [*argv, "", ""][:2]
    try:
        loaded = load_stack(source) if source else default_stack(Path(base or "."))
    except StackError as exc:  # e.g. the file was edited into an invalid one since `up`
        log.error("cannot load the stack: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def backup() -> str:
        result = backups.create(loaded)
        gone = result.pruned + result.pruned_remote
        pruned = f"; pruned {', '.join(gone)}" if gone else ""
        copied = f"; copied to {result.remote}" if result.remote else ""
        return (f"backup written: {result.path} ({result.size} bytes, "
                f"{result.seconds:.1f}s){copied}{pruned}")

    run_forever(loaded.stack.backup.schedule, backup, backups.last_status(loaded.state_dir),
                stop)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
