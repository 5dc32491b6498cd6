#!/usr/bin/env python3
"""Benchmark (issue 14): the database's size over a simulated month and a half of a steady
load, with the stack's default retention and without any, in compressed time.

Starts its own PostgreSQL the way the stack does (the stack's default `postgres:` section:
the same binaries, initdb flags and settings, run as the stack's unprivileged account when
started as root), creates the Prefect database as the stack's db-init does and migrates it
with `prefect server database upgrade -y`, as its `migrate` one-shot does. A copy of the fresh
database (CREATE DATABASE ... TEMPLATE) is the one without retention.

Then for each simulated day d (1..--days):

1. the day's --runs flow runs are written into both databases, dated within day d: each run
   with its 4 states (Scheduled, Pending, Running, Completed; 2% Failed), --tasks task runs
   with 3 states each, --logs log lines, an artifact, and the events Prefect emits for such a
   run (one per state change of the run and of its task runs, with their related resources
   as the event persister writes them: 13 events, ~40 resource rows per run by default).
   Rows are shaped like Prefect's own (its columns, JSON documents of the same keys) and
   copied in with COPY: what they cost on disk is the point, not the API's speed;
2. in the database with retention only, Prefect's own vacuum runs as of the end of day d: the
   very task functions the stack's services process runs (prefect.server.services.db_vacuum:
   old flow runs, old events, event-type overrides, orphaned logs/artifacts), with the
   settings the stack gives that process (topology.settings.retention_env of the default
   stack: flow runs 30 days, events 7 days) and the clock they read moved to day d;
3. autovacuum's work of a day is done in both: PostgreSQL's autovacuum would visit every
   table whose dead rows pass its threshold (50 + 20% of the table, read from the server)
   many times within a real day, and compressed time gives it no time, so each table over
   that threshold gets the same plain VACUUM at the end of the day (never VACUUM FULL);
4. the sizes: pg_database_size and each big table's pg_total_relation_size (indexes and
   TOAST included), and its live rows.

Not simulated: the updates Prefect makes to a run's row at each state change (flow_run and
task_run rows are written once, in their final state), deployments, and task runs outside
flows. Prints a table and writes JSON. Usage:

    python scripts/bench_retention.py [--days 45] [--runs 1000] [--tasks 3] [--logs 10]
                                      [--json bench_retention.json] [--every 5]

Everything binds to 127.0.0.1, and the server and its temporary directory are removed at
the end (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

DB_RETENTION = "prefect"  # the stack's database name
DB_UNBOUNDED = "prefect_unbounded"
MODES = {"retention": DB_RETENTION, "unbounded": DB_UNBOUNDED}
TABLES = ("events", "event_resources", "log", "flow_run", "flow_run_state", "task_run",
          "task_run_state", "artifact")
SUPERUSER_PASSWORD = "bench-" + uuid4().hex  # a throwaway server on loopback
OWNER_PASSWORD = "bench-" + uuid4().hex
PG_START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a PostgreSQL of the stack's kind -----------------------------------------------------


class Cluster:
    """PostgreSQL as the stack runs it: the default stack's binaries, initdb and settings."""

    def __init__(self, work: Path) -> None:
        from prefectstack import topology
        from prefectstack.stack.model import CURRENT_VERSION, Stack

        self.stack = Stack.model_validate({"version": CURRENT_VERSION})
        self.work = work
        self.pgdata = work / "pgdata"
        self.port = free_port()
        self.settings = next(s for s in topology.build(self.stack) if s.role == "postgres").settings
        self.user: str | None = None
        self.bin_dir: Path | None = None

    def start(self) -> None:
        from prefectstack import tools
        from prefectstack.runtime import pgdata
        from prefectstack.runtime.binaries import postgres_bin_dir
        from prefectstack.runtime.unprivileged import reachable_postgres

        pg = self.stack.postgres
        if pgdata.is_root():
            self.work.chmod(0o711)  # the unprivileged account reaches its data dir below
            pgdata.ensure_os_user(pg.os_user)
            self.user = pg.os_user
            self.bin_dir = reachable_postgres(pg.mode, self.work / "runtime", pg.os_user)
        else:
            self.bin_dir = postgres_bin_dir(pg.mode)
        pgdata.prepare(self.pgdata, self.bin_dir, pg.os_user, SUPERUSER_PASSWORD)
        options = " ".join([f"-p {self.port} -c listen_addresses=127.0.0.1",
                            "-c unix_socket_directories=''",
                            *(f"-c {k}={v}" for k, v in self.settings.items())])
        tools.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l",
                   str(self.pgdata / "bench.log"), "-o", options, "-w", "-t",
                   str(PG_START_TIMEOUT), "start"],
                  user=self.user, timeout=PG_START_TIMEOUT + 30)

    def stop(self) -> None:
        from prefectstack import tools
        from prefectstack.errors import StackError

        if self.bin_dir is not None and (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(StackError):
                tools.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast",
                           "-w", "stop"], user=self.user, timeout=120)

    def url(self, database: str, *, admin: bool = True, driver: str = "") -> str:
        who = f"postgres:{SUPERUSER_PASSWORD}" if admin else f"prefect:{OWNER_PASSWORD}"
        scheme = f"postgresql{driver}"
        return f"{scheme}://{who}@127.0.0.1:{self.port}/{database}"

    def version(self) -> str:
        assert self.bin_dir is not None
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True,
                             text=True, check=False).stdout
        return out.strip()


