"""`GET /auth/backup` (auth/store_backup.py): the auth store's online copy, for the
Kubernetes backup CronJob, with the stack's backup token only, every answer audited."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from prefectstack.auth import gate
from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, read
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store
from prefectstack.auth.store_backup import online_copy
from prefectstack.auth.throttle import Throttle

TOKEN = "backup-token-0123456789abcdef"
SECRET = "edge-secret-value"


def _app(tmp_path: Path, token: str | None) -> tuple[gate.Gate, Store]:
    store = Store(tmp_path / "auth", hasher=PasswordHasher(time_cost=1, memory_cost=1024))
    store.add_user("ada", Role.ADMIN, "correct horse battery")
    store.create_key("viewer-key", Role.VIEWER)
    audit = AuditLog(tmp_path / "audit.log")
    app = create_app(store, audit, Throttle(), AuthConfig(), backup_token=token)
    return gate.Gate(app, audit, edge_secret=SECRET), store


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    wrapped, _store = _app(tmp_path, TOKEN)
    with TestClient(wrapped) as c:
        yield c


def test_the_token_gets_a_consistent_copy_of_users_and_keys(
        client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    answer = client.get("/auth/backup", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    copy = tmp_path / "copy.db"
    copy.write_bytes(answer.content)
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT username FROM users").fetchall() == [("ada",)]
        assert db.execute("SELECT name FROM api_keys").fetchall() == [("viewer-key",)]
    assert not list(scratch.iterdir())  # the temporary copy is gone once sent
    records = [r for r in read(tmp_path / "audit.log") if r.path == "/auth/backup"]
    assert [(r.status, r.reason) for r in records] == [(200, "auth store backed up")]


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_no_copy_without_the_token_and_each_refusal_is_audited(
        client: TestClient, tmp_path: Path, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    answer = client.get("/auth/backup", headers=headers)
    assert answer.status_code == 401
    assert b"SQLite" not in answer.content
    records = [r for r in read(tmp_path / "audit.log") if r.path == "/auth/backup"]
    assert [r.status for r in records] == [401]


def test_without_a_configured_token_there_is_no_route(tmp_path: Path) -> None:
    wrapped, _store = _app(tmp_path, None)
    with TestClient(wrapped) as c:
        assert c.get("/auth/backup", headers={"Authorization": "Bearer "}).status_code == 404
        assert c.get("/auth/backup", headers={gate.EDGE_HEADER: SECRET}).status_code == 404


def test_the_online_copy_is_private(tmp_path: Path) -> None:
    _wrapped, store = _app(tmp_path, TOKEN)
    copy = online_copy(store.path)
    try:
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    finally:
        copy.unlink()


def test_the_rendered_cronjob_script_fetches_it_with_wget(tmp_path: Path) -> None:
    """The CronJob's shell script (render/kubernetes_backup.py), run with a real wget
    against a real HTTP server answering like the auth service."""
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefectstack.render.kubernetes_backup import AUTH_SCRIPT, MOUNT

    if not shutil.which("wget"):
        pytest.skip("no wget here (the image's busybox has one)")
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            ok = self.path == "/auth/backup" and seen[-1] == f"Bearer {TOKEN}"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"SQLite format 3\0" if ok else b"{}")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "backups"
    out.mkdir()
    script = AUTH_SCRIPT.replace(MOUNT, str(out))
    try:
        for token, code in ((TOKEN, 0), ("wrong", 1)):
            env = {"PATH": "/usr/bin:/bin", "PREFECTSTACK_AUTH_BACKUP_TOKEN": token,
                   "PREFECTSTACK_AUTH_ADDRESS": f"127.0.0.1:{server.server_port}"}
            done = subprocess.run(["sh", "-c", script], env=env, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == code, done.stderr
    finally:
        server.shutdown()
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 1 and files[0].startswith("auth-") and files[0].endswith(".db")
    assert (out / files[0]).read_bytes().startswith(b"SQLite format 3")
    assert seen == [f"Bearer {TOKEN}", "Bearer wrong"]


def test_a_single_kubernetes_pods_audit_log_is_in_the_copy(tmp_path: Path) -> None:
    """One auth pod in Kubernetes keeps its audit log in the store, so the backup job's copy
    holds it with the users and keys (the local stack keeps a file `prefectstack audit`
    reads)."""
    from prefectstack.auth.audit import DatabaseAuditLog, Record, now_iso, read_database
    from prefectstack.auth.database import SqliteDatabase

    _wrapped, store = _app(tmp_path, TOKEN)
    assert store.path is not None
    DatabaseAuditLog(store.db).write(Record(
        time=now_iso(), identity="ada", role="admin", method="POST", path="/api/x",
        status=200, client="192.0.2.1"))
    copy = online_copy(store.path)
    try:
        restored = SqliteDatabase(copy)
        assert [r.identity for r in read_database(restored)] == ["ada"]
        restored.close()
    finally:
        copy.unlink()


def test_the_admin_tool_manages_a_single_pods_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m prefectstack.auth.admin` in a single auth pod (its store directory set, the
    audit log in the store): users and keys as on a replicated service, every change in
    the audit log the backup copies."""
    import json

    from prefectstack.auth import admin

    monkeypatch.setenv("PREFECTSTACK_AUTH_DIR", str(tmp_path / "auth"))
    monkeypatch.delenv("PREFECTSTACK_AUTH_DATABASE_URL", raising=False)
    monkeypatch.delenv("PREFECTSTACK_AUDIT_IN_STORE", raising=False)
    assert admin.main(["users", "list"]) == 2  # the audit log would not be in the store
    monkeypatch.setenv("PREFECTSTACK_AUDIT_IN_STORE", "1")
    assert admin.main(["users", "add", "olga", "--role", "operator"]) == 0
    assert admin.main(["users", "add", "olga", "--role", "viewer"]) == 2  # exists: refused
    assert admin.main(["keys", "create", "ci", "--role", "worker", "--pool", "gpu",
                       "--expires-in", "90d"]) == 0
    assert admin.main(["keys", "create", "x", "--role", "viewer", "--expires-in", "soon"]) == 2
    capsys.readouterr()
    assert admin.main(["keys", "list"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert [(k["name"], k["role"], k["pools"]) for k in keys] == [("ci", "worker", ["gpu"])]
    assert 89 * 86400 < keys[0]["expires_at"] - keys[0]["created_at"] <= 90 * 86400
    assert admin.main(["keys", "revoke", keys[0]["prefix"]]) == 0
    capsys.readouterr()
    assert admin.main(["audit"]) == 0
    paths = [r["path"] for r in json.loads(capsys.readouterr().out)]
    assert paths == ["users add olga --role operator",
                     "keys create ci --role worker --pool gpu",
                     f"keys revoke {keys[0]['prefix']}"]
    store = Store(tmp_path / "auth")
    assert [u.username for u in store.users()] == ["olga"]
    store.close()
