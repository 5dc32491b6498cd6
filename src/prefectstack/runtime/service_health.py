"""Which background loops of `prefect server services start` keep failing, read from its log.

The process stays alive and its probe passes while a perpetual service raises on every
loop, so the log is the only witness. Two kinds of failure line are recognised, as Prefect's
`standard` formatter prints them (`HH:MM:SS.mmm | LEVEL   | logger.name - message`, the
traceback on the lines after):

- docket, which runs Prefect's perpetual services, reports a failed task as
  `ERROR | docket.dependencies - ↩ [   3ms] schedule_deployments(){schedule_deployments}`
  (a `Perpetual` task, from its completion handler) or under `docket.worker` (any other task);
- Prefect's own `Service` loops log under `prefect.server.services.<name>` or
  `prefect.server.events.services.<name>`.

Other errors from `docket.worker` (its scheduler or heartbeat loops) count as the loop
`docket.worker`: when they fail, no service runs at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path

TAIL_BYTES = 256 * 1024
DEFAULT_WINDOW = timedelta(minutes=10)
MIN_FAILURES = 2  # one failure can be a blip (a dropped connection); two in a row is a pattern
ERROR_CHARS = 200

_RECORD = re.compile(
    r"^(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})\.(?P<ms>\d{3}) \| (?P<level>[A-Z]+) *\| "
    r"(?P<logger>\S+) - (?P<message>.*)$"
)
# docket's `format_duration` pads to a fixed width (`[     3ms]`, `[   120s ]`), and
# `Execution.call_repr()` is `name(args){key}`.
_DOCKET_FAILURE = re.compile(r"^↩ \[[^\]]*\] (?P<task>[^\s(]+)\(")
_SERVICE_LOGGER = re.compile(r"^prefect\.server\.(?:events\.)?services\.(?P<name>\w+)$")
_TRACEBACK_HEADER = re.compile(r"^(?:Exception Group )?Traceback \(most recent call last\):")
# The first unindented line after a traceback's frames names the exception:
# `sqlalchemy.exc.InvalidRequestError: message`.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?P<type>[A-Za-z_]\w*)(?P<rest>:.*)?$")
# An exception group draws its sub-tracebacks inside `  | ` and `  + ` borders.
_GROUP_FRAME = re.compile(r"^ *[|+] ")
# `LocalLauncher.start` writes this before every (re)start of a service: older lines are
# about a process that no longer runs.
RESTART_MARKER = "--- prefectstack: starting "
# A terminal-forcing environment (FORCE_COLOR) would make rich colour the log file.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FAILURE_LEVELS = ("ERROR", "CRITICAL")


@dataclass(frozen=True)
class ServicesHealth:
    failing: tuple[str, ...] = ()
    last_error: str = ""

    @property
    def degraded(self) -> bool:
        return bool(self.failing)

    def describe(self) -> str:
        """One line for a person: `failing: schedule_deployments (InvalidRequestError: …)`."""
        if not self.failing:
            return ""
        text = "failing: " + ", ".join(self.failing)
        return f"{text} ({self.last_error})" if self.last_error else text


@dataclass
class _Record:
    clock: time
    level: str
    logger: str
    message: str
    continuation: list[str] = field(default_factory=list)


def assess(log_text: str, now: datetime, window: timedelta = DEFAULT_WINDOW) -> ServicesHealth:
    """The loops with at least `MIN_FAILURES` failures in the last `window` of `log_text`.

    Log lines carry only a time of day (local, as is `now`, a naive datetime): the last line
    is taken to be no later than `now` and each line no later than the one after it, so a
    run across midnight lands on the right date. `read_tail` returns nothing for a log not
    written within the window, which keeps the last line's day unambiguous.
    """
    failures: dict[str, int] = {}
    newest_error: dict[str, str] = {}
    for when, record in _dated(_records(log_text), now):
        if when < now - window:
            break
        loop = _failing_loop(record)
        if loop is None:
            continue
        failures[loop] = failures.get(loop, 0) + 1
        newest_error.setdefault(loop, _error_of(record))  # newest first: keep the first seen
    failing = tuple(sorted(name for name, count in failures.items() if count >= MIN_FAILURES))
    if not failing:
        return ServicesHealth()
    # dicts keep insertion order, so the first failing loop in it failed most recently
    last = next(error for loop, error in newest_error.items() if loop in failing)
    return ServicesHealth(failing=failing, last_error=_truncate(last))


def read_tail(path: Path, now: datetime, window: timedelta = DEFAULT_WINDOW) -> str:
    """The last `TAIL_BYTES` of the log, or "" when it is missing or was last written before
    the window (so `assess` can anchor its last line to `now` without guessing the day)."""
    try:
        with open(path, "rb") as fh:
            if datetime.fromtimestamp(os.fstat(fh.fileno()).st_mtime) < now - window:
                return ""
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            chunk = fh.read()
    except FileNotFoundError:
        return ""
    if size > TAIL_BYTES:
        chunk = chunk[chunk.find(b"\n") + 1 :]  # the first line is cut: drop it
    return chunk.decode(errors="replace")


def _records(log_text: str) -> list[_Record]:
    """The log records after the last restart, with their continuation lines."""
    records: list[_Record] = []
    for raw in log_text.splitlines():
        line = _ANSI.sub("", raw)
        if line.startswith(RESTART_MARKER):
            records.clear()
            continue
        match = _RECORD.match(line)
        if match:
            clock = time(int(match["h"]), int(match["m"]), int(match["s"]), int(match["ms"]) * 1000)
            records.append(
                _Record(clock, match["level"], match["logger"], match["message"].rstrip())
            )
        elif records:
            records[-1].continuation.append(line)
    return records


def _dated(records: list[_Record], now: datetime) -> Iterator[tuple[datetime, _Record]]:
    """Newest first, each with a full date: a time of day later than the one after it (or
    than `now`, for the last) belongs to the day before."""
    later = now
    for record in reversed(records):
        when = datetime.combine(later.date(), record.clock)
        if when > later:
            when -= timedelta(days=1)
        yield when, record
        later = when


def _failing_loop(record: _Record) -> str | None:
    if record.level not in _FAILURE_LEVELS:
        return None
    if record.logger.startswith("docket."):
        task = _DOCKET_FAILURE.match(record.message)
        if task:
            return task["task"]
        return record.logger if record.logger == "docket.worker" else None
    service = _SERVICE_LOGGER.match(record.logger)
    return service["name"] if service else None


def _error_of(record: _Record) -> str:
    """The exception line of the record's last traceback, without the module path (for an
    exception group, that of its last sub-exception), or the message when it has none."""
    expecting = False
    found = ""
    for raw in record.continuation:
        line = _GROUP_FRAME.sub("", raw, count=1)
        if _TRACEBACK_HEADER.match(line):
            expecting = True
        elif expecting and line and not line[0].isspace():
            exception = _EXCEPTION_LINE.match(line)
            found = exception["type"] + (exception["rest"] or "") if exception else line
            expecting = False
    return found or record.message


def _truncate(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"

