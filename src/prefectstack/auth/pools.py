"""Worker keys scoped to work pools: a key made with `keys create NAME --role worker --pool P`
(and the stack's own worker key, scoped to its workers' pools) may poll and serve only those
pools and change only the runs in them.

What the role table lets a worker do, a scoped key may do only when:

- the route names a work pool (`/api/work_pools/{name}/...`: getting scheduled runs, the
  worker heartbeat, the pool's queues) and the pool is one of the key's;
- the route changes a flow run (`/api/flow_runs/{id}/set_state`, `PATCH /api/flow_runs/{id}`,
  ...: anything but a read) and the run is in one of the key's pools. The auth service asks an
  API process for the run's pool (with the API's own credentials; a run's pool never changes,
  so the answer is kept). A run in no pool (a subflow, a `flow.serve()` run) is not a worker's
  to dispatch, and its flow code reports its states with the same key: allowed. When no API
  process answers, the change is refused with 503, which Prefect's client retries.

Reads stay as the role table says (a worker key reads runs of any pool), and so do task runs,
logs and events: they carry no pool in their path.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from prefectstack.auth.roles import Kind, Rule
from prefectstack.auth.store import Identity

# The run's work pool ("" for a run in none), None for a run the API doesn't know; raises
# LookupError when no API process answered.
PoolOf = Callable[[str], Awaitable[str | None]]

_POOL_ROUTE = re.compile(r"^/api/work_pools/\{[a-z_]+\}(?:/|$)")
_RUN_ROUTE = re.compile(r"^/api/flow_runs/\{id\}(?:/|$)")
CACHE_SIZE = 10_000


class Unchecked(Exception):
    """The run's pool could not be looked up (no API process answered)."""


def pool_in_path(rule: Rule, path: str) -> str | None:
    """The work pool a route names (`/api/work_pools/{name}/...`), else None."""
    if not _POOL_ROUTE.match(rule.pattern):
        return None
    return unquote(path.split("/")[3])


def run_changed(rule: Rule, path: str) -> str | None:
    """The id of the flow run a request changes (a run route that is not a read), else None."""
    if rule.kind is Kind.READ or not _RUN_ROUTE.match(rule.pattern):
        return None
    return path.split("/")[3]


def _served(pools: frozenset[str]) -> str:
    return ", ".join(repr(p) for p in sorted(pools)) or "no pool"


class PoolScope:
    def __init__(self, pool_of: PoolOf) -> None:
        self._pool_of = pool_of
        self._known: dict[str, str] = {}  # run id -> its pool ("" for none)

    async def refusal(self, identity: Identity, rule: Rule | None,
                      path: str) -> tuple[int, str] | None:
        """(status, reason) when a scoped key may not do this, else None."""
        pools = identity.pools
        if pools is None or rule is None:
            return None
        named = pool_in_path(rule, path)
        if named is not None:
            if named in pools:
                return None
            return 403, f"this key serves work pool {_served(pools)} only, not {named!r}"
        run_id = run_changed(rule, path)
        if run_id is None:
            return None
        try:
            pool = await self._pool(run_id)
        except Unchecked:
            return 503, "could not check the flow run's work pool: no API process answered"
        if pool is None or pool == "" or pool in pools:
            return None  # unknown (the API answers 404 itself), in no pool, or one of ours
        return 403, (f"this key serves work pool {_served(pools)} only: flow run {run_id} "
                     f"is in {pool!r}")

    async def _pool(self, run_id: str) -> str | None:
        known = self._known.get(run_id)
        if known is not None:
            return known
        try:
            pool = await self._pool_of(run_id)
        except LookupError as exc:
            raise Unchecked from exc
        if pool is not None:
            if len(self._known) >= CACHE_SIZE:
                self._known.pop(next(iter(self._known)))
            self._known[run_id] = pool
        return pool
