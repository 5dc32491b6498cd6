"""The audit log: one JSON line per change and per refusal, rotated by size, pruned by age.

A line never holds a secret: no passwords, keys, tokens, cookies or query strings, only the
public prefix of a key.

An attacker must not be able to erase the trail by filling it:
- the fields a caller controls are capped (`bounded`);
- anonymous refusals (no valid credentials: anyone on the network can cause them) are
  logged one by one only within a budget, a token bucket of `ANONYMOUS_BURST` lines that
  refills at `ANONYMOUS_PER_MINUTE`; beyond it they are counted, and the count goes into a
  summary line (how many, which statuses, the top addresses) at most once a minute, or
  before the next line that isn't one. A flood then costs the log about seven short lines a
  minute, and the changes and the refusals of people with credentials are always written.
- lines older than `retention_days` are pruned (hourly, and when the log is opened).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefectstack.errors import StackError

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
MAX_PATH_CHARS = 512
MAX_REASON_CHARS = 600
RETENTION_DAYS = 90  # the auth service's default (PREFECTSTACK_AUDIT_RETENTION_DAYS)
PRUNE_INTERVAL = 3600.0
ANONYMOUS_BURST = 50
ANONYMOUS_PER_MINUTE = 6
SUMMARY_INTERVAL = 60.0
MAX_COUNTED_CLIENTS = 1000


@dataclass(frozen=True)
class Record:
    time: str  # ISO 8601, UTC
    identity: str | None  # username, `key:<prefix>`, or None when anonymous
    role: str | None
    method: str
    path: str
    status: int  # the auth decision: 200 passed on, 401/403/429 refused
    client: str | None
    key_prefix: str | None = None
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.time)


def retention_days_from(environ: Mapping[str, str]) -> float:
    """The auth service's audit retention: PREFECTSTACK_AUDIT_RETENTION_DAYS, which the
    topology sets from the stack file's `retention.audit_days`; RETENTION_DAYS without it."""
    return float(environ.get("PREFECTSTACK_AUDIT_RETENTION_DAYS") or RETENTION_DAYS)


