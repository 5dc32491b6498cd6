"""A hello flow: the smallest end-to-end check that scheduling, workers and logs work.

`log_prints=True` turns every `print()` in the flow into an INFO log line of the run, which is
how the seed documents' "simple print flow" shows up in the Prefect UI.
"""

from __future__ import annotations

import platform

from prefect import flow


@flow(name="hello", log_prints=True, retries=1, retry_delay_seconds=5, timeout_seconds=60)
def hello(name: str = "world") -> str:
    """Print a greeting (captured into the run's logs) and return it.

    Args:
        name: Who to greet.

    Returns:
        The greeting, which also names the machine that ran it.
    """
    message = f"Hello, {name}! (from prefectstack on {platform.node() or 'an unnamed host'})"
    print(message)
    return message
