"""Writes whose body decides the role they need (pure).

`forward_auth` sees a request's method, path and query, never its body. Two kinds of body
reach past what the route table can say about the path alone:

- `job_variables` on a new flow run override the deployment's infrastructure (for a process
  worker: the command line, the environment, the working directory). Running a deployment
  with parameters is an operator's job; changing what the worker executes is a developer's.
- `PATCH /api/flow_runs/{id}` can rewrite any run's parameters and job variables. A worker
  key (and the flow runs it starts, which use the same key) may set only what Prefect's
  process worker and flow engine send there: the infrastructure pid (the worker), the run's
  name, flow version and retry policy (the engine, as the run starts).

The edge sends these routes to the auth service (topology/caddyfile.py), which judges the
request as `forward_auth` would, then the body with `check`, and proxies what passes
(auth/guard.py). Should such a request reach `forward_auth` anyway (a path the edge's matcher
did not route to the check), `needs_body_check` makes it refuse every role the body could
make a difference for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefectstack.auth.roles import Access, Role, compile_pattern, normalize, reaches

# Who may send any body: at this rung a body changes nothing about what the role may do.
UNCHECKED_ACCESS = Access.DEVELOPER

# The fields of FlowRunUpdate a worker key may set (prefect 3.8.8): `infrastructure_pid`
# (workers/base.py, once the process started), `name` (flow_engine.py, set_flow_run_name for
# a templated run name), `flow_version` and `empirical_policy` (flow_engine.py, the flow's
# version and retry settings as the run begins).
WORKER_RUN_FIELDS = frozenset({"infrastructure_pid", "name", "flow_version", "empirical_policy"})

Check = Callable[[Role, Any], "str | None"]


def _who(role: Role) -> str:
    return role.value


def _overrides_infrastructure(item: Any) -> bool:
    return isinstance(item, dict) and bool(item.get("job_variables"))


def _object(body: Any) -> str | None:
    return None if isinstance(body, dict) else "the body must be a JSON object"


def check_run_from_deployment(role: Role, body: Any) -> str | None:
    """`POST /api/deployments/{id}/create_flow_run`: parameters yes, job_variables no."""
    if (wrong := _object(body)) is not None:
        return wrong
    if _overrides_infrastructure(body):
        return (f"{_who(role)} may not override job_variables on a run: "
                f"needs {UNCHECKED_ACCESS.value}")
    return None


def check_runs_from_deployment(role: Role, body: Any) -> str | None:
    """The bulk form: a list of what `check_run_from_deployment` checks."""
    if not isinstance(body, list):
        return "the body must be a JSON array"
    for item in body:
        if (wrong := check_run_from_deployment(role, item)) is not None:
            return wrong
    return None


def check_new_run(role: Role, body: Any) -> str | None:
    """`POST /api/flow_runs/`: a worker's flow runs create subflow runs, which carry no
    job_variables; one that does would have a worker run a deployment its own way."""
    if (wrong := _object(body)) is not None:
        return wrong
    if _overrides_infrastructure(body):
        return f"{_who(role)} may not create a run with job_variables: needs " \
               f"{UNCHECKED_ACCESS.value}"
    return None


def check_run_update(role: Role, body: Any) -> str | None:
    """`PATCH /api/flow_runs/{id}`: a worker sets only WORKER_RUN_FIELDS."""
    if (wrong := _object(body)) is not None:
        return wrong
    extra = sorted(set(body) - WORKER_RUN_FIELDS)
    if extra:
        return (f"{_who(role)} may not change {', '.join(extra)} of a flow run: "
                f"needs {UNCHECKED_ACCESS.value}")
    return None


_FALSE_BODY_VALUES = (None, False, 0, "", "0", "false", "f", "no", "n", "off")


BLOCK_LIST = "/api/block_documents/filter"


def asks_for_secrets(body: Any) -> bool:
    """The block list's body asks for secret values (`include_secrets`, as Prefect reads it)."""
    if not isinstance(body, dict):
        return False
    wants = body.get("include_secrets")
    if isinstance(wants, str):
        wants = wants.strip().lower()
    return wants not in _FALSE_BODY_VALUES


def check_block_list(role: Role, body: Any) -> str | None:
    """`POST /api/block_documents/filter`: the block list (the UI's Blocks and Event Feed
    pages) for every role, with secret values (`include_secrets`, which Prefect reads from
    the body and otherwise obfuscates) only for a worker key: `Block.load()`."""
    if (wrong := _object(body)) is not None:
        return wrong
    if not asks_for_secrets(body) or role is Role.WORKER:
        return None
    return f"{_who(role)} may not read secrets: needs {UNCHECKED_ACCESS.value}"


@dataclass(frozen=True)
class BodyRule:
    method: str
    pattern: str
    check: Check
    note: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_pattern(normalize(self.pattern)))

    def matches(self, method: str, path: str) -> bool:
        return method.upper() == self.method and self.regex.fullmatch(normalize(path)) is not None


BODY_RULES: tuple[BodyRule, ...] = (
    BodyRule("POST", BLOCK_LIST, check_block_list,
             "`include_secrets` needs developer (or a worker key)"),
    BodyRule("POST", "/api/deployments/{id}/create_flow_run", check_run_from_deployment,
             "non-empty `job_variables` needs developer"),
    BodyRule("POST", "/api/deployments/{id}/create_flow_run/bulk", check_runs_from_deployment,
             "non-empty `job_variables` in any item needs developer"),
    BodyRule("POST", "/api/flow_runs/", check_new_run,
             "non-empty `job_variables` needs developer (a worker's subflows carry none)"),
    BodyRule("PATCH", "/api/flow_runs/{id}", check_run_update,
             "a worker may set only " + ", ".join(f"`{f}`" for f in sorted(WORKER_RUN_FIELDS))),
)


def body_rule(method: str, path: str) -> BodyRule | None:
    """The body rule for a request's method and (decoded) path, if any."""
    return next((r for r in BODY_RULES if r.matches(method, path)), None)


def needs_body_check(role: Role | None, method: str, path: str) -> BodyRule | None:
    """The body rule that must judge this request's body, or None when the body cannot
    change whether `role` may make it."""
    rule = body_rule(method, path)
    if rule is None or role is None or reaches(role, UNCHECKED_ACCESS):
        return None
    return rule