def now_iso(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds")


def is_anonymous_refusal(record: Record) -> bool:
    """A refusal of someone without valid credentials: what a flood is made of."""
    return record.identity is None and record.status >= 300


class _Budget:
    """A token bucket for anonymous refusals, and the count of those it had to drop."""

    def __init__(self, burst: int, per_minute: float, now: float) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.tokens = float(burst)
        self.updated = now
        self.dropped = 0
        self.since = now  # when the current count began
        self.statuses: Counter[int] = Counter()
        self.clients: Counter[str] = Counter()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def drop(self, record: Record, now: float) -> None:
        if not self.dropped:
            self.since = now
        self.dropped += 1
        self.statuses[record.status] += 1
        client = record.client or "unknown"
        if client in self.clients or len(self.clients) < MAX_COUNTED_CLIENTS:
            self.clients[client] += 1

    def summary(self, clock: Callable[[], float]) -> Record:
        statuses = ", ".join(f"{s} x{n}" for s, n in sorted(self.statuses.items()))
        top = ", ".join(f"{c} x{n}" for c, n in self.clients.most_common(5))
        distinct = f"{len(self.clients)}{'+' if len(self.clients) >= MAX_COUNTED_CLIENTS else ''}"
        since = datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")
        record = Record(
            time=now_iso(clock), identity=None, role=None, method="-",
            path="(anonymous refusals, counted)",
            status=self.statuses.most_common(1)[0][0], client=None,
            reason=(f"{self.dropped} more anonymous refusals since {since}, not logged one by "
                    f"one (rate limit): {statuses}; {distinct} addresses, most: {top}"),
        )
        self.dropped = 0
        self.statuses.clear()
        self.clients.clear()
        return record


class AuditLog:
    """Appends records; `audit.log` rolls over to `audit.log.1` .. `audit.log.<backups>`.

    `retention_days`: lines older than that are pruned (None: kept until rotated away).
    `anonymous_burst`/`anonymous_per_minute`: the budget for logging anonymous refusals one
    by one (see the module's docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        retention_days: float | None = None,
        anonymous_burst: int = ANONYMOUS_BURST,
        anonymous_per_minute: float = ANONYMOUS_PER_MINUTE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days is not None and retention_days <= 0:
            raise ValueError(f"audit retention must be positive, got {retention_days} days")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.retention_days = retention_days
        self._clock = clock
        self._lock = threading.Lock()
        self._budget = _Budget(anonymous_burst, anonymous_per_minute, clock())
        self._last_summary = clock()
        self._pruned_at: float | None = None
        self._prepare()
        if retention_days is not None:
            with self._lock:
                self._prune(clock())

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Record) -> None:
        with self._lock:
            now = self._clock()
            if self.retention_days is not None and (
                    self._pruned_at is None or now - self._pruned_at >= PRUNE_INTERVAL):
                self._prune(now)
            budget = self._budget
            anonymous = is_anonymous_refusal(record)
            allowed = not anonymous or budget.take(now)
            if not allowed:
                budget.drop(record, now)
            if not anonymous or now - self._last_summary >= SUMMARY_INTERVAL:
                self._flush_summary(now)
            if allowed:
                self._append(record)

    def flush(self) -> None:
        """Write the count of anonymous refusals not yet summed up (on shutdown)."""
        with self._lock:
            self._flush_summary(self._clock())

    def _flush_summary(self, now: float) -> None:
        if self._budget.dropped:
            self._append(self._budget.summary(self._clock))
            self._last_summary = now

    def _append(self, record: Record) -> None:
        data = (bounded(record).to_json() + "\n").encode()
        if self._size() + len(data) > self.max_bytes and self._size() > 0:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def prune(self) -> None:
        """Drop the lines older than the retention period now."""
        with self._lock:
            self._prune(self._clock())

    def _prune(self, now: float) -> None:
        self._pruned_at = now
        if self.retention_days is None:
            return
        cutoff = datetime.fromtimestamp(now, UTC) - timedelta(days=self.retention_days)
        for file in files(self.path):  # oldest first
            if _prune_file(file, cutoff):
                break

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = _numbered(self.path, index)
            if older.exists():
                os.replace(older, _numbered(self.path, index + 1))
        if self.backups > 0:
            os.replace(self.path, _numbered(self.path, 1))
        else:
            self.path.unlink()


AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at REAL NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS auth_audit_by_time ON auth_audit(at);
"""
SQLITE_AUDIT_SCHEMA = AUDIT_SCHEMA.replace(
    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT")


class DatabaseAuditLog(AuditLog):
    """The same records, budget and retention, in the auth database's `auth_audit` table:
    the pods of a replicated auth service write one log (a file per pod would be lost with
    the pod, and split). Read it with `read_database`."""

    def __init__(self, database: Any, **options: Any) -> None:
        self.db = database
        schema = SQLITE_AUDIT_SCHEMA if database.kind == "sqlite" else AUDIT_SCHEMA
        database.script(schema)
        options.pop("max_bytes", None)
        options.pop("backups", None)
        super().__init__(Path("auth_audit"), **options)

    def _prepare(self) -> None:
        pass  # no file

    def _append(self, record: Record) -> None:
        from prefectstack.auth.database import DatabaseUnavailable

        try:
            self.db.execute("INSERT INTO auth_audit (at, record) VALUES (?, ?)",
                            (record.moment.timestamp(), bounded(record).to_json()))
        except DatabaseUnavailable as exc:
            # Only a refusal can happen while the database is away (every allowed request
            # needs it to check its credentials): say it was lost rather than fail the answer.
            print(f"warning: audit record not written, the database is unavailable ({exc}): "
                  f"{bounded(record).to_json()}", file=sys.stderr, flush=True)

    def _prune(self, now: float) -> None:
        self._pruned_at = now
        if self.retention_days is not None:
            self.db.execute("DELETE FROM auth_audit WHERE at < ?",
                            (now - self.retention_days * 86400,))


def read_database(database: Any, *, user: str | None = None,
                  since: datetime | None = None) -> Iterator[Record]:
    """`read` for a DatabaseAuditLog's table, oldest first."""
    if since is None:
        rows = database.query("SELECT record FROM auth_audit ORDER BY at, id")
    else:
        rows = database.query("SELECT record FROM auth_audit WHERE at >= ? ORDER BY at, id",
                              (since.timestamp(),))
    for row in rows:
        record = _parse(row["record"])
        if record is not None and (user is None or user in (record.identity,
                                                            record.key_prefix)):
            yield record


def _prune_file(file: Path, cutoff: datetime) -> bool:
    """Drop the lines of `file` older than `cutoff`; True when it had newer lines, so the
    files after it (newer still) need no look."""
    try:
        with file.open() as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return False
    kept = [line for line in lines if _newer(line, cutoff)]
    if not kept:
        file.unlink(missing_ok=True)
        return False
    if len(kept) < len(lines):
        fd, name = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")  # 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.writelines(kept)
            os.replace(name, file)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
    return True


def _newer(line: str, cutoff: datetime) -> bool:
    record = _parse(line)
    if record is None:
        return False  # torn by a crash mid-write: nothing to keep
    try:
        return record.moment >= cutoff
    except (ValueError, TypeError):  # a time without a zone, or none at all
        return True


def bounded(record: Record) -> Record:
    """Cut what a caller controls (the path, and reasons that quote it): otherwise a few
    thousand anonymous requests with 16 KB paths rotate the whole log away."""
    return replace(record, path=_cut(record.path, MAX_PATH_CHARS),
                   reason=_cut(record.reason, MAX_REASON_CHARS))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """A cell for the terminal: control characters (newlines that would forge a record,
    escape sequences that would drive the terminal) shown as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def files(path: Path) -> list[Path]:
    """The log's files, oldest first."""
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
        reverse=True,
    )
    return [*rotated, *([path] if path.exists() else [])]


def read(path: Path, *, user: str | None = None, since: datetime | None = None) -> Iterator[Record]:
    """Records oldest first; `user` matches a username, a key prefix or `key:<prefix>`."""
    for file in files(path):
        with file.open() as fh:
            for line in fh:
                record = _parse(line)
                if record is None:
                    continue
                if user is not None and user not in (record.identity, record.key_prefix):
                    continue
                if since is not None and record.moment < since:
                    continue
                yield record


_FIELDS = frozenset(f.name for f in fields(Record))


def _parse(line: str) -> Record | None:
    """A record, or None for a blank line or one torn by a crash mid-write."""
    try:
        data = json.loads(line)
        return Record(**{k: v for k, v in data.items() if k in _FIELDS})
    except (ValueError, TypeError, AttributeError):
        return None


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `7d` (before now) or an ISO 8601 time (UTC when no zone is given)."""
    match = _RELATIVE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StackError(
            f"cannot read --since {text!r}",
            hint="use a duration like 30m, 2h, 7d or a time like 2025-01-31T12:00",
            exit_code=2,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
