"""Flows for the conformance suite (test_promises.py): each exercises one Prefect promise.

Copied next to the stack file of the test stack; the stack's worker, a `worker join` worker,
`flow.serve()` and `prefect task serve` import it from there. Flows that prove exclusivity
append `<start> <end>` lines (monotonic wall-clock seconds) to a file named by a parameter.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.concurrency.sync import concurrency
from prefect.flow_runs import pause_flow_run


@task
def double(x: int) -> int:
    return x * 2


@flow
def three_tasks(label: str = "") -> list[int]:
    results = [double(i) for i in range(3)]
    get_run_logger().info("three tasks done %s %s", label, results)
    return results


@flow
def sleeper(seconds: float = 120) -> None:
    get_run_logger().info("sleeping %s s", seconds)
    time.sleep(seconds)


@flow
def pauser() -> str:
    pause_flow_run(timeout=600)
    get_run_logger().info("resumed")
    return "resumed"


def _record(journal: str, seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    with Path(journal).open("a") as out:
        out.write(f"{start} {time.time()}\n")


@flow
def exclusive(journal: str, seconds: float = 3) -> None:
    """Run under a deployment concurrency limit of 1."""
    _record(journal, seconds)


@flow
def global_slot(journal: str, limit: str, seconds: float = 2) -> None:
    """Hold a global concurrency limit's only slot."""
    with concurrency(limit, occupy=1, timeout_seconds=300):
        _record(journal, seconds)


@task(retries=2, retry_delay_seconds=1)
def fails_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails on purpose")
    return "second attempt"


@flow
def flaky(marker: str) -> str:
    return fails_once(marker)


@flow
def served() -> str:
    get_run_logger().info("served run")
    return "served"


@task
def background(x: int) -> int:
    return x + 1
