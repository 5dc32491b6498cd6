"""Flows for test_reconcile.py, copied next to the test stack's stack file."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger


@flow
def sleeper(seconds: float = 300) -> float:
    get_run_logger().info("sleeping %s s", seconds)
    time.sleep(seconds)
    return seconds
