"""The pure parts of backups: the manifest and its checks, names, retention of daily, weekly
and monthly backups, the stack-file sections and the Prefect settings they become."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prefectstack.errors import StackError
from prefectstack.runtime import backup_manifest as mf
from prefectstack.runtime.backup_retention import to_keep, to_prune
from prefectstack.stack.data_safety import BackupKeep
from prefectstack.stack.loader import parse_stack
from prefectstack.topology import build
from prefectstack.topology.settings import retention_env


def manifest(**changes: object) -> mf.Manifest:
    base = mf.Manifest(stack="prod", created_at="2026-11-29T12:00:00+00:00",
                       prefectstack_version="0.1.0", prefect_version="3.8.8",
                       postgres_version="18.1", alembic_version="abc123",
                       row_counts={"flow_run": 3}, auth_counts={"users": 1})
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_manifest_round_trips() -> None:
    m = manifest()
    again = mf.Manifest.from_json(m.to_json(), "x.tar")
    assert again == m and again.postgres_major == 18


@pytest.mark.parametrize("text,fragment", [
    ("not json", "manifest is unreadable"),
    ("[]", "manifest is unreadable"),
    (json.dumps({"format": 99}), "backup format 99"),
    (json.dumps({"format": 1, "stack": "x"}), "manifest is unreadable"),
])
def test_a_bad_manifest_is_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(StackError, match=fragment):
        mf.Manifest.from_json(text, "x.tar")


def test_checksums_are_verified(tmp_path: Path) -> None:
    for name in (mf.DUMP, mf.AUTH_DB, mf.SECRETS):
        (tmp_path / name).write_text(name)
    m = manifest(files=mf.describe_files(tmp_path))
    mf.verify_files(m, tmp_path, "x.tar")
    (tmp_path / mf.SECRETS).write_text("tampered")
    with pytest.raises(StackError, match=r"checksum mismatch for secrets\.json"):
        mf.verify_files(m, tmp_path, "x.tar")
    (tmp_path / mf.SECRETS).unlink()
    with pytest.raises(StackError, match=r"missing: secrets\.json"):
        mf.verify_files(m, tmp_path, "x.tar")
    (tmp_path / mf.SECRETS).write_text(mf.SECRETS)
    (tmp_path / "extra").write_text("?")
    with pytest.raises(StackError, match="not listed: extra"):
        mf.verify_files(m, tmp_path, "x.tar")


def check(m: mf.Manifest, *, pg: int = 18, stack: str = "prod") -> None:
    mf.check_restorable(m, known_revisions={"abc123", "def456"}, head_revision="def456",
                        postgres_major=pg, stack=stack, source="x.tar")


def test_versions_are_checked() -> None:
    check(manifest())
    check(manifest(postgres_version="16.4"))  # pg_restore reads older dumps
    with pytest.raises(StackError, match="newer than the installed Prefect knows"):
        check(manifest(alembic_version="fff999", prefect_version="3.9.0"))
    with pytest.raises(StackError, match="newer than this stack's PostgreSQL 17"):
        check(manifest(), pg=17)
    with pytest.raises(StackError, match="not `other`"):
        check(manifest(), stack="other")


def test_names_and_their_times() -> None:
    when = datetime(2026, 11, 29, 3, 0, 5, tzinfo=UTC)
    name = mf.backup_name("prod", when, set())
    assert name == "prod-backup-20261129T030005Z.tar"
    assert mf.backup_name("prod", when, {name}) == "prod-backup-20261129T030005Z-2.tar"
    assert mf.made_at(name) == when
    assert mf.made_at("prod-backup-20261129T030005Z-2.tar") == when
    for other in ("notes.tar", "prod-backup-latest.tar", "prod-backup-20261129T030005Z.tar.gz"):
        assert mf.made_at(other) is None


def daily(days: int, start: datetime) -> list[tuple[str, datetime]]:
    return [(f"b{i}", start + timedelta(days=i)) for i in range(days)]


def test_retention_keeps_daily_weekly_and_monthly() -> None:
    start = datetime(2026, 1, 1, 3, tzinfo=UTC)  # a Thursday
    backups = daily(365, start)
    kept = to_keep(backups, BackupKeep(daily=7, weekly=4, monthly=6))
    newest = {name for name, _ in backups[-7:]}
    assert newest <= kept
    dates = sorted(when for name, when in backups if name in kept)
    # 7 days, then the newest of 4 ISO weeks and 6 months, some of them the same backup.
    assert len(kept) <= 7 + 4 + 6 and len(kept) >= 6 + 7
    assert dates[0].month == 7  # the oldest kept is July's last (the 6th month back)
    pruned = to_prune(backups, BackupKeep(daily=7, weekly=4, monthly=6))
    assert len(pruned) + len(kept) == 365 and not set(pruned) & kept


def test_several_backups_a_day_keep_the_newest_of_each() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    backups = [(f"b{i}", start + timedelta(hours=6 * i)) for i in range(12)]  # 3 days
    kept = to_keep(backups, BackupKeep(daily=2, weekly=0, monthly=0))
    assert kept == {"b11", "b7"}
    assert to_prune(backups, BackupKeep(daily=2, weekly=0, monthly=0))[0] == "b0"


def test_nothing_is_pruned_while_under_the_limits() -> None:
    backups = daily(3, datetime(2026, 3, 1, tzinfo=UTC))
    assert to_prune(backups, BackupKeep()) == []


def stack_text(extra: str = "") -> str:
    return "version: 1\n" + extra


def test_defaults_of_the_sections() -> None:
    stack = parse_stack(stack_text(), {})
    assert (stack.retention.flow_runs_days, stack.retention.events_days,
            stack.retention.audit_days) == (30, 7, 90)
    assert stack.backup.keep == BackupKeep(daily=7, weekly=4, monthly=6)
    assert stack.backup.schedule == "0 3 * * *"


@pytest.mark.parametrize("extra,fragment", [
    ("backup:\n  schedule: every day\n", "not a cron expression of 5 fields"),
    ("backup:\n  schedule: '61 * * * *'\n", "not a valid cron expression"),
    ("backup:\n  keep: {daily: 0, weekly: 0, monthly: 0}\n", "keep at least one backup"),
    ("backup:\n  keep: {daily: -1}\n", "greater than or equal to 0"),
    ("retention:\n  events_days: 0\n", "greater than or equal to 1"),
    ("retention:\n  flow_run_days: 3\n", "flow_runs_days"),
])
def test_invalid_sections(extra: str, fragment: str) -> None:
    with pytest.raises(StackError, match=fragment) as info:
        parse_stack(stack_text(extra), {})
    assert info.value.exit_code == 2


def test_retention_becomes_prefects_settings_and_the_auth_env() -> None:
    stack = parse_stack(stack_text("retention:\n  flow_runs_days: 10\n  audit_days: 30\n"), {})
    env = retention_env(stack)
    assert env == {"PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "P7D",
                   "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
                   "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "864000",
                   "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": "3600"}
    services = {s.name: s for s in build(stack)}
    assert services["services"].env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == \
        "864000"
    assert services["auth"].env["PREFECTSTACK_AUDIT_RETENTION_DAYS"] == "30"
    forever = parse_stack(stack_text("retention:\n  flow_runs_days: null\n"), {})
    assert retention_env(forever)["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events"


def test_prefect_reads_the_retention_settings_as_meant() -> None:
    """Prefect's own settings model parses them (a bare number of seconds is refused for
    the events' period, so the names and the formats are checked here, not assumed)."""
    stack = parse_stack(stack_text("retention:\n  flow_runs_days: 10\n  events_days: 3\n"), {})
    code = ("from prefect.settings import get_current_settings as g; s = g().server; "
            "print(s.events.retention_period.days, s.services.db_vacuum.retention_period.days,"
            " sorted(s.services.db_vacuum.enabled_vacuum_types))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", code], env=env | retention_env(stack),
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.split("\n")[-2] == "3 10 ['events', 'flow_runs', 'orphans']"


def test_a_backup_older_than_its_schedule_allows_is_overdue() -> None:
    from prefectstack.runtime.backup import overdue

    last = {"ok": True, "at": "2026-11-29T03:00:10+00:00", "schedule": "0 3 * * *"}
    assert not overdue(last, datetime(2026, 11, 30, 3, 30, tzinfo=UTC))  # within the grace
    assert overdue(last, datetime(2026, 11, 30, 4, 30, tzinfo=UTC))  # the 30th's was missed
    assert not overdue({"ok": True, "at": "garbage"}, datetime(2030, 1, 1, tzinfo=UTC))
