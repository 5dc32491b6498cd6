"""`GET /auth/backup`: an online backup of the auth store (users, API keys, sessions), for a
backup job that cannot read the store's volume: the Kubernetes backup CronJob, whose pods
cannot mount the auth pod's ReadWriteOnce claim (render/kubernetes_backup.py).

Only with `Authorization: Bearer <token>`, the stack's generated `auth_backup_token`, checked
in constant time; without a configured token the route does not exist. The edge never
forwards it (it answers /auth/* itself, except sign-in and sign-out), and the gate lets it
through without the edge's header only because the token is its own proof. Each answer is
audited. The copy is SQLite's online backup (consistent while the service writes), made in
a private temporary file that is deleted once sent.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from prefectstack.auth import credentials as creds
from prefectstack.auth.audit import AuditLog, Record, now_iso

BACKUP_PATH = "/auth/backup"
TOKEN_ENV = "PREFECTSTACK_AUTH_BACKUP_TOKEN"


def online_copy(db: Path) -> Path:
    """A consistent copy of SQLite database `db` in a new 0600 temporary file."""
    handle, name = tempfile.mkstemp(prefix="auth-backup-", suffix=".db")
    os.close(handle)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(name)
    try:
        src.backup(dst)
    except BaseException:
        os.unlink(name)
        raise
    finally:
        dst.close()
        src.close()
    return Path(name)


class StoreBackup:
    def __init__(self, db: Path, token: str, audit: AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.token = token.encode()
        self.audit = audit
        self.clock = clock

    def allowed(self, request: Request) -> bool:
        presented = request.headers.get("authorization", "")
        scheme, _, value = presented.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("latin-1"), self.token)

    async def handle(self, request: Request) -> Response:
        if not self.allowed(request):
            self._record(request, 401, "refused: wrong or missing backup token")
            return JSONResponse({"detail": "a backup token is required"}, 401)
        copy = await run_in_threadpool(online_copy, self.db)
        self._record(request, 200, "auth store backed up")
        return FileResponse(copy, media_type="application/vnd.sqlite3",
                            filename="auth.db", background=BackgroundTask(copy.unlink))

    def _record(self, request: Request, status: int, reason: str) -> None:
        peer = request.client.host if request.client else None
        self.audit.write(Record(
            time=now_iso(self.clock), identity="backup" if status == 200 else None, role=None,
            method="GET", path=BACKUP_PATH, status=status,
            client=creds.client_address(dict(request.headers), peer, False), reason=reason))
