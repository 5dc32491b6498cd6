"""One-shot: create the stack workers' work pools (a worker key may not create them).

`python -m prefectstack.jobs.pools POOL...`, against the API that PREFECT_API_URL (with
PREFECT_API_AUTH_STRING or PREFECT_API_KEY, and PREFECT_API_SSL_CERT_FILE) points at.
"""

from __future__ import annotations

import sys
from typing import Any

from prefectstack import prefect_api
from prefectstack.errors import StackError
from prefectstack.jobs import run
from prefectstack.prefect_api import PrefectApi, Target

POOL_TYPE = "process"  # the stack's own workers are process workers


def pool_body(name: str, pool_type: str = POOL_TYPE) -> dict[str, Any]:
    """The work pool to create, with its type's default base job template: a worker fills
    in an empty template itself, but a worker key may not change a pool."""
    template, _source = prefect_api.default_job_template(pool_type)
    if template is None:
        raise StackError(f"work pool {name}: unknown worker type {pool_type!r}")
    return {"name": name, "type": pool_type, "base_job_template": template}


async def ensure(api: PrefectApi, name: str) -> bool:
    """Create pool `name` unless it exists (an existing pool is left as it is)."""
    return await api.ensure_work_pool(pool_body(name))


async def ensure_pool(name: str, target: Target | None = None) -> None:
    """Make sure pool `name` exists, on `target` (default: Prefect's settings)."""
    async with prefect_api.connect(target or prefect_api.target_from_env()) as api:
        await ensure(api, name)


async def main(names: list[str], target: Target | None = None) -> None:
    async with prefect_api.connect(target or prefect_api.target_from_env()) as api:
        for name in names:
            await ensure(api, name)
            print(f"work pool {name} ready", flush=True)


if __name__ == "__main__":
    sys.exit(run(main(sys.argv[1:])))
