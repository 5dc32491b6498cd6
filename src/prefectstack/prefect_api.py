"""The one module that talks to a Prefect server (the only importer of `prefect.client`).

A thin async wrapper: it reads server objects as plain JSON data and creates, updates and
deletes them, with the target's URL, credentials and CA. Every HTTP or connection failure
becomes one `StackError` naming what was being done.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

from prefectstack.errors import StackError

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

PAGE = 200  # the server's default (and maximum) page size
Method = Literal["GET", "POST", "PATCH", "PUT", "DELETE"]


@dataclass(frozen=True)
class Target:
    """Which Prefect API to talk to, and how."""

    api_url: str
    api_key: str | None = None
    auth_string: str | None = None  # `user:password` for Basic auth
    ca_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        # Always an explicit, verifying context: a PREFECT_API_TLS_INSECURE_SKIP_VERIFY in
        # the caller's profile must not switch verification off behind our back.
        if self.ca_file:
            try:
                return ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise StackError(f"cannot use CA file {self.ca_file}: {exc}", exit_code=2) from None
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
        context.load_default_certs()
        return context


class PrefectApi:
    """Plain-data reads and writes of the objects `prefectstack deploy` manages."""

    def __init__(self, client: PrefectClient, target: Target) -> None:
        self._client = client
        self.target = target

    # -- plumbing ------------------------------------------------------------------------

    async def _call(
        self, method: Method, route: Any, doing: str, *, json: Any = None,
        path: dict[str, Any] | None = None, missing_ok: bool = False, exists_ok: bool = False,
    ) -> Any:
        """The response's JSON; None for no content, or for a 404 (`missing_ok`) or a 409
        (`exists_ok`) answer."""
        kwargs: dict[str, Any] = {} if json is None else {"json": json}
        try:
            response = await self._client.request(method, route, path_params=path, **kwargs)
        except httpx.HTTPStatusError as exc:
            tolerated = {404} if missing_ok else set()
            if exists_ok:
                tolerated.add(409)
            if exc.response.status_code in tolerated:
                return None
            raise StackError(f"{doing} failed: {_detail(exc.response)}") from None
        except httpx.HTTPError as exc:
            raise StackError(
                f"{doing} failed: cannot reach the Prefect API at {self.target.api_url}: "
                f"{exc or type(exc).__name__}",
                hint="is the stack up (`prefectstack status`)? or pass --server URL",
            ) from None
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def _pages(self, route: Any, doing: str, body: dict[str, Any],
                     path: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = await self._call(
                "POST", route, doing, json={**body, "limit": PAGE, "offset": len(out)}, path=path
            )
            out += page
            if len(page) < PAGE:
                return out

    async def health(self) -> None:
        await self._call("GET", "/health", "checking the Prefect API")

    # -- reads ---------------------------------------------------------------------------

    async def read_work_pool(self, name: str) -> dict[str, Any] | None:
        pool: dict[str, Any] | None = await self._call(
            "GET", "/work_pools/{name}", f"reading work pool {name}", path={"name": name},
            missing_ok=True,
        )
        return pool

    async def read_work_pools(self) -> list[dict[str, Any]]:
        return await self._pages("/work_pools/filter", "reading work pools", {})

    async def read_work_queues(self, pool: str) -> list[dict[str, Any]]:
        return await self._pages(
            "/work_pools/{work_pool_name}/queues/filter", f"reading queues of pool {pool}", {},
            path={"work_pool_name": pool},
        )

    async def read_deployments(self) -> list[dict[str, Any]]:
        """Every deployment, each with its flow's name added as `flow_name`."""
        deployments = await self._pages("/deployments/filter", "reading deployments", {})
        flow_ids = sorted({d["flow_id"] for d in deployments})
        names: dict[str, str] = {}
        for start in range(0, len(flow_ids), PAGE):
            flows = await self._call(
                "POST", "/flows/filter", "reading flows",
                json={"flows": {"id": {"any_": flow_ids[start:start + PAGE]}}, "limit": PAGE},
            )
            names.update({f["id"]: f["name"] for f in flows})
        return [{**d, "flow_name": names.get(d["flow_id"], "?")} for d in deployments]

    async def read_concurrency_limits(self) -> list[dict[str, Any]]:
        return await self._pages(
            "/v2/concurrency_limits/filter", "reading global concurrency limits", {}
        )

    async def read_variables(self) -> list[dict[str, Any]]:
        return await self._pages("/variables/filter", "reading variables", {})

    async def read_secrets(self) -> list[dict[str, Any]]:
        """Secret blocks as `{id, name, value}` (values stay in memory, never printed)."""
        docs = await self._pages(
            "/block_documents/filter", "reading secret blocks",
            {"block_types": {"slug": {"any_": ["secret"]}}, "include_secrets": True},
        )
        return [
            {"id": d["id"], "name": d["name"], "value": (d.get("data") or {}).get("value")}
            for d in docs if d.get("name")
        ]

    async def read_flow_runs_in(self, state_types: list[str]) -> list[dict[str, Any]]:
        """Flow runs whose state has one of these types (`PENDING`, `RUNNING`, ...)."""
        return await self._pages(
            "/flow_runs/filter", "reading flow runs",
            {"flow_runs": {"state": {"type": {"any_": state_types}}}, "sort": "ID_DESC"},
        )

    async def propose_flow_run_state(self, run_id: str, state: dict[str, Any]) -> str:
        """Propose a state (never forced: Prefect's orchestration rules still apply, so a
        run that finished meanwhile stays finished); the answer's status (`ACCEPT`, ...)."""
        answer = await self._call(
            "POST", "/flow_runs/{id}/set_state", f"setting the state of flow run {run_id}",
            json={"state": state, "force": False}, path={"id": run_id},
        )
        return str((answer or {}).get("status", ""))

    # -- writes --------------------------------------------------------------------------

    async def create_work_pool(self, body: dict[str, Any], *, exists_ok: bool = False) -> bool:
        """Create a work pool: True once created; False when one of that name exists
        already (`exists_ok`; otherwise that is an error)."""
        created = await self._call(
            "POST", "/work_pools/", f"creating work pool {body['name']}", json=body,
            exists_ok=exists_ok,
        )
        return created is not None

    async def ensure_work_pool(self, body: dict[str, Any]) -> bool:
        """Create the work pool `body` describes unless one of its name exists, which is
        left as it is. True if it was created here; a pool created meanwhile by someone
        else (a worker starting) counts as existing."""
        if await self.read_work_pool(body["name"]) is not None:
            return False
        return await self.create_work_pool(body, exists_ok=True)

    async def update_work_pool(self, name: str, body: dict[str, Any]) -> None:
        await self._call(
            "PATCH", "/work_pools/{name}", f"updating work pool {name}", json=body,
            path={"name": name},
        )

    async def delete_work_pool(self, name: str) -> None:
        await self._call(
            "DELETE", "/work_pools/{name}", f"deleting work pool {name}", path={"name": name},
            missing_ok=True,
        )

    async def create_work_queue(self, pool: str, body: dict[str, Any]) -> None:
        await self._call(
            "POST", "/work_pools/{work_pool_name}/queues",
            f"creating work queue {pool}/{body['name']}", json=body,
            path={"work_pool_name": pool},
        )

    async def update_work_queue(self, pool: str, name: str, body: dict[str, Any]) -> None:
        await self._call(
            "PATCH", "/work_pools/{work_pool_name}/queues/{name}",
            f"updating work queue {pool}/{name}", json=body,
            path={"work_pool_name": pool, "name": name},
        )

    async def delete_work_queue(self, pool: str, name: str) -> None:
        await self._call(
            "DELETE", "/work_pools/{work_pool_name}/queues/{name}",
            f"deleting work queue {pool}/{name}", path={"work_pool_name": pool, "name": name},
            missing_ok=True,
        )

    async def upsert_deployment(self, flow_name: str, body: dict[str, Any]) -> str:
        """Create or replace (schedules included) the deployment `flow_name/body['name']`."""
        doing = f"applying deployment {flow_name}/{body['name']}"
        flow = await self._call("POST", "/flows/", doing, json={"name": flow_name})
        created = await self._call(
            "POST", "/deployments/", doing, json={**body, "flow_id": flow["id"]}
        )
        return str(created["id"])

    async def delete_deployment(self, deployment_id: str, label: str) -> None:
        await self._call(
            "DELETE", "/deployments/{id}", f"deleting deployment {label}",
            path={"id": deployment_id}, missing_ok=True,
        )

    async def create_concurrency_limit(self, body: dict[str, Any]) -> None:
        await self._call(
            "POST", "/v2/concurrency_limits/", f"creating concurrency limit {body['name']}",
            json=body,
        )

    async def update_concurrency_limit(self, name: str, body: dict[str, Any]) -> None:
        await self._call(
            "PATCH", "/v2/concurrency_limits/{id_or_name}", f"updating concurrency limit {name}",
            json=body, path={"id_or_name": name},
        )

    async def delete_concurrency_limit(self, name: str) -> None:
        await self._call(
            "DELETE", "/v2/concurrency_limits/{id_or_name}", f"deleting concurrency limit {name}",
            path={"id_or_name": name}, missing_ok=True,
        )

    async def create_variable(self, body: dict[str, Any]) -> None:
        await self._call("POST", "/variables/", f"creating variable {body['name']}", json=body)

    async def update_variable(self, name: str, body: dict[str, Any]) -> None:
        await self._call(
            "PATCH", "/variables/name/{name}", f"updating variable {name}", json=body,
            path={"name": name},
        )

    async def delete_variable(self, name: str) -> None:
        await self._call(
            "DELETE", "/variables/name/{name}", f"deleting variable {name}",
            path={"name": name}, missing_ok=True,
        )

    async def create_secret(self, name: str, value: str) -> None:
        doing = f"creating secret block {name}"
        block_type = await self._call(
            "GET", "/block_types/slug/{slug}", doing, path={"slug": "secret"}
        )
        schemas = await self._call(
            "POST", "/block_schemas/filter", doing,
            json={"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}, "limit": 1},
        )
        if not schemas:
            raise StackError(f"{doing} failed: the server has no Secret block schema")
        await self._call(
            "POST", "/block_documents/", doing,
            json={"name": name, "data": {"value": value}, "block_type_id": block_type["id"],
                  "block_schema_id": schemas[0]["id"]},
        )

    async def update_secret(self, block_id: str, name: str, value: str) -> None:
        await self._call(
            "PATCH", "/block_documents/{id}", f"updating secret block {name}",
            json={"data": {"value": value}, "merge_existing_data": False}, path={"id": block_id},
        )

    async def delete_secret(self, block_id: str, name: str) -> None:
        await self._call(
            "DELETE", "/block_documents/{id}", f"deleting secret block {name}",
            path={"id": block_id}, missing_ok=True,
        )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = response.text[:300]
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    hints = {401: " (is the API key right?)", 403: " (does the key's role allow this?)"}
    return f"HTTP {response.status_code}{hints.get(response.status_code, '')}: {body}"


# Target field -> the Prefect setting a Prefect client reads it from.
SETTINGS = {
    "api_url": "PREFECT_API_URL",
    "api_key": "PREFECT_API_KEY",
    "auth_string": "PREFECT_API_AUTH_STRING",
    "ca_file": "PREFECT_API_SSL_CERT_FILE",
}


def target_from_env(env: Mapping[str, str] | None = None) -> Target:
    """The API that Prefect's own client would talk to, with the same credentials and CA:
    read from `env` (Prefect's variable names, `SSL_CERT_FILE` as Prefect's fallback for
    the CA), or, without it, from Prefect's current settings (its environment variables,
    profile and any `temporary_settings`)."""
    if env is None:
        values = _current_settings()
    else:
        values = {field: env.get(name) or None for field, name in SETTINGS.items()}
        values["ca_file"] = values["ca_file"] or env.get("SSL_CERT_FILE") or None
    url = values.pop("api_url")
    if not url:
        raise StackError(
            "PREFECT_API_URL is not set: no Prefect API to talk to",
            hint="set PREFECT_API_URL to the server's /api URL", exit_code=2,
        )
    return Target(url, **values)


def _current_settings() -> dict[str, str | None]:
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    key, auth = api.key, api.auth_string
    return {
        "api_url": api.url or None,
        "api_key": (key.get_secret_value() if key else None) or None,
        "auth_string": (auth.get_secret_value() if auth else None) or None,
        "ca_file": api.ssl_cert_file or None,
    }


@asynccontextmanager
async def connect(target: Target) -> AsyncIterator[PrefectApi]:
    """A connected `PrefectApi`; the connection is checked with /health first."""
    from prefect.client.orchestration import PrefectClient

    client = PrefectClient(
        target.api_url,
        api_key=target.api_key,
        auth_string=target.auth_string,
        httpx_settings={"verify": target.ssl_context(), "timeout": 30.0},
    )
    async with client:
        api = PrefectApi(client, target)
        await api.health()
        yield api


def default_job_template(pool_type: str) -> tuple[dict[str, Any] | None, str | None]:
    """The default base job template of a worker type and where it came from: `installed`
    (its integration package, e.g. prefect-docker, is importable here), `bundled` (the copy
    of Prefect's worker metadata shipped with prefect), or (None, None) for an unknown type."""
    import json
    from importlib import resources

    from prefect.workers.base import BaseWorker

    worker = BaseWorker.get_worker_class_from_type(pool_type)
    if worker is not None:
        template: dict[str, Any] = worker.get_default_base_job_template()
        return template, "installed"
    metadata = resources.files("prefect.server.api").joinpath(
        "collections_data/views/aggregate-worker-metadata.json"
    )
    try:
        collections = json.loads(metadata.read_text())
    except (OSError, ValueError):
        return None, None
    for workers in collections.values():
        for meta in workers.values():
            if meta.get("type") == pool_type and meta.get("default_base_job_configuration"):
                return dict(meta["default_base_job_configuration"]), "bundled"
    return None, None


def schedule_error(schedule: dict[str, Any]) -> str | None:
    """Why Prefect would reject this schedule (`{cron|interval|rrule, timezone, ...}`)."""
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
    from pydantic import ValidationError

    kind = CronSchedule if "cron" in schedule else RRuleSchedule if "rrule" in schedule else (
        IntervalSchedule)
    try:
        kind.model_validate(schedule)
    except ValidationError as exc:
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return None
