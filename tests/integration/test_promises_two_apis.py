"""The conformance module (test_promises.py) again, with two API processes behind the edge.

Every promise that crosses API processes must hold when the edge balances requests over two
of them sharing Redis for messaging, leases and the docket (those one process decides alone
are left to the one-API round: NOT_ACROSS_APIS). A module of its own, so that pytest-xdist
can run it beside the one-API round.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from . import test_promises
from .conftest import service, status, wait_for
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
    yield from running_stack(tmp_path_factory, replicas=2)


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
