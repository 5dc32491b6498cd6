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
