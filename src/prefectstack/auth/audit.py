"""The audit log: one JSON line per change and per refusal, rotated by size.

A line never holds a secret: no passwords, keys, tokens, cookies or query strings, only the
public prefix of a key.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefectstack.errors import StackError

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
MAX_PATH_CHARS = 512
MAX_REASON_CHARS = 600


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


def now_iso(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends records; `audit.log` rolls over to `audit.log.1` .. `audit.log.<backups>`."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Record) -> None:
        data = (bounded(record).to_json() + "\n").encode()
        with self._lock:
            if self._size() + len(data) > self.max_bytes and self._size() > 0:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

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
