"""The reconciler's judgement (pure): which runs belong to dead local infrastructure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefectstack.jobs.reconcile import Host, decide, is_suspect, parse_time, worker_of

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
HOST = Host(workers=frozenset({"worker-1"}), pools=frozenset({"pool"}),
            runs=frozenset({"alive"}))


def flow_run(rid: str = "r1", kind: str = "RUNNING", *, owner: str | None = "worker-1",
             pid: str | None = "123", age: float = 300, pool: str = "pool") -> dict[str, object]:
    return {
        "id": rid, "name": f"run-{rid}", "work_pool_name": pool, "infrastructure_pid": pid,
        "labels": {"prefect.worker.name": owner} if owner else {},
        "state": {"type": kind, "name": kind.title(),
                  "timestamp": (NOW - timedelta(seconds=age)).isoformat()},
    }


def test_worker_command_lines_are_recognised() -> None:
    argv = ["/venv/bin/python", "/venv/bin/prefect", "worker", "start", "--pool", "p",
            "--type", "process", "--name", "worker-1", "--with-healthcheck"]
    assert worker_of(argv) == ("worker-1", "p")
    assert worker_of(["prefect", "worker", "start", "--name=w", "-p", "q"]) == ("w", "q")
    assert worker_of(["python", "-m", "prefect.engine"]) is None
    warm = ["/venv/bin/python3", "-m", "prefectstack.warm.worker", "--pool", "p", "--type",
            "process", "--name", "worker-2", "--with-healthcheck"]
    assert worker_of(warm) == ("worker-2", "p")  # the warm worker's runs are judged too
    assert worker_of(["prefect", "worker", "start", "--pool", "p"]) is None  # no name: unknown


def test_a_run_with_a_live_process_is_never_suspect() -> None:
    assert not is_suspect(flow_run("alive"), HOST, NOW)


def test_a_running_run_of_a_local_worker_without_a_process_is_suspect() -> None:
    assert is_suspect(flow_run(), HOST, NOW)
    assert is_suspect(flow_run(kind="CANCELLING"), HOST, NOW)


def test_runs_of_workers_not_on_this_host_are_never_suspect() -> None:
    assert not is_suspect(flow_run(owner="remote-worker"), HOST, NOW)
    assert not is_suspect(flow_run(owner=None), HOST, NOW)  # RUNNING, unlabelled: unknown


def test_finished_or_scheduled_runs_are_never_suspect() -> None:
    for kind in ("COMPLETED", "FAILED", "CRASHED", "SCHEDULED", "PAUSED"):
        assert not is_suspect(flow_run(kind=kind), HOST, NOW)


def test_a_pending_run_without_a_process_gets_a_grace_period() -> None:
    young = flow_run(kind="PENDING", pid=None, age=5)
    old = flow_run(kind="PENDING", pid=None, age=120)
    assert not is_suspect(young, HOST, NOW, pending_grace=60)
    assert is_suspect(old, HOST, NOW, pending_grace=60)


def test_an_unlabelled_pending_run_counts_when_its_pool_is_served_here() -> None:
    assert is_suspect(flow_run(kind="PENDING", owner=None, pid=None), HOST, NOW)
    assert not is_suspect(flow_run(kind="PENDING", owner=None, pid=None, pool="elsewhere"),
                          HOST, NOW)


def test_an_unreadable_flow_process_makes_the_pass_do_nothing() -> None:
    unsure = Host(HOST.workers, HOST.pools, HOST.runs, uncertain=True)
    assert not is_suspect(flow_run(), unsure, NOW)


def test_a_run_is_acted_on_only_when_suspect_on_two_passes_in_a_row() -> None:
    runs = [flow_run("a"), flow_run("b", kind="CANCELLING"), flow_run("alive")]
    act, suspects = decide(runs, HOST, NOW, previous=set(), hostname="h")
    assert act == [] and suspects == {"a", "b"}
    act, suspects = decide(runs, HOST, NOW, previous=suspects, hostname="h")
    states = {v.run_id: v.state for v in act}
    assert states["a"]["type"] == "CRASHED" and states["b"]["type"] == "CANCELLED"
    assert "infrastructure is gone" in states["a"]["message"]
    assert "worker worker-1" in states["a"]["message"] and "on h" in states["a"]["message"]


def test_times_parse_with_or_without_a_zone() -> None:
    assert parse_time("2026-11-29T12:00:00Z") == NOW
    assert parse_time("2026-11-29T12:00:00") == NOW
    assert parse_time("garbage") is None and parse_time(None) is None
