"""One-shot: create the stack workers' work pools (a worker key may not create them)."""

from __future__ import annotations

import asyncio
import sys

from prefectstack.jobs.examples import ensure_pool


async def main(pools: list[str]) -> None:
    for pool in pools:
        await ensure_pool(pool)
        print(f"work pool {pool} ready")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
