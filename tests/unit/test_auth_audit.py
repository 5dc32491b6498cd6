"""The audit log: JSON lines, size-based rotation, filtered reading."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
