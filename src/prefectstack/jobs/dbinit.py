"""One-shot database bootstrap, run by the `db-init` service before migrations.

Local server: create the Prefect role (with its generated password), its database and the
pg_trgm extension, idempotently. External server: make sure pg_trgm exists.
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import unquote, urlsplit

import asyncpg


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _create_role_and_db(admin_url: str, url: str) -> None:
    target = urlsplit(url)
    user, password = unquote(target.username or ""), unquote(target.password or "")
    database = target.path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", user)
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(
            f"{verb} ROLE {_quote_ident(user)} LOGIN PASSWORD {_quote_literal(password)}"
        )
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            await conn.execute(
                f"CREATE DATABASE {_quote_ident(database)} OWNER {_quote_ident(user)}"
            )
            print(f"created database {database}")
    finally:
        await conn.close()
    admin_db = urlsplit(admin_url)._replace(path=f"/{database}").geturl()
    conn = await asyncpg.connect(admin_db)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    finally:
        await conn.close()


async def _ensure_trgm(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"):
            return
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except asyncpg.InsufficientPrivilegeError:
            print(
                "error: the pg_trgm extension is missing and this role may not create it; "
                "ask the database owner to run: CREATE EXTENSION pg_trgm;",
                file=sys.stderr,
            )
            raise SystemExit(3) from None
    finally:
        await conn.close()


async def main() -> None:
    url = os.environ["PREFECTSTACK_DB_URL"]
    if os.environ.get("PREFECTSTACK_DB_CREATE") == "1":
        await _create_role_and_db(os.environ["PREFECTSTACK_DB_ADMIN_URL"], url)
    await _ensure_trgm(url)
    print("database ready (pg_trgm present)")


if __name__ == "__main__":
    asyncio.run(main())
