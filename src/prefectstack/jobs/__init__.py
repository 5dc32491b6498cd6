"""One-shot programs the stack runs (`python -m prefectstack.jobs.NAME`).

Each prints its progress itself (the service's log), and talks to Prefect only through
`prefect_api.py`. This module stays light: `wait.py` is run as a file on its own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from prefectstack.errors import StackError


def run(main: Coroutine[Any, Any, object]) -> int:
    """Run a job's coroutine: its exit code, with a failure the job can name printed as one
    `error:` line (and its hint) rather than a traceback."""
    try:
        asyncio.run(main)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0
