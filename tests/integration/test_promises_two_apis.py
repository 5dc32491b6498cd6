"""The conformance module (test_promises.py) again, with two API processes behind the edge.

Every promise that crosses API processes must hold when the edge balances requests over two
of them sharing Redis for messaging, leases and the docket (those one process decides alone
are left to the one-API round: NOT_ACROSS_APIS). A module of its own, so that pytest-xdist
can run it beside the one-API round.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import test_promises
from .conftest import cli, log_problems, service, status, wait_for
from .test_promises import Stack, running_stack

pytestmark = pytest.mark.integration

# Promises that one process decides whatever the number of API processes; the one-API round
# covers them, and leaving them out here keeps the suite's time down.
NOT_ACROSS_APIS = {
    # the schedule is computed by the scheduler loop in `services` (the interval schedule and
    # its runs are still tested here)
    "test_cron_schedule_is_set_for_the_next_slot_in_its_time_zone",
    "test_bundled_hello_example_runs_on_its_schedule",
    # the late-runs loop in `services` marks it
    "test_run_with_no_worker_turns_late",
    # the flow-run engine retries its own task, in one process
    "test_retries_happen",
    # the auth service refuses before any API process sees the request
    "test_viewer_is_refused_every_change_and_each_refusal_is_audited",
    "test_websocket_with_a_wrong_or_missing_token_is_closed_and_audited",
}

# The other tests, collected here too, against this module's stack.
globals().update({name: value for name, value in vars(test_promises).items()
                  if name.startswith("test_") and callable(value)
                  and name not in NOT_ACROSS_APIS})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, replicas=2, warm=True)


def test_killing_an_api_process_fails_no_read(stack: Stack) -> None:
    """Issue 10's fault run, short: kill -9 one of the two API processes while reads go
    through the edge without pause. None fails, not even on its first attempt: a read in
    flight to the dead process is sent again to the other one (the edge's retry matcher),
    and new ones skip it until it is back. Then it is restarted and ready again.

    Last in the module: the log check above ran before this kill."""
    before = service(status(stack.root), "api-1")
    results: list[str] = []
    stop = threading.Event()

    def reads() -> None:
        with stack.http("viewer") as client:
            while not stop.is_set():
                try:
                    answer = client.post("/flow_runs/filter", json={"limit": 3})
                    results.append("ok" if answer.status_code == 200
                                   else f"{answer.status_code} {answer.text[:200]}")
                except httpx.HTTPError as exc:
                    results.append(repr(exc))

    threads = [threading.Thread(target=reads) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 20, stack.wait(60), "reads before the kill", 0.1)
        os.kill(before["pid"], signal.SIGKILL)

        def back() -> bool:
            now = service(status(stack.root), "api-1")
            return now["pid"] not in (None, before["pid"]) and now["state"] == "ready"

        wait_for(back, stack.wait(180), "api-1 to be restarted and ready", 1)
        after = len(results)
        wait_for(lambda: len(results) >= after + 20, stack.wait(60), "reads after it", 0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failed = [r for r in results if r != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} reads failed: {failed[:5]}"


# The upgrade (about 5 min on a loaded 2-core machine) and the runs queued while the worker
# was drained, which finish after it, take longer than the default per-test timeout.
@pytest.mark.timeout(1800)
def test_upgrade_drill_fails_no_request_and_crashes_no_run(stack: Stack, tmp_path: Path) -> None:
    """Issue 14's upgrade drill: `prefectstack upgrade` (onto the same Prefect) while clients
    read and write through the edge without pause (two readers, a writer of variables, and
    an operator creating short runs, each counted at the HTTP level, with no retry of ours
    or Prefect's client's) and runs are in flight. Not one request fails, every run ends
    Completed (none Crashed), and the upgrade took a backup, ran the migrations and
    restarted each API process, the services process and the drained worker.

    Last in the module (after the kill above): its log check covers what the upgrade wrote."""
    before = {s["name"]: s for s in status(stack.root)["services"]}
    logs = stack.root / "state" / "logs"
    offsets = {p.name: p.stat().st_size for p in logs.glob("*.log")}
    results: list[tuple[str, str]] = []
    runs: list[str] = []
    stop = threading.Event()
    sleeper = stack.deployment("sleeper/sleeper")["id"]

    def count(kind: str, answer: httpx.Response, ok: int) -> None:
        results.append((kind, "ok" if answer.status_code == ok
                        else f"{answer.status_code} {answer.text[:200]}"))

    def reads() -> None:
        with stack.http("viewer") as client:
            while not stop.is_set():
                try:
                    count("read", client.post("/flow_runs/filter", json={"limit": 3}), 200)
                except httpx.HTTPError as exc:
                    results.append(("read", repr(exc)))

    def writes() -> None:
        with stack.http("developer") as client:
            for n in itertools.count():
                if stop.is_set():
                    return
                try:
                    count("write", client.post("/variables/", json={
                        "name": f"drill_{n}", "value": n}), 201)
                except httpx.HTTPError as exc:
                    results.append(("write", repr(exc)))

    def new_runs() -> None:
        """A run of 20 s about every 15 s: some are in flight whenever an API process
        restarts, and when the worker is drained."""
        with stack.http("operator") as client:
            while not stop.is_set():
                try:
                    answer = client.post(f"/deployments/{sleeper}/create_flow_run",
                                         json={"parameters": {"seconds": 20}})
                    count("run", answer, 201)
                    if answer.status_code == 201:
                        runs.append(answer.json()["id"])
                except httpx.HTTPError as exc:
                    results.append(("run", repr(exc)))
                stop.wait(15)

    threads = [threading.Thread(target=f) for f in (reads, reads, writes, new_runs)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(results) >= 50, stack.wait(60), "requests before the upgrade", 0.1)
        load_before = os.getloadavg()
        started = time.monotonic()
        upgraded = cli("upgrade", "--yes", "--json", cwd=stack.root,
                       timeout=stack.wait(1200))
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    report = json.loads(upgraded.stdout)
    steps = {(s["action"], s["unit"]): s for s in report["steps"]}
    failed = [r for r in results if r[1] != "ok"]
    by_kind = {k: sum(1 for r in results if r[0] == k) for k in ("read", "write", "run")}
    # The drill's figures, for the README (-s shows them).
    print(f"\nupgrade drill: {len(results)} requests {by_kind}, {len(failed)} failed; "
          f"upgrade {took:.0f}s; steps "
          + ", ".join(f"{a} {u}: {s['seconds']:.0f}s" for (a, u), s in steps.items())
          + f"; drain waited for {steps[('drain', 'worker-1')]['runs_waited_for']} run(s); "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert list(steps) == [("backup", ""), ("migrate", "migrate"), ("restart", "api-1"),
                           ("restart", "api-2"), ("restart", "services"),
                           ("drain", "worker-1")]
    # Taken into the stack's backups (this module's every-minute schedule may have pruned it
    # since: `backup.keep` counts it like the others).
    made = Path(steps[("backup", "")]["detail"])
    assert made.parent == stack.root / "state" / "backups" and made.suffix == ".tar", made
    after = {s["name"]: s for s in status(stack.root)["services"]}
    for name in ("api-1", "api-2", "services", "worker-1"):
        assert after[name]["pid"] != before[name]["pid"], name
        assert after[name]["restarts"] == before[name]["restarts"] + 1, name
        assert after[name]["state"] == "ready", name
    assert after["migrate"]["state"] == "completed"
    # Every run the operator created ends Completed: none crashed while APIs restarted or
    # its worker was drained (those created while its pool was paused run after).
    finals = {run_id: stack.finished(run_id, timeout=300)["state"]["type"] for run_id in runs}
    assert set(finals.values()) == {"COMPLETED"}, finals
    problems = _new_log_problems(logs, offsets, tmp_path)
    assert not problems, "\n".join(problems)


def _new_log_problems(logs: Path, offsets: dict[str, int], scratch: Path) -> list[str]:
    """`log_problems` of what the logs gained since `offsets` (their sizes before)."""
    for path in logs.glob("*.log"):
        with path.open("rb") as log:
            log.seek(offsets.get(path.name, 0))
            (scratch / path.name).write_bytes(log.read())
    return log_problems(scratch, test_promises.ALLOWED)


def test_upgrade_refuses_a_database_a_newer_prefect_migrated(stack: Stack) -> None:
    """A downgrade: the database at a revision the installed Prefect does not know (as a
    newer Prefect would leave it). `upgrade` refuses before it touches anything: no restart
    (the backup is its next step; scheduled ones land here every minute, so not counted)."""
    import asyncio

    import asyncpg

    secrets = json.loads((stack.root / "state" / "secrets.json").read_text())

    async def set_revision(revision: str) -> str:
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.ports["pg"], user="postgres",
                                     password=secrets["postgres_superuser_password"],
                                     database="prefect")
        try:
            old = str(await conn.fetchval("SELECT version_num FROM alembic_version"))
            await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
        finally:
            await conn.close()
        return old

    before = status(stack.root)["services"]
    real = asyncio.run(set_revision("ffffffffffff"))
    try:
        refused = cli("upgrade", "--yes", cwd=stack.root, check=False)
    finally:
        asyncio.run(set_revision(real))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "ffffffffffff" in refused.stderr and "newer Prefect" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert [(s["name"], s["pid"]) for s in status(stack.root)["services"]] == \
        [(s["name"], s["pid"]) for s in before]
