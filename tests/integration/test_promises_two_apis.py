"""The conformance module (test_promises.py) again, with two API processes behind the edge.

Every promise must hold when the edge balances requests over two API processes that share
Redis for messaging, leases and the docket. A module of its own, so that pytest-xdist can run
it beside the one-API round.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import test_promises
from .test_promises import Stack, running_stack

pytestmark = pytest.mark.integration

# The same tests, collected here too, against this module's stack.
globals().update({name: value for name, value in vars(test_promises).items()
                  if name.startswith("test_") and callable(value)})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory, replicas=2)
