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
