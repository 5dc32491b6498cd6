"""Which backups to keep: the newest of each of the last N days, ISO weeks and months (as
the production seed did: 7 daily, 4 weekly, 6 monthly). Pure.

The rule itself lives in `jobs/backup_prune.py`, standard library only, because the
Kubernetes backup CronJob runs it from the published Prefect image; this module applies it
to a stack file's `backup.keep`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prefectstack.jobs import backup_prune
from prefectstack.stack.data_safety import BackupKeep


def to_keep(backups: Iterable[tuple[str, datetime]], keep: BackupKeep) -> set[str]:
    items = list(backups)
    return {name for name, _when in items} - set(to_prune(items, keep))


def to_prune(backups: Iterable[tuple[str, datetime]], keep: BackupKeep) -> list[str]:
    """Names to delete, oldest first. Only give it backups prefectstack made."""
    return backup_prune.to_prune(backups, keep.daily, keep.weekly, keep.monthly)
