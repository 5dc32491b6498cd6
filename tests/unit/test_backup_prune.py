"""The Kubernetes backup CronJob's pruning (jobs/backup_prune.py, standard library only)
keeps exactly what the local backups' retention keeps (runtime/backup_retention.py)."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prefectstack.jobs import backup_prune
from prefectstack.runtime import backup_retention
from prefectstack.stack.data_safety import BackupKeep


def test_prunes_what_the_local_retention_prunes() -> None:
    rng = random.Random(13)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for _ in range(200):
        backups = []
        for _ in range(rng.randint(0, 60)):
            when = start + timedelta(minutes=rng.randint(0, 60 * 24 * 500))
            backups.append((f"prefect-{when:%Y%m%dT%H%M%SZ}.dump", when))
        backups = list(dict(backups).items())
        keep = BackupKeep(daily=rng.randint(1, 10), weekly=rng.randint(0, 6),
                          monthly=rng.randint(0, 8))
        assert backup_prune.to_prune(backups, keep.daily, keep.weekly, keep.monthly) == (
            backup_retention.to_prune(backups, keep))


def test_main_deletes_only_its_own_dumps_and_old_partials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"prefect-202501{d:02d}T030000Z.dump" for d in range(1, 11)]
    for name in [*names, "notes.txt", "prefect-manual.dump", "prefect-x.dump.partial"]:
        (tmp_path / name).write_text("x")
    fresh = tmp_path / "prefect-20250111T030000Z.dump.partial"
    fresh.write_text("x")
    old = time.time() - 2 * backup_prune.PARTIAL_AGE_SECONDS
    os.utime(tmp_path / "prefect-x.dump.partial", (old, old))
    assert backup_prune.main([str(tmp_path), "--daily", "3", "--weekly", "0",
                              "--monthly", "0"]) == 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*names[-3:], "notes.txt", "prefect-manual.dump", fresh.name])
    assert "3 backups kept, newest prefect-20250110T030000Z.dump" in capsys.readouterr().out
