"""One-shot: create the stack workers' work pools (a worker key may not create them).

`python -m prefectstack.jobs.pools POOL...`, against the API that PREFECT_API_URL (with
PREFECT_API_AUTH_STRING or PREFECT_API_KEY, and PREFECT_API_SSL_CERT_FILE) points at. A
POOL is `NAME` (a process pool) or `NAME:kubernetes:NAMESPACE`: a Kubernetes pool whose
flow-run Jobs go to the stack's namespace (the worker's Role covers that one only), run
under an account with no rights and no token, and carry the stack's labels.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from prefectstack import prefect_api
from prefectstack.errors import StackError
from prefectstack.jobs import run
from prefectstack.layout import flow_run_account
from prefectstack.prefect_api import PrefectApi, Target

POOL_TYPE = "process"  # the stack's own workers are process workers


def pool_body(name: str, pool_type: str = POOL_TYPE,
              namespace: str | None = None) -> dict[str, Any]:
    """The work pool to create, with its type's default base job template: a worker fills
    in an empty template itself, but a worker key may not change a pool."""
    template, _source = prefect_api.default_job_template(pool_type)
    if template is None:
        raise StackError(f"work pool {name}: unknown worker type {pool_type!r}")
    if pool_type == "kubernetes":
        if not namespace:
            raise StackError(f"work pool {name}: a kubernetes pool needs its namespace")
        template = kubernetes_template(template, namespace)
    return {"name": name, "type": pool_type, "base_job_template": template}


def kubernetes_template(template: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Prefect's default Kubernetes template with the stack's defaults: its namespace (not
    `default`), the flow-run account, no service-account token in the pod (flow code needs
    no Kubernetes API), and the stack's labels on the pod."""
    out = copy.deepcopy(template)
    props = out["variables"]["properties"]
    props["namespace"]["default"] = namespace
    props["service_account_name"]["default"] = flow_run_account(namespace)
    pod = out["job_configuration"]["job_manifest"]["spec"]["template"]
    pod["spec"]["automountServiceAccountToken"] = False
    pod.setdefault("metadata", {}).setdefault("labels", {}).update({
        "app.kubernetes.io/component": "flow-run", "app.kubernetes.io/instance": namespace})
    return out


def parse(arg: str) -> tuple[str, str, str | None]:
    """`NAME` or `NAME:TYPE:NAMESPACE` -> (name, type, namespace)."""
    parts = arg.split(":")
    if len(parts) == 1:
        return arg, POOL_TYPE, None
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise StackError(f"pool argument {arg!r}: give NAME or NAME:TYPE:NAMESPACE")


async def ensure(api: PrefectApi, name: str) -> bool:
    """Create pool `name` (`NAME` or `NAME:TYPE:NAMESPACE`) unless it exists (an existing
    pool is left as it is)."""
    return await api.ensure_work_pool(pool_body(*parse(name)))


async def ensure_pool(name: str, target: Target | None = None) -> None:
    """Make sure pool `name` exists, on `target` (default: Prefect's settings)."""
    async with prefect_api.connect(target or prefect_api.target_from_env()) as api:
        await ensure(api, name)


async def main(names: list[str], target: Target | None = None) -> None:
    async with prefect_api.connect(target or prefect_api.target_from_env()) as api:
        for name in names:
            await ensure(api, name)
            print(f"work pool {parse(name)[0]} ready", flush=True)


if __name__ == "__main__":
    sys.exit(run(main(sys.argv[1:])))