def prefect_env(cluster: Cluster, home: Path) -> dict[str, str]:
    """The environment of the stack's server processes, pointed at this server: its database
    URL and the default stack's retention settings (topology.settings.retention_env)."""
    from prefectstack.topology.settings import retention_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": cluster.url(DB_RETENTION, admin=False,
                                                              driver="+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **retention_env(cluster.stack),
    }
    return env


def create_databases(cluster: Cluster, env: dict[str, str]) -> float:
    """db-init's role and database, the migrate one-shot, then a copy without retention.
    Returns the migration's seconds."""
    from prefectstack.jobs import dbinit

    with contextlib.redirect_stdout(sys.stderr):
        asyncio.run(dbinit._create_role_and_db(cluster.url("postgres"),
                                               cluster.url(DB_RETENTION, admin=False)))
    started = time.monotonic()
    migrate = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade",
                              "-y"], env=env, capture_output=True, text=True, timeout=900,
                             check=False)
    if migrate.returncode != 0:
        raise SystemExit(f"migration failed:\n{migrate.stdout}\n{migrate.stderr}")
    seconds = time.monotonic() - started

    async def copy() -> None:
        import asyncpg

        conn = await asyncpg.connect(cluster.url("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{DB_UNBOUNDED}" TEMPLATE "{DB_RETENTION}" '
                               'OWNER prefect')
        finally:
            await conn.close()

    asyncio.run(copy())
    return seconds


# -- a day of load, shaped like Prefect's rows --------------------------------------------

_WORDS = ("amber", "brisk", "cobalt", "dusky", "eager", "fuzzy", "gentle", "hasty", "ivory",
          "jolly", "otter", "panda", "quail", "raven", "salmon", "tapir", "urchin", "vole")


def _template(document: Any) -> str:
    """JSON with `@KEY@` markers to fill with str.replace: json.dumps per row would take most
    of the benchmark's time."""
    return json.dumps(document)


# A state's details as Prefect stores them: every key, most of them null.
STATE_DETAILS = _template({
    "flow_run_id": "@FLOW_RUN@", "task_run_id": "@TASK_RUN@", "child_flow_run_id": None,
    "scheduled_time": None, "cache_key": None, "cache_expiration": None, "deferred": False,
    "untrackable_result": False, "pause_timeout": None, "pause_reschedule": False,
    "pause_key": None, "run_input_keyset": None, "refresh_cache": None, "retriable": None,
    "transition_id": "@TRANSITION@", "task_parameters_id": None, "traceparent": None,
    "deployment_concurrency_lease_id": None,
}).replace('"@FLOW_RUN@"', "@FLOW_RUN@").replace('"@TASK_RUN@"', "@TASK_RUN@")
# What the event persister stores of a run's state-change event.
EVENT_RESOURCE = {
    "prefect.resource.name": "@NAME@", "prefect.run-count": "1",
    "prefect.state-message": "", "prefect.state-name": "@STATE_NAME@",
    "prefect.state-timestamp": "@AT@", "prefect.state-type": "@STATE@"}
EVENT_PAYLOAD = _template({
    "intended": {"from": "@PREVIOUS@", "to": "@STATE@"},
    "initial_state": {"type": "@PREVIOUS@", "name": "@PREVIOUS_NAME@"},
    "validated_state": {"type": "@STATE@", "name": "@STATE_NAME@", "message": ""}})


POLICY = json.dumps({"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 0,
                     "retry_delay": 0, "pause_keys": [], "resuming": False,
                     "retry_type": None})
TASK_POLICY = json.dumps({"max_retries": 0, "retry_delay_seconds": 0.0, "retries": 0,
                          "retry_delay": 0, "retry_jitter_factor": None})


class Day:
    """The rows of one day's load, per table, in COPY's column order."""

    COLUMNS = {
        "flow_run": ("id", "created", "updated", "name", "run_count", "total_run_time",
                     "parameters", "context", "empirical_policy", "tags", "auto_scheduled",
                     "flow_id", "state_type", "state_name", "state_timestamp",
                     "expected_start_time", "start_time", "end_time", "work_queue_name",
                     "job_variables", "labels"),
        "flow_run_state": ("id", "created", "updated", "type", "timestamp", "name",
                           "state_details", "flow_run_id", "message"),
        "task_run": ("id", "created", "updated", "name", "run_count", "total_run_time",
                     "task_key", "dynamic_key", "empirical_policy", "task_inputs", "tags",
                     "flow_run_run_count", "flow_run_id", "state_type", "state_name",
                     "state_timestamp", "expected_start_time", "start_time", "end_time",
                     "labels"),
        "task_run_state": ("id", "created", "updated", "type", "timestamp", "name",
                           "state_details", "task_run_id", "message"),
        "log": ("id", "created", "updated", "name", "level", "message", "timestamp",
                "flow_run_id", "task_run_id"),
        "artifact": ("id", "created", "updated", "type", "data", "description",
                     "flow_run_id", "task_run_id"),
        "events": ("id", "created", "updated", "occurred", "event", "resource_id", "resource",
                   "related_resource_ids", "related", "payload", "received", "recorded"),
        "event_resources": ("id", "created", "updated", "occurred", "resource_id",
                            "resource_role", "resource", "event_id"),
    }

    def __init__(self, start: datetime, runs: int, tasks: int, logs: int, flow_id: str,
                 rng: random.Random) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in self.COLUMNS}
        self.flow_id = flow_id
        self.rng = rng
        related = [{"prefect.resource.id": f"prefect.flow.{flow_id}",
                    "prefect.resource.role": "flow", "prefect.resource.name": "etl"},
                   {"prefect.resource.id": "prefect.tag.nightly",
                    "prefect.resource.role": "tag"}]
        self.related = json.dumps(related)
        self.related_ids = json.dumps([r["prefect.resource.id"] for r in related])
        self.related_rows = [
            (r["prefect.resource.id"], r["prefect.resource.role"], json.dumps(
                {k: v for k, v in r.items()
                 if k not in ("prefect.resource.id", "prefect.resource.role")}))
            for r in related]
        for n in range(runs):
            self._run(start + timedelta(seconds=86400 * n / runs), n, tasks, logs)

    def _states(self, kind: str, owner: str, first: datetime, types: list[str],
                table: str) -> None:
        """The states of a run, and the event Prefect emits for each, with its resources."""
        rows, events, resources = self.rows[table], self.rows["events"], self.rows[
            "event_resources"]
        at = first
        previous = previous_name = "null"  # JSON tokens
        owner_id = f"prefect.{kind}-run.{owner}"
        ids = {"@FLOW_RUN@": f'"{owner}"' if kind == "flow" else "null",
               "@TASK_RUN@": f'"{owner}"' if kind == "task" else "null"}
        details_base = STATE_DETAILS.replace("@FLOW_RUN@", ids["@FLOW_RUN@"]).replace(
            "@TASK_RUN@", ids["@TASK_RUN@"])
        resource_base = _template(EVENT_RESOURCE).replace("@NAME@", f"{kind}-{owner[:8]}")
        for state in types:
            name = state.capitalize()
            stamp = at.isoformat()
            rows.append((self.uid(), at, at, state, at, name,
                         details_base.replace("@TRANSITION@", str(self.uid())), owner,
                         None if state != "FAILED" else "Flow run failed: boom"))
            event_id = self.uid()
            resource = (resource_base.replace("@STATE_NAME@", name).replace("@AT@", stamp)
                        .replace("@STATE@", state))
            payload = (EVENT_PAYLOAD.replace('"@PREVIOUS@"', previous)
                       .replace('"@PREVIOUS_NAME@"', previous_name)
                       .replace("@STATE_NAME@", name).replace("@STATE@", state))
            events.append((event_id, at, at, at, f"prefect.{kind}-run.{name}", owner_id,
                           resource[:-1] + f', "prefect.resource.id": "{owner_id}"}}',
                           self.related_ids, self.related, payload, at, at))
            resources.append((self.uid(), at, at, at, owner_id, "", resource, event_id))
            for related_id, role, rest in self.related_rows:
                resources.append((self.uid(), at, at, at, related_id, role, rest, event_id))
            previous, previous_name = f'"{state}"', f'"{name}"'
            at += timedelta(seconds=self.rng.uniform(0.5, 5))

    def _run(self, start: datetime, n: int, tasks: int, logs: int) -> None:
        rng = self.rng
        run_id = self.uid()
        outcome = "FAILED" if rng.random() < 0.02 else "COMPLETED"
        name = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"
        # the run's row first (its states refer to it); written once, in its final state
        duration = timedelta(seconds=rng.uniform(20, 90))
        end = start + duration
        self.rows["flow_run"].append((
            run_id, start, end, name, 1, duration, json.dumps({"batch": n, "date": str(start)}),
            "{}", POLICY, json.dumps(["nightly"]), True, self.flow_id, outcome,
            outcome.capitalize(), end, start, start, end, "default", "{}", "{}"))
        self._states("flow", run_id, start, ["SCHEDULED", "PENDING", "RUNNING", outcome],
                     "flow_run_state")
        task_ids = []
        for t in range(tasks):
            task_id = self.uid()
            task_ids.append(task_id)
            first = start + timedelta(seconds=5 + t * 5)
            last = first + timedelta(seconds=4)
            self.rows["task_run"].append((
                task_id, first, last, f"step-{t}-{task_id[:3]}", 1, timedelta(seconds=4),
                f"flows.etl.step_{t}-{run_id[:8]}", "0", TASK_POLICY,
                json.dumps({"rows": [], "config": []}), "[]", 1, run_id, "COMPLETED",
                "Completed", last, first, first, last, "{}"))
            self._states("task", task_id, first, ["PENDING", "RUNNING", "COMPLETED"],
                         "task_run_state")
        for i in range(logs):
            at = start + duration * (i / max(1, logs))
            task = task_ids[i % len(task_ids)] if task_ids and i % 2 else None
            self.rows["log"].append((
                self.uid(), at, at, "prefect.task_runs" if task else "prefect.flow_runs", 20,
                f"Processed batch {n}.{i}: {rng.randint(100, 99999)} rows from "
                f"s3://bucket/{name}/{i}.parquet in {rng.uniform(0.1, 9):.2f}s", at, run_id,
                task))
        self.rows["artifact"].append((
            self.uid(), end, end, "markdown",
            json.dumps(f"# Run {name}\n\n| rows | seconds |\n|---|---|\n"
                       f"| {rng.randint(100, 99999)} | {duration.total_seconds():.1f} |"),
            "run summary", run_id, task_ids[-1] if task_ids else None))

    def uid(self) -> str:
        """A random id in UUID form (uuid4() would be a third of the time spent here)."""
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


