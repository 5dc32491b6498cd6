"""The data tier: PostgreSQL, Redis, creating the database, and migrating its schema."""

from __future__ import annotations

from prefectstack.stack.model import Stack
from prefectstack.topology import stack_secrets
from prefectstack.topology.placeholders import address, host_path, secret
from prefectstack.topology.service import Probe, Service
from prefectstack.topology.settings import database_url, server_env


def postgres(stack: Stack) -> list[Service]:
    pg = stack.postgres
    if pg.mode == "external":
        return []
    return [
        Service(
            name="postgres",
            role="postgres",
            kind="daemon",
            argv=("postgres",),
            settings={"password_encryption": "scram-sha-256", **pg.settings},
            ports=(pg.port,),
            volumes=("pgdata",),
            probe=Probe("pg", port=pg.port),
            stop_signal="SIGINT",  # fast shutdown: SIGTERM would wait for clients
            run_as=pg.os_user,
            prepare="pgdata",
        )
    ]


def redis(stack: Stack) -> list[Service]:
    if stack.redis.mode == "external":
        return []
    return [
        Service(
            name="redis",
            role="redis",
            kind="daemon",
            argv=("redis-server",),
            settings={
                "protected-mode": "yes",
                "requirepass": secret(stack_secrets.REDIS_PASSWORD),
                # What Redis holds must survive a restart: the concurrency leases (their
                # slots are counted in PostgreSQL and are only given back through them),
                # events not yet persisted in the messaging streams, docket's scheduled
                # tasks. So the append-only file stays, fsynced every second...
                "appendonly": "yes",
                "appendfsync": "everysec",
                "save": "",  # no RDB snapshots: the append-only file is the persistence
                # ...but the dataset is small while the log of writes that made it grows
                # (~17 MB an idle hour: stream trims, lease renewals, docket's heartbeats).
                # Compact it once it is twice its last compacted size and at least 4 MB,
                # not only at Redis's default 64 MB.
                "auto-aof-rewrite-percentage": "100",
                "auto-aof-rewrite-min-size": "4mb",
                "maxmemory-policy": "noeviction",
            },
            ports=(stack.redis.port,),
            volumes=("redis",),
            probe=Probe("redis", port=stack.redis.port),
        )
    ]


def db_init(stack: Stack) -> Service:
    local = stack.postgres.mode != "external"
    env = {
        "PREFECTSTACK_DB_URL": database_url(stack, plain=True),
        "PREFECTSTACK_DB_CREATE": "1" if local else "0",
    }
    if local:
        env["PREFECTSTACK_DB_ADMIN_URL"] = (
            f"postgresql://postgres:{secret(stack_secrets.POSTGRES_SUPERUSER_PASSWORD)}"
            f"@{address('postgres')}/postgres"
        )
    return Service(
        name="db-init",
        role="db-init",
        kind="oneshot",
        argv=("python", "-m", "prefectstack.jobs.dbinit"),
        env=env,
        depends_on=("postgres",) if local else (),
        probe=Probe("exit"),
    )


def migrate(stack: Stack) -> Service:
    return Service(
        name="migrate",
        role="migrate",
        kind="oneshot",
        argv=("prefect", "server", "database", "upgrade", "-y"),
        env=server_env(stack, "home-migrate"),
        volumes=("home-migrate",),
        depends_on=("db-init",),
        probe=Probe("exit"),
        ready_timeout_seconds=600.0,
    )


def backup(stack: Stack) -> list[Service]:
    """Scheduled backups (`backup.schedule`, pruned to `backup.keep`): `prefectstack backup`
    on a timer, supervised like the rest (`prefectstack.runtime.backup_schedule`). Beside
    the local backend only, of a stack with its own PostgreSQL: the Compose renderer has its own
    backup service, and an external server is backed up by its owner."""
    if not stack.backup.enabled or stack.postgres.mode == "external":
        return []
    return [
        Service(
            name="backup",
            role="backup",
            kind="daemon",
            argv=("python", "-m", "prefectstack.runtime.backup_schedule",
                  host_path("stack_file"), host_path("stack_base")),
            depends_on=("migrate",),
            probe=Probe("alive"),
            inherit_env=True,
            local_only=True,
        )
    ]
