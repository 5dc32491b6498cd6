"""Which backups to keep: the newest of each of the last N days, ISO weeks and months (as
the production seed did: 7 daily, 4 weekly, 6 monthly). Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from prefectstack.stack.data_safety import BackupKeep


def _newest_per(
    backups: list[tuple[str, datetime]], period: Callable[[datetime], object], count: int
) -> set[str]:
    """The newest backup of each of the `count` most recent periods that have one."""
    kept: set[str] = set()
    seen: list[object] = []
    for name, when in sorted(backups, key=lambda b: b[1], reverse=True):
        key = period(when)
        if key in seen:
            continue
        if len(seen) == count:
            break
        seen.append(key)
        kept.add(name)
    return kept


def to_keep(backups: Iterable[tuple[str, datetime]], keep: BackupKeep) -> set[str]:
    items = list(backups)
    return (
        _newest_per(items, lambda d: d.date(), keep.daily)
        | _newest_per(items, lambda d: d.isocalendar()[:2], keep.weekly)
        | _newest_per(items, lambda d: (d.year, d.month), keep.monthly)
    )


def to_prune(backups: Iterable[tuple[str, datetime]], keep: BackupKeep) -> list[str]:
    """Names to delete, oldest first. Only give it backups prefectstack made."""
    items = sorted(backups, key=lambda b: b[1])
    kept = to_keep(items, keep)
    return [name for name, _when in items if name not in kept]
