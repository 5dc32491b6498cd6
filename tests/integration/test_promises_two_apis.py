"""The conformance module (test_promises.py) again, with two API processes behind the edge.

Every promise that crosses API processes must hold when the edge balances requests over two
of them sharing Redis for messaging, leases and the docket (those one process decides alone
are left to the one-API round: NOT_ACROSS_APIS). A module of its own, so that pytest-xdist
can run it beside the one-API round.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import test_promises
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