async def copy_day(conn: Any, day: Day) -> None:
    async with conn.transaction():
        for table in Day.COLUMNS:  # parents before children
            await conn.copy_records_to_table(table, records=day.rows[table],
                                             columns=Day.COLUMNS[table])


# -- Prefect's vacuum, as of a day --------------------------------------------------------


class Vacuum:
    """The task functions of Prefect's db_vacuum service, with the clock they read set."""

    def __init__(self) -> None:
        from prefect.server.database import provide_database_interface
        from prefect.server.services import db_vacuum
        from prefect.settings import get_current_settings

        self.module = db_vacuum
        self.db = provide_database_interface()
        settings = get_current_settings()
        types = settings.server.services.db_vacuum.enabled_vacuum_types
        self.tasks = []
        if "flow_runs" in types:
            self.tasks.append(db_vacuum.vacuum_old_flow_runs)
        if "events" in types:
            self.tasks += [db_vacuum.vacuum_events_with_retention_overrides,
                           db_vacuum.vacuum_old_events]
        if "orphans" in types:  # daily in the service: once per simulated day here
            self.tasks += [db_vacuum.vacuum_orphaned_logs, db_vacuum.vacuum_orphaned_artifacts,
                           db_vacuum.vacuum_stale_artifact_collections]
        self.settings = {
            "enabled": sorted(types),
            "flow_runs_retention_days":
                settings.server.services.db_vacuum.retention_period.total_seconds() / 86400,
            "events_retention_days": settings.server.events.retention_period.total_seconds()
            / 86400,
            "batch_size": settings.server.services.db_vacuum.batch_size,
        }

    async def run_as_of(self, moment: datetime) -> float:
        def clock(tz: str = "UTC") -> datetime:
            return moment

        self.module.now = clock  # type: ignore[attr-defined]  # `now("UTC")` in db_vacuum
        started = time.monotonic()
        for task in self.tasks:
            await task(db=self.db)
        seconds = time.monotonic() - started
        # The maintenance connection reports its deletions to the statistics when it ends;
        # autovacuum's threshold (below) reads them.
        config = self.module._maintenance_database_config(self.db)
        if config is not None:
            await (await config.engine()).dispose()
        return seconds


