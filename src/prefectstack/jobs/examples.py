"""One-shot registration of the bundled example deployments (the `examples` service).

The pool is made sure of through `prefect_api.py`, as the `pools` job does; the deployments
are registered with Prefect's flow API (`Flow.afrom_source(...).adeploy(...)`), which reads
the same PREFECT_API_* settings.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.schemas.schedules import IntervalSchedule

from prefectstack.flows.shell import SHELL_COMMAND_ENV
from prefectstack.jobs import run
from prefectstack.jobs.pools import ensure_pool

FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"

# The `shell` example's command: fixed by this deployment (job variables only a developer may
# change); a run's `args` reach it as "$@", data that is checked, never run as shell text.
SHELL_EXAMPLE_COMMAND = (
    'echo "hello from prefectstack on $(uname -n)"; '
    'for word in "$@"; do '
    'case "$word" in ""|*[!A-Za-z0-9_.-]*) echo "not a plain word: $word" >&2; exit 3;; esac; '
    "printf '%s\\n' \"$word\"; "
    "done"
)


async def register(pool: str, interval_seconds: int) -> list[str]:
    await ensure_pool(pool)
    hello = await Flow.afrom_source(str(FLOWS_DIR), "hello.py:hello")
    shell = await Flow.afrom_source(str(FLOWS_DIR), "shell.py:shell_command")
    interval_schedule: Any = IntervalSchedule(interval=timedelta(seconds=interval_seconds))
    ids = []
    ids.append(
        await hello.adeploy(
            name="hello",
            work_pool_name=pool,
            schedules=[interval_schedule],
            tags=["prefectstack", "example"],
            description="Says hello on a schedule; a smoke test of the whole platform.",
            build=False,
            push=False,
            print_next_steps=False,
        )
    )
    ids.append(
        await shell.adeploy(
            name="shell",
            work_pool_name=pool,
            parameters={"args": []},
            job_variables={"env": {SHELL_COMMAND_ENV: SHELL_EXAMPLE_COMMAND}},
            tags=["prefectstack", "example"],
            description="Runs its fixed shell command with the run's `args` (plain words, "
            "printed one a line) and streams the output into the run's logs.",
            build=False,
            push=False,
            print_next_steps=False,
        )
    )
    return [str(i) for i in ids]


async def main() -> None:
    pool = os.environ["PREFECTSTACK_EXAMPLES_POOL"]
    interval = int(os.environ.get("PREFECTSTACK_EXAMPLES_INTERVAL", "3600"))
    for deployment_id in await register(pool, interval):
        print(f"registered deployment {deployment_id}", flush=True)


if __name__ == "__main__":
    sys.exit(run(main()))
