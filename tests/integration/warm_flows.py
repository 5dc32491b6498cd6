"""Flows for test_warm_worker.py, copied next to the test stack's file: each reports what a
forked child sees (its pid, parent, working directory and environment) in its logs."""

from __future__ import annotations

import os
import time

from prefect import flow, get_run_logger, task


@task
def double(x: int) -> int:
    return x * 2


@flow(log_prints=True)
def report(label: str = "") -> list[int]:
    results = [double(i) for i in range(3)]
    print(f"printed {label}")
    get_run_logger().info(
        "report %s pid=%s ppid=%s cwd=%s var=%s results=%s", label, os.getpid(), os.getppid(),
        os.getcwd(), os.environ.get("WARM_VAR", "-"), results)
    return results


@flow
def sleeper(seconds: float = 120) -> None:
    get_run_logger().info("sleeping pid=%s ppid=%s", os.getpid(), os.getppid())
    time.sleep(seconds)


@flow(timeout_seconds=3)
def overrun() -> None:
    time.sleep(120)


@task(retries=2, retry_delay_seconds=1)
def fails_once(marker: str) -> str:
    if not os.path.exists(marker):
        with open(marker, "w") as out:
            out.write("failed once")
        raise RuntimeError("first attempt fails on purpose")
    return "second attempt"


@flow
def flaky(marker: str) -> str:
    return fails_once(marker)