async def autovacuum_day(conn: Any) -> list[str]:
    """Plain VACUUM of each table whose dead rows pass autovacuum's threshold, as autovacuum
    would within a real day (it looks every autovacuum_naptime, a minute by default)."""
    threshold = float(await conn.fetchval("SELECT setting FROM pg_settings "
                                          "WHERE name = 'autovacuum_vacuum_threshold'"))
    scale = float(await conn.fetchval("SELECT setting FROM pg_settings "
                                      "WHERE name = 'autovacuum_vacuum_scale_factor'"))
    await asyncio.sleep(0)
    vacuumed = []
    for relname, live, dead in await conn.fetch(
            "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables"):
        if dead > threshold + scale * live:
            await conn.execute(f'VACUUM "{relname}"')
            vacuumed.append(relname)
    return vacuumed


async def sizes(conn: Any, count: bool) -> dict[str, Any]:
    """The database's size and each table's (`count`: with its rows, counted exactly: the
    statistics' live-row estimates lag seconds behind)."""
    tables = {}
    for table in TABLES:
        tables[table] = {"bytes": await conn.fetchval(
            "SELECT pg_total_relation_size($1::regclass)", table)}
        if count:
            tables[table]["rows"] = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
    return {"database_bytes": await conn.fetchval("SELECT pg_database_size(current_database())"),
            "tables": tables}


