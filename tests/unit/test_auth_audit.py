"""The audit log: JSON lines, size-based rotation, filtered reading."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from prefectstack.auth.audit import AuditLog, Record, files, parse_since, read
from prefectstack.errors import StackError


def record(n: int, identity: str | None = "alice", minute: int = 0, **kw: object) -> Record:
    fields: dict[str, object] = {
        "time": datetime(2025, 1, 1, 12, minute, tzinfo=UTC).isoformat(timespec="milliseconds"),
        "identity": identity,
        "role": "operator" if identity else None,
        "method": "POST",
        "path": f"/api/deployments/{n}/create_flow_run",
        "status": 200,
        "client": "192.0.2.7",
    }
    fields.update(kw)
    return Record(**fields)  # type: ignore[arg-type]


def test_one_json_line_per_record(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.write(record(1))
    log.write(record(2, identity="key:pfs_ab12cd34", key_prefix="pfs_ab12cd34", status=403))
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 2
    second = json.loads(lines[1])
    assert second["identity"] == "key:pfs_ab12cd34"
    assert second["status"] == 403
    assert set(second) == {
        "time", "identity", "role", "method", "path", "status", "client", "key_prefix", "reason",
    }  # fmt: skip
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600


def test_rotation_keeps_a_fixed_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    size = len(record(0).to_json()) + 1
    log = AuditLog(path, max_bytes=size * 3, backups=2)
    for n in range(10):
        log.write(record(n))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    for file in files(path):
        assert file.stat().st_size <= size * 3
    # oldest first across files; the first file of three lines rotated away
    paths = [r.path for r in read(path)]
    assert paths == [f"/api/deployments/{n}/create_flow_run" for n in range(3, 10)]


def test_filters_by_user_and_since(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=400, backups=5)
    log.write(record(1, "alice", minute=1))
    log.write(record(2, "bob", minute=2))
    log.write(record(3, "key:pfs_ab12cd34", minute=3, key_prefix="pfs_ab12cd34"))
    log.write(record(4, None, minute=4, status=401))
    log.write(record(5, "alice", minute=5))
    assert len(files(path)) > 1
    assert [r.path.split("/")[3] for r in read(path, user="alice")] == ["1", "5"]
    assert [r.path.split("/")[3] for r in read(path, user="pfs_ab12cd34")] == ["3"]
    assert [r.path.split("/")[3] for r in read(path, user="key:pfs_ab12cd34")] == ["3"]
    since = datetime(2025, 1, 1, 12, 3, tzinfo=UTC)
    assert [r.path.split("/")[3] for r in read(path, since=since)] == ["3", "4", "5"]
    assert [r.status for r in read(path, user="alice", since=since)] == [200]


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).write(record(1))
    with path.open("a") as fh:
        fh.write('{"time": "2025-01-01T12:0\n\n')
    AuditLog(path).write(record(2))
    assert len(list(read(path))) == 2


def test_reading_a_missing_log_gives_nothing(tmp_path: Path) -> None:
    assert list(read(tmp_path / "audit.log")) == []


def test_parse_since() -> None:
    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2025-01-01T12:00") == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert parse_since("2025-01-01T12:00+02:00").utcoffset() == timedelta(hours=2)
    with pytest.raises(StackError, match="--since"):
        parse_since("yesterday")


def test_caller_controlled_fields_are_bounded(tmp_path: Path) -> None:
    from prefectstack.auth.audit import MAX_PATH_CHARS

    log = AuditLog(tmp_path / "audit.log")
    huge = "/api/" + "a" * 16_000
    log.write(Record(time="2026-01-01T00:00:00.000+00:00", identity=None, role=None,
                     method="GET", path=huge, status=401, client="203.0.113.9",
                     reason=f"no rule for GET {huge}"))
    line = (tmp_path / "audit.log").read_text()
    assert len(line) < 2 * MAX_PATH_CHARS + 400
    [record] = read(tmp_path / "audit.log")
    assert record.path.startswith("/api/aaa")
    assert record.path.endswith(f"(+{len(huge) - MAX_PATH_CHARS} chars)")


def test_terminal_view_cannot_be_forged_or_driven() -> None:
    from prefectstack.auth.audit import printable

    assert printable("/api/x\n2026-01-01 admin 200 DELETE") == \
        "/api/x\\x0a2026-01-01 admin 200 DELETE"
    assert printable("/api/\x1b[2J") == "/api/\\x1b[2J"
    assert printable("/api/flows/ä") == "/api/flows/ä"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now.timestamp()

    def __call__(self) -> float:
        return self.now


def at(moment: datetime, n: int, **kw: Any) -> Record:
    return replace(record(n, **kw), time=moment.isoformat(timespec="milliseconds"))


def test_lines_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    start = datetime(2025, 1, 1, tzinfo=UTC)
    size = len(at(start, 1000).to_json()) + 1
    log = AuditLog(path, max_bytes=size * 3, backups=5)
    for day in range(0, 120, 10):  # twelve lines, three per file, one every ten days
        log.write(at(start + timedelta(days=day), 1000 + day))
    assert len(list(read(path))) == 12
    assert len(files(path)) == 4
    clock = Clock(start + timedelta(days=125))
    AuditLog(path, max_bytes=size * 3, backups=5, retention_days=90, clock=clock).prune()
    kept = [r.moment for r in read(path)]
    assert kept == [start + timedelta(days=d) for d in range(40, 120, 10)]
    # a file of old lines is gone, a file with old and new lines is cut
    assert len(files(path)) == 3
    for file in files(path):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.log", "audit.log.1", "audit.log.2"]  # no temporary file left


def test_pruning_runs_when_opened_and_hourly_on_write(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    start = datetime(2025, 1, 1, tzinfo=UTC)
    AuditLog(path).write(at(start, 1))
    day3 = start + timedelta(days=3)
    clock = Clock(day3)
    log = AuditLog(path, retention_days=1, clock=clock)  # opening prunes
    assert list(read(path)) == []

    def write_at(moment: datetime, n: int) -> None:
        clock.now = moment.timestamp()
        log.write(at(moment, n))

    write_at(day3, 2)
    write_at(day3 + timedelta(days=1, minutes=-10), 3)  # prunes (an hour since): nothing old
    write_at(day3 + timedelta(days=1, minutes=10), 4)  # 20 min since: no prune, 2 stays
    assert len(list(read(path))) == 3
    write_at(day3 + timedelta(days=1, hours=1), 5)
    assert [r.path for r in read(path)] == [f"/api/deployments/{n}/create_flow_run"
                                            for n in (3, 4, 5)]


def test_without_a_retention_nothing_is_pruned_by_age(tmp_path: Path) -> None:
    # the CLI's own writes (`cli:<user>`) must not prune with a retention it doesn't know
    path = tmp_path / "audit.log"
    AuditLog(path).write(at(datetime(2000, 1, 1, tzinfo=UTC), 1))
    AuditLog(path).write(record(2))
    assert len(list(read(path))) == 2
    with pytest.raises(ValueError):
        AuditLog(path, retention_days=0)


def anonymous(n: int, client: str = "198.51.100.9") -> Record:
    return record(n, identity=None, status=401, client=client, reason="credentials required",
                  path="/api/" + "x" * 16_000)


def test_a_flood_of_anonymous_refusals_cannot_rotate_legitimate_lines_away(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    clock = Clock(datetime(2025, 1, 1, tzinfo=UTC))
    # a small log: 64 KB, 2 backups; the flood would be ~4 MB of capped lines
    log = AuditLog(path, max_bytes=64 * 1024, backups=2, clock=clock)
    log.write(record(1, minute=0))  # the legitimate line
    for n in range(5000):  # ~70 s of flood
        clock.now += 0.014
        log.write(anonymous(n, client=f"198.51.100.{n % 200}"))
    log.write(record(2, minute=2))  # and a change after it
    lines = list(read(path))
    assert [r.identity for r in lines].count("alice") == 2  # both legitimate lines survive
    logged = [r for r in lines if r.path.startswith("/api/x")]
    counted = [r for r in lines if r.path == "(anonymous refusals, counted)"]
    assert 50 <= len(logged) <= 60  # the burst, then about 6 a minute
    assert 1 <= len(counted) <= 3  # a summary at most once a minute, and before the change
    total = len(logged) + sum(int(r.reason.split()[0]) for r in counted)
    assert total == 5000
    assert "401 x" in counted[-1].reason and "200 addresses" in counted[-1].reason
    assert lines[-1].identity == "alice" and lines[-2] == counted[-1]


def test_refusals_of_known_callers_are_always_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, anonymous_burst=1, anonymous_per_minute=0)
    for n in range(20):
        log.write(record(n, identity="key:pfs_ab12cd34", status=403))
    log.write(anonymous(1))
    log.write(anonymous(2))
    log.flush()
    lines = list(read(path))
    assert len([r for r in lines if r.status == 403]) == 20
    assert "1 more anonymous refusals" in lines[-1].reason


def test_pods_write_one_audit_log_in_the_database_with_its_retention(tmp_path: Path) -> None:
    """A replicated auth service's audit log: the pods' records in one table, read back in
    order and filtered as the file is, pruned by the same retention."""
    from prefectstack.auth.audit import DatabaseAuditLog, read_database
    from prefectstack.auth.database import SqliteDatabase

    now = datetime(2025, 1, 1, 12, 30, tzinfo=UTC).timestamp()
    pods = [DatabaseAuditLog(SqliteDatabase(tmp_path / "auth.db"), retention_days=1,
                             clock=lambda: now) for _ in range(2)]
    old = replace(record(0), time=(datetime(2024, 12, 30, tzinfo=UTC)).isoformat())
    pods[0].write(old)
    pods[0].write(record(1, minute=1))
    pods[1].write(record(2, identity="bob", minute=2))
    pods[0].write(record(3, minute=3))
    db = SqliteDatabase(tmp_path / "auth.db")
    assert [r.path for r in read_database(db)] == [record(n).path for n in (0, 1, 2, 3)]
    assert [r.identity for r in read_database(db, user="bob")] == ["bob"]
    since = datetime(2025, 1, 1, 12, 2, tzinfo=UTC)
    assert [r.path for r in read_database(db, since=since)] == [record(n).path for n in (2, 3)]
    pods[1].prune()
    assert [r.path for r in read_database(db)] == [record(n).path for n in (1, 2, 3)]
