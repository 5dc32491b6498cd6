"""The Kubernetes backup CronJob's pruning (jobs/backup_prune.py, standard library only; the
local backups apply the same rule through runtime/backup_retention.py, whose expectations
are in test_backup_pure.py) touches only its own dumps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from prefectstack.jobs import backup_prune


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


def test_the_auth_store_copies_are_pruned_by_the_same_rule_on_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dumps = [f"prefect-202501{d:02d}T030000Z.dump" for d in range(1, 6)]
    stores = [f"auth-202501{d:02d}T030000Z.db" for d in range(3, 8)]
    for name in [*dumps, *stores, "auth-manual.db", "auth-20250101T030000Z.db.partial"]:
        (tmp_path / name).write_text("x")
    old = time.time() - 2 * backup_prune.PARTIAL_AGE_SECONDS
    os.utime(tmp_path / "auth-20250101T030000Z.db.partial", (old, old))
    assert backup_prune.main([str(tmp_path), "--daily", "2", "--weekly", "0",
                              "--monthly", "0"]) == 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*dumps[-2:], *stores[-2:], "auth-manual.db"])
    out = capsys.readouterr().out
    assert "auth: 2 backups kept, newest auth-20250107T030000Z.db" in out