async def simulate(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    vacuum = Vacuum()
    conns = {mode: await asyncpg.connect(cluster.url(db)) for mode, db in MODES.items()}
    try:
        flow_id = str(uuid4())
        for conn in conns.values():
            await conn.execute("INSERT INTO flow (id, name) VALUES ($1, 'etl')", flow_id)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        first = today - timedelta(days=args.days)
        rng = random.Random(14)
        days = []
        for d in range(args.days):
            started = time.monotonic()
            day = Day(first + timedelta(days=d), args.runs, args.tasks, args.logs, flow_id, rng)
            generated = time.monotonic()
            await asyncio.gather(*(copy_day(conn, day) for conn in conns.values()))
            copied = time.monotonic()
            vacuum_seconds = await vacuum.run_as_of(first + timedelta(days=d + 1))
            vacuumed = {mode: await autovacuum_day(conn) for mode, conn in conns.items()}
            shown = (d + 1) % args.every == 0 or d + 1 in (1, args.days)
            entry = {"day": d + 1, "rows_written": day.count(),
                     "generate_seconds": round(generated - started, 2),
                     "copy_seconds": round(copied - generated, 2),
                     "vacuum_seconds": round(vacuum_seconds, 2),
                     "autovacuumed": vacuumed,
                     **{mode: await sizes(conn, shown) for mode, conn in conns.items()}}
            days.append(entry)
            if shown:
                print_day(entry, file=sys.stderr)
        return {"vacuum_settings": vacuum.settings, "days": days}
    finally:
        for conn in conns.values():
            await conn.close()


# -- report ---------------------------------------------------------------------------------

MB = 1024 * 1024


def print_day(entry: dict[str, Any], file: Any = sys.stdout) -> None:
    ret, unb = entry["retention"], entry["unbounded"]
    print(f"{entry['day']:>4} {ret['database_bytes'] / MB:>10.1f}"
          f" {unb['database_bytes'] / MB:>10.1f}"
          f" {ret['tables']['flow_run']['rows']:>9} {unb['tables']['flow_run']['rows']:>9}"
          f" {ret['tables']['events']['rows']:>9} {unb['tables']['events']['rows']:>9}"
          f" {entry['vacuum_seconds']:>8.2f}", file=file, flush=True)


HEADER = (f"{'day':>4} {'MB ret.':>10} {'MB none':>10} {'runs ret.':>9} {'runs none':>9}"
          f" {'evts ret.':>9} {'evts none':>9} {'vacuum s':>8}")


def report(result: dict[str, Any]) -> None:
    print(HEADER)
    for entry in result["days"]:
        if "rows" in entry["retention"]["tables"]["flow_run"]:
            print_day(entry)
    last = result["days"][-1]
    print(f"\nper table on day {last['day']} (MB, indexes and TOAST included; live rows):")
    print(f"{'table':<16} {'with retention':>24} {'without':>24}")
    for table in TABLES:
        ret, unb = last["retention"]["tables"][table], last["unbounded"]["tables"][table]
        print(f"{table:<16} {ret['bytes'] / MB:>10.1f} MB {ret['rows']:>10} "
              f"{unb['bytes'] / MB:>10.1f} MB {unb['rows']:>10}")
    growth = result["summary"]
    print(f"\ngrowth over the last 10 days: with retention "
          f"{growth['retention_mb_last_10_days']:+.1f} MB, without "
          f"{growth['unbounded_mb_last_10_days']:+.1f} MB"
          f" (database on day {last['day']}: {last['retention']['database_bytes'] / MB:.0f} MB vs "
          f"{last['unbounded']['database_bytes'] / MB:.0f} MB)")


def summarize(days: list[dict[str, Any]]) -> dict[str, Any]:
    last, earlier = days[-1], days[max(0, len(days) - 11)]
    return {mode + "_mb_last_10_days": round(
        (last[mode]["database_bytes"] - earlier[mode]["database_bytes"]) / MB, 1)
        for mode in MODES} | {
        mode + "_mb_final": round(last[mode]["database_bytes"] / MB, 1) for mode in MODES} | {
        "vacuum_seconds_per_day_max": max(d["vacuum_seconds"] for d in days)}


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def dump_figures(cluster: Cluster, work: Path) -> dict[str, Any]:
    """`pg_dump -Fc` of each database as `prefectstack backup` runs it: seconds and MB."""
    from prefectstack import tools

    assert cluster.bin_dir is not None
    out: dict[str, Any] = {}
    for mode, database in MODES.items():
        target = work / f"{database}.dump"
        started = time.monotonic()
        tools.run([str(cluster.bin_dir / "pg_dump"), "-Fc", "-f", str(target),
                   "-d", cluster.url(database)], timeout=6 * 3600)
        out[mode] = {"seconds": round(time.monotonic() - started, 1),
                     "mb": round(target.stat().st_size / MB, 1)}
        target.unlink()
        print(f"pg_dump -Fc of {mode}: {out[mode]['seconds']} s, {out[mode]['mb']} MB",
              file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--runs", type=int, default=1000, help="flow runs a day")
    parser.add_argument("--tasks", type=int, default=3, help="task runs per flow run")
    parser.add_argument("--logs", type=int, default=10, help="log lines per flow run")
    parser.add_argument("--every", type=int, default=5, help="print every N-th day")
    parser.add_argument("--json", type=Path, default=Path("bench_retention.json"))
    parser.add_argument("--dump", action="store_true",
                        help="at the end, time `pg_dump -Fc` of each database (what a backup "
                             "spends on it) and report its size")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

    started = time.monotonic()
    with workdir() as work:
        cluster = Cluster(work)
        try:
            cluster.start()
            env = prefect_env(cluster, work / "home")
            migrate_seconds = create_databases(cluster, env)
            os.environ.update(env)  # before prefect is imported (in simulate)
            for name in [n for n in os.environ if n.startswith("PREFECT_") and n not in env]:
                del os.environ[name]
            print(HEADER, file=sys.stderr)
            result = asyncio.run(simulate(cluster, args))
            if args.dump:
                result["dump"] = dump_figures(cluster, work)
            postgres = cluster.version()
        finally:
            cluster.stop()
    result |= {
        "summary": summarize(result["days"]),
        "load": {"days": args.days, "runs_per_day": args.runs, "tasks_per_run": args.tasks,
                 "logs_per_run": args.logs},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                    "python": platform.python_version(), "postgres": postgres},
        "migrate_seconds": round(migrate_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    report(result)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{result['total_seconds']:.0f}s in all (migration {migrate_seconds:.0f}s); "
          f"JSON: {args.json}")


if __name__ == "__main__":
    main()
