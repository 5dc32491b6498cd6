"""One-shot registration of the bundled example deployments (the `examples` service)."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.client.schemas.schedules import IntervalSchedule

FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"


async def ensure_pool(pool: str) -> None:
    """Deployments need their pool to exist; the worker creates it too, but may start later."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            # With its base job template: a worker fills in an empty one itself, and a
            # worker key may not change a pool.
            template = ProcessWorker.get_default_base_job_template()
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
        except ObjectAlreadyExists:
            pass


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
            parameters={"command": "echo hello from prefectstack && uname -a"},
            tags=["prefectstack", "example"],
            description="Runs a shell command and streams its output into the run's logs.",
            build=False,
            push=False,
            print_next_steps=False,
        )
    )
    return [str(i) for i in ids]


if __name__ == "__main__":
    pool = os.environ["PREFECTSTACK_EXAMPLES_POOL"]
    interval = int(os.environ.get("PREFECTSTACK_EXAMPLES_INTERVAL", "3600"))
    for deployment_id in asyncio.run(register(pool, interval)):
        print(f"registered deployment {deployment_id}")
