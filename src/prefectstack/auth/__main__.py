"""Run the auth service: `python -m prefectstack.auth --host 127.0.0.1 --port N`.

Configuration comes from the environment the supervisor sets (never from arguments, which
other local users can read in `ps`): the store directory (or, for a replicated auth service,
the PostgreSQL database in PREFECTSTACK_AUTH_DATABASE_URL), the public URL, the bootstrap
admin password and the stack's own service keys.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import uvicorn

from prefectstack.auth.app import AuthConfig, create_app
from prefectstack.auth.audit import AuditLog, DatabaseAuditLog, retention_days_from
from prefectstack.auth.database import AUDIT_IN_STORE_ENV, DIR_ENV, SqliteDatabase, from_environment
from prefectstack.auth.gate import Gate
from prefectstack.auth.roles import Role
from prefectstack.auth.store import DB_FILE, Store
from prefectstack.auth.store_backup import TOKEN_ENV
from prefectstack.auth.throttle import SharedThrottle, Throttle
from prefectstack.errors import StackError
from prefectstack.layout import AUDIT_FILE

ADMIN_USERNAME = "admin"  # the first user, created while there is none


def bootstrap(store: Store) -> None:
    """The admin (only while there are no users) and the stack's service keys."""
    password = os.environ.get("PREFECTSTACK_ADMIN_PASSWORD")
    if password and not store.users():
        try:
            store.add_user(ADMIN_USERNAME, Role.ADMIN, password)
            print(f"created the bootstrap admin user `{ADMIN_USERNAME}`")
        except StackError:  # another auth pod, starting at the same time, created it
            pass
    for entry in json.loads(os.environ.get("PREFECTSTACK_SERVICE_KEYS", "[]")):
        if store.import_key(entry["name"], Role(entry["role"]), entry["key"],
                            pools=entry.get("pools")):
            print(f"registered service key {entry['name']} ({entry['role']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    directory = Path(os.environ.get(DIR_ENV, "."))
    database = from_environment(os.environ, directory, DB_FILE)
    store = Store(directory, database=database)
    bootstrap(store)
    public = os.environ.get("PREFECTSTACK_PUBLIC_URL")
    config = AuthConfig(
        cookie_secure=not public or public.startswith("https://"),
        session_seconds=float(os.environ.get("PREFECTSTACK_SESSION_HOURS", "12")) * 3600,
        public_origin=public,
        api_auth_string=os.environ.get("PREFECTSTACK_API_AUTH_STRING") or None,
    )
    upstreams = os.environ.get("PREFECTSTACK_API_UPSTREAMS", "").split()
    retention = retention_days_from(os.environ)
    audit: AuditLog
    throttle: Throttle
    if isinstance(database, SqliteDatabase):  # one auth process
        throttle = Throttle()
        if os.environ.get(AUDIT_IN_STORE_ENV) == "1":
            # A single Kubernetes pod: the log in the store, which the backup copies.
            audit = DatabaseAuditLog(database, retention_days=retention)
        else:  # the local stack: a file `prefectstack audit` reads
            audit = AuditLog(directory / AUDIT_FILE, retention_days=retention)
    else:  # the pods of a replicated auth service share them
        audit = DatabaseAuditLog(database, retention_days=retention)
        throttle = SharedThrottle(database)
    backup_token = os.environ.get(TOKEN_ENV) or None
    app = Gate(create_app(store, audit, throttle, config, api_upstreams=upstreams,
                          backup_token=backup_token), audit,
               edge_secret=os.environ.get("PREFECTSTACK_EDGE_SECRET"))
    # Websockets: the relay for Prefect's websockets (forward_auth's own checks of a
    # handshake arrive without their Upgrade header, as plain HTTP).
    # proxy_headers off: uvicorn would take a loopback caller's X-Forwarded-For as its
    # address; the app reads it itself, and only from the edge (auth/gate.py).
    # timeout_keep_alive: longer than the edge's idle timeout for upstream connections
    # (Caddy's 2 min), so the edge closes idle connections, never this service while the edge
    # may be sending a request on one (seen: a 502 "broken pipe" with uvicorn's 5 s).
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                proxy_headers=False, timeout_keep_alive=150,
                ws="websockets-sansio" if upstreams else "none")
    audit.flush()  # the count of anonymous refusals not yet written


if __name__ == "__main__":
    main()
