"""Prune the database dumps of the Kubernetes backup CronJob by the stack's `backup.keep`:
`python -m prefectstack.jobs.backup_prune DIR --daily N --weekly N --monthly N`.

The newest dump of each of the last N days, ISO weeks and months is kept, the rule of the
local backups (runtime/backup_retention.py; a unit test holds the two to the same answers).
Only files named as the CronJob names them are touched (`prefect-YYYYmmddTHHMMSSZ.dump`, the
database, and `auth-YYYYmmddTHHMMSSZ.db`, the auth store), each kind pruned by the rule on
its own, and a `.partial` left by a copy that was killed is removed once it is a day old.
Standard library only: it runs from the app ConfigMap in the published Prefect image.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

KINDS = {"prefect": ".dump", "auth": ".db"}
NAME = re.compile(r"^prefect-(\d{8}T\d{6}Z)\.dump$")
STAMP = "%Y%m%dT%H%M%SZ"
PARTIAL_AGE_SECONDS = 86400


def dumps(directory: Path, kind: str = "prefect") -> list[tuple[str, datetime]]:
    name = re.compile(rf"^{kind}-(\d{{8}}T\d{{6}}Z){re.escape(KINDS[kind])}$")
    out = []
    for path in directory.iterdir():
        match = name.match(path.name)
        if match and path.is_file():
            out.append((path.name, datetime.strptime(match[1], STAMP).replace(tzinfo=UTC)))
    return out


def _newest_per(items: list[tuple[str, datetime]], period: Callable[[datetime], object],
                count: int) -> set[str]:
    kept: set[str] = set()
    seen: list[object] = []
    for name, when in sorted(items, key=lambda b: b[1], reverse=True):
        key = period(when)
        if key in seen:
            continue
        if len(seen) == count:
            break
        seen.append(key)
        kept.add(name)
    return kept


def to_prune(backups: Iterable[tuple[str, datetime]], daily: int, weekly: int,
             monthly: int) -> list[str]:
    """Names to delete, oldest first."""
    items = sorted(backups, key=lambda b: b[1])
    kept = (_newest_per(items, lambda d: d.date(), daily)
            | _newest_per(items, lambda d: d.isocalendar()[:2], weekly)
            | _newest_per(items, lambda d: (d.year, d.month), monthly))
    return [name for name, _when in items if name not in kept]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    for period in ("daily", "weekly", "monthly"):
        parser.add_argument(f"--{period}", type=int, required=True)
    args = parser.parse_args(argv)
    for kind, suffix in KINDS.items():
        for name in to_prune(dumps(args.directory, kind), args.daily, args.weekly,
                             args.monthly):
            (args.directory / name).unlink(missing_ok=True)
            print(f"pruned {name}", flush=True)
        for partial in args.directory.glob(f"{kind}-*{suffix}.partial"):
            if time.time() - partial.stat().st_mtime > PARTIAL_AGE_SECONDS:
                partial.unlink(missing_ok=True)
                print(f"removed the unfinished {partial.name}", flush=True)
        kept = sorted(name for name, _ in dumps(args.directory, kind))
        print(f"{kind}: {len(kept)} backups kept, newest {kept[-1] if kept else 'none'}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
