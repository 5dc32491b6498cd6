"""Wait until the database's schema is at the migration head of the installed Prefect:
`python -m prefectstack.jobs.migrated`.

Kubernetes init containers of the API and services pods run it instead of waiting for the
migration Job by name: a deleted or renamed Job no longer leaves restarted pods stuck, and
no pod needs to read the Kubernetes API for it. It reads the database URL Prefect reads
(`PREFECT_SERVER_DATABASE_CONNECTION_URL`) and prints its progress (the init container's
log).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import asyncpg

INTERVAL = 3.0
URL_VARIABLE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def heads() -> set[str]:
    """The head revisions of Prefect's PostgreSQL migrations (what `upgrade` reaches)."""
    from alembic.script import ScriptDirectory
    from prefect.server.database import alembic_commands
    from prefect.server.database.orm_models import AsyncPostgresORMConfiguration

    config = alembic_commands.alembic_config()
    # What Prefect's migration environment points alembic at for PostgreSQL.
    versions = AsyncPostgresORMConfiguration().versions_dir
    config.set_main_option("version_locations", str(versions))
    return set(ScriptDirectory.from_config(config).get_heads())


def asyncpg_url(url: str) -> str:
    """SQLAlchemy's `postgresql+asyncpg://` as asyncpg takes it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


async def current(url: str) -> set[str]:
    """The revisions the database is at; empty before the first migration."""
    conn = await asyncpg.connect(asyncpg_url(url), timeout=5)
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return set()
    finally:
        await conn.close()
    return {row[0] for row in rows}


def main() -> int:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        print(f"error: {URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    wanted = heads()
    print(f"waiting for the database to reach migration {', '.join(sorted(wanted))}", flush=True)
    last = ""
    while True:
        try:
            found = asyncio.run(current(url))
            state = ", ".join(sorted(found)) or "no migrations yet"
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            found, state = set(), f"not reachable ({type(exc).__name__})"
        if found == wanted:
            print(f"ready: the database is at {state}", flush=True)
            return 0
        if state != last:
            print(f"database: {state}", flush=True)
            last = state
        time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main())
