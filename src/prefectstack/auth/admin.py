"""Users, API keys and the audit log of a Kubernetes auth service, from inside one of its
pods (`kubectl exec deploy/auth -- python -m prefectstack.auth.admin ...`), where the store is
set (a replicated service's database URL, or a single pod's store directory with the audit
log in the store) and the image has no prefectstack CLI. The same operations as `prefectstack
users|keys|audit` on a local stack, each change audited as `admin:<OS account>`.

    users add NAME --role R [--password-stdin] | users list | users remove NAME
    keys create NAME --role R [--expires-in 90d] [--pool P ...] | keys list
    keys revoke PREFIX | audit [--user U] [--since ISO] [-n N]

A generated password or a new key is printed once; nothing else prints a secret.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from prefectstack.auth.audit import DatabaseAuditLog, Record, now_iso, read_database
from prefectstack.auth.database import (
    AUDIT_IN_STORE_ENV,
    DIR_ENV,
    URL_ENV,
    Database,
    from_environment,
)
from prefectstack.auth.lifetime import parse_duration
from prefectstack.auth.roles import Role
from prefectstack.auth.store import DB_FILE, Store
from prefectstack.errors import StackError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prefectstack.auth.admin",
                                     description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    users = kinds.add_parser("users").add_subparsers(dest="action", required=True)
    add = users.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    add.add_argument("--password-stdin", action="store_true")
    users.add_parser("list")
    users.add_parser("remove").add_argument("name")
    keys = kinds.add_parser("keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create")
    create.add_argument("name")
    create.add_argument("--role", choices=[r.value for r in Role], required=True)
    create.add_argument("--expires-in", default=None, help="a lifetime: 30m, 12h, 90d, 4w")
    create.add_argument("--pool", dest="pools", action="append", default=None)
    keys.add_parser("list")
    keys.add_parser("revoke").add_argument("prefix")
    audit = kinds.add_parser("audit")
    audit.add_argument("--user", default=None)
    audit.add_argument("--since", default=None, help="an ISO 8601 time (UTC if no zone)")
    audit.add_argument("-n", "--limit", type=int, default=200)
    return parser


def _record(db: Database, action: str, key_prefix: str | None = None) -> None:
    DatabaseAuditLog(db).write(Record(
        time=now_iso(), identity=f"admin:{getpass.getuser()}", role="admin", method="CLI",
        path=action, status=200, client="local", key_prefix=key_prefix,
        reason="changed with prefectstack.auth.admin"))


def run(args: argparse.Namespace, db: Database) -> None:
    store = Store(Path("."), database=db)
    if args.kind == "users" and args.action == "add":
        generated = not args.password_stdin
        password = (secrets.token_urlsafe(18) if generated
                    else sys.stdin.readline().rstrip("\n"))
        store.add_user(args.name, Role(args.role), password)
        _record(db, f"users add {args.name} --role {args.role}")
        print(f"added {args.name} ({args.role})")
        if generated:
            print(f"password (shown once): {password}")
    elif args.kind == "users" and args.action == "list":
        print(json.dumps([asdict(u) | {"role": u.role.value} for u in store.users()]))
    elif args.kind == "users" and args.action == "remove":
        store.remove_user(args.name)
        _record(db, f"users remove {args.name}")
        print(f"removed {args.name}; their sessions ended")
    elif args.kind == "keys" and args.action == "create":
        expires = time.time() + parse_duration(args.expires_in) if args.expires_in else None
        key = store.create_key(args.name, Role(args.role), expires_at=expires,
                               pools=args.pools)
        scope = "".join(f" --pool {p}" for p in sorted(set(args.pools or ())))
        _record(db, f"keys create {args.name} --role {args.role}{scope}", key_prefix=key[:12])
        print(f"created {args.role} key {key[:12]} ({args.name}); the key, shown once:")
        print(key)
    elif args.kind == "keys" and args.action == "list":
        print(json.dumps([asdict(k) | {"role": k.role.value} for k in store.keys()]))  # noqa: SIM118
    elif args.kind == "keys" and args.action == "revoke":
        store.revoke_key(args.prefix)
        _record(db, f"keys revoke {args.prefix}", key_prefix=args.prefix)
        print(f"revoked {args.prefix}")
    else:  # audit
        since = None
        if args.since:
            since = datetime.fromisoformat(args.since)
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
        records = list(read_database(db, user=args.user, since=since))[-args.limit:]
        print(json.dumps([asdict(r) for r in records]))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    directory = os.environ.get(DIR_ENV)
    if not os.environ.get(URL_ENV) and not (
            directory and os.environ.get(AUDIT_IN_STORE_ENV) == "1"):
        print(f"error: neither {URL_ENV} nor {DIR_ENV} with the audit log in the store is "
              "set: run this in an auth pod (a local stack has `prefectstack users|keys|"
              "audit`)", file=sys.stderr)
        return 2
    db = from_environment(os.environ, Path(directory or "."), DB_FILE)
    try:
        run(args, db)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code or 1
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
