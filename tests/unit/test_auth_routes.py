"""The route table against Prefect's real API, route by route.

Prefect's OpenAPI document and route list are built offline in a subprocess (its own
PREFECT_HOME and a SQLite URL that is never opened: creating the app starts no services).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefectstack.auth.bodies import body_rule, needs_body_check
from prefectstack.auth.policy import decide, matching_rules, render_markdown
from prefectstack.auth.roles import Access, Kind, Role
from prefectstack.auth.routes import RULES

ROOT = Path(__file__).resolve().parents[2]

_DUMP = """
import json
from prefect.server.api.server import create_api_app
from starlette.routing import WebSocketRoute

def walk(routes, prefix=""):
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # fastapi's included router: routes carry their prefix
            yield from walk(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, WebSocketRoute) or type(route).__name__.endswith("WebSocketRoute"):
            yield "GET", prefix + route.path
        else:
            for method in getattr(route, "methods", None) or ():
                yield method, prefix + route.path

app = create_api_app()
print(json.dumps({"openapi": app.openapi(), "routes": sorted(set(walk(app.routes)))}))
"""


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/never.db",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DUMP], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


@pytest.fixture(scope="module")
def operations(prefect_api: dict[str, object]) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, as the edge sees it (under /api)."""
    spec = prefect_api["openapi"]
    assert isinstance(spec, dict)
    ops = [
        (method.upper(), "/api" + path)
        for path, methods in spec["paths"].items()
        for method in methods
    ]
    assert len(ops) > 150, "the OpenAPI document looks truncated"
    return sorted(ops)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "sample-value", path)


# Reads by their shape, independently of the table: GET, and the POST verbs Prefect reads with.
READ_POST_SUFFIXES = {
    "filter", "count", "paginate", "history", "lateness", "next-runs", "count-deployments",
    "count-task-runs", "counts", "concurrency_status", "validate",
}  # fmt: skip


def is_read(method: str, path: str) -> bool:
    if method == "GET":
        return True
    segments = [s for s in path.split("/") if s]
    static = [s for s in segments if not s.startswith("{")]
    return method == "POST" and (static[-1] in READ_POST_SUFFIXES or "count-by" in segments)


# Reads a viewer is refused on purpose (see the notes in routes.py).
VIEWER_DENIED_READS = {
    ("POST", "/api/templates/validate"),  # renders templates: an authoring tool
    ("POST", "/api/automations/templates/validate"),
}

PROBES = {("GET", "/api/health"), ("GET", "/api/ready")}


def test_every_route_is_classified(operations: list[tuple[str, str]]) -> None:
    unclassified = [f"{m} {p}" for m, p in operations if not matching_rules(m, concrete(p))]
    assert unclassified == [], (
        "add these Prefect routes to src/prefectstack/auth/routes.py:\n  "
        + "\n  ".join(unclassified)
    )


def test_every_route_outside_the_document_is_classified(prefect_api: dict[str, object]) -> None:
    """Websockets (events, logs, worker channel, task subscriptions) and the docs pages."""
    routes = prefect_api["routes"]
    assert isinstance(routes, list)
    unclassified = [f"{m} {p}" for m, p in routes if not matching_rules(m, concrete("/api" + p))]
    assert unclassified == []


def test_every_route_is_its_own_row(operations: list[tuple[str, str]]) -> None:
    """Each route is named in the table, not caught by a neighbour's template."""
    rows = {(r.method, r.pattern.rstrip("/")) for r in RULES}
    missing = [f"{m} {p}" for m, p in operations if (m, p.rstrip("/")) not in rows]
    assert missing == []


def test_every_api_row_is_a_real_route(prefect_api: dict[str, object]) -> None:
    routes = prefect_api["routes"]
    assert isinstance(routes, list)
    real = {(m, re.sub(r"\{([a-z_]+):[a-z]+\}", r"{\1}", p).rstrip("/")) for m, p in routes}
    real |= {("GET", "/static/{file:path}"), ("GET", "/metrics")}  # a mount; opt-in metrics
    stale = [
        f"{r.method} {r.pattern}"
        for r in RULES
        if r.pattern.startswith("/api/")
        and (r.method, r.pattern.removeprefix("/api").rstrip("/")) not in real
    ]
    assert stale == [], "rows for routes Prefect does not have"


def test_anonymous_reaches_only_the_probes(operations: list[tuple[str, str]]) -> None:
    allowed = {(m, p) for m, p in operations if decide(None, m, concrete(p)).allowed}
    assert allowed == PROBES


def test_viewer_reads_and_changes_nothing(operations: list[tuple[str, str]]) -> None:
    wrong = []
    for method, path in operations:
        allowed = decide(Role.VIEWER, method, concrete(path)).allowed
        expected = is_read(method, path) and (method, path) not in VIEWER_DENIED_READS
        if allowed != expected:
            wrong.append(f"{method} {path}: viewer {'allowed' if allowed else 'denied'}")
    assert wrong == []


def test_kind_agrees_with_the_shape_of_the_route(operations: list[tuple[str, str]]) -> None:
    wrong = []
    for method, path in operations:
        (rule,) = matching_rules(method, concrete(path))
        if (rule.kind is Kind.READ) != is_read(method, path):
            wrong.append(f"{method} {path} is {rule.kind.value}")
    assert wrong == []


def test_admin_passes_everywhere(operations: list[tuple[str, str]]) -> None:
    denied = [f"{m} {p}" for m, p in operations if not decide(Role.ADMIN, m, concrete(p)).allowed]
    assert denied == []


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    [
        (Role.OPERATOR, "POST", "/api/deployments/{id}/create_flow_run", True),
        (Role.OPERATOR, "POST", "/api/flow_runs/{id}/set_state", True),
        (Role.OPERATOR, "POST", "/api/flow_runs/bulk_set_state", True),
        (Role.OPERATOR, "POST", "/api/flow_runs/{id}/resume", True),
        (Role.OPERATOR, "POST", "/api/deployments/{id}/pause_deployment", True),
        (Role.OPERATOR, "POST", "/api/deployments/{id}/resume_deployment", True),
        (Role.OPERATOR, "PATCH", "/api/deployments/{id}/schedules/{schedule_id}", True),
        (Role.OPERATOR, "POST", "/api/deployments/", False),
        (Role.OPERATOR, "DELETE", "/api/flow_runs/{id}", False),
        (Role.OPERATOR, "PATCH", "/api/variables/name/{name}", False),
        (Role.DEVELOPER, "POST", "/api/deployments/", True),
        (Role.DEVELOPER, "DELETE", "/api/flows/{id}", True),
        (Role.DEVELOPER, "POST", "/api/block_documents/", True),
        (Role.DEVELOPER, "PATCH", "/api/variables/name/{name}", True),
        (Role.DEVELOPER, "POST", "/api/work_pools/", True),
        (Role.DEVELOPER, "DELETE", "/api/work_pools/{work_pool_name}/queues/{name}", True),
        (Role.DEVELOPER, "POST", "/api/automations/", True),
        (Role.DEVELOPER, "POST", "/api/v2/concurrency_limits/", True),
        (Role.DEVELOPER, "PUT", "/api/admin/storage", False),
        (Role.DEVELOPER, "POST", "/api/block_types/install_system_block_types", False),
    ],
)
def test_the_ladder(role: Role, method: str, path: str, allowed: bool) -> None:
    assert decide(role, method, concrete(path)).allowed is allowed


# Exactly what `prefect worker start --pool P` (process type) and the flow runs it starts
# call, read from prefect 3.8.8: workers/base.py and _worker_channel (pool, heartbeat, poll,
# run states), runner/ and _internal/observers.py (cancellation via events/out),
# flow_engine.py and task_engine.py (states, subflows, task runs, labels, names), logging,
# events, artifacts.py, variables.py, blocks/core.py (Block.load with secrets),
# concurrency/ (v1 tags, v2 leases), flow_runs.py (pause/resume, run inputs),
# deployments/flow_runs.py (run_deployment) and the client's version and CSRF checks.
WORKER_CALLS = {
    # cli/_worker_utils.py::_check_work_queues_paused, at `prefect worker start`
    ("POST", "/api/work_pools/{work_pool_name}/queues/filter"),
    ("GET", "/api/health"), ("GET", "/api/ready"), ("GET", "/api/hello"),
    ("GET", "/api/version"), ("GET", "/api/csrf-token"), ("GET", "/api/admin/version"),
    ("GET", "/api/admin/storage"),
    ("GET", "/api/work_pools/{name}"),
    ("POST", "/api/work_pools/{name}/get_scheduled_flow_runs"),
    ("POST", "/api/work_pools/{work_pool_name}/workers/heartbeat"),
    ("GET", "/api/work_pools/{work_pool_name}/workers/connect"),
    ("GET", "/api/flow_runs/{id}"), ("POST", "/api/flow_runs/filter"),
    ("POST", "/api/flow_runs/"), ("PATCH", "/api/flow_runs/{id}"),
    ("PATCH", "/api/flow_runs/{id}/labels"), ("POST", "/api/flow_runs/{id}/set_state"),
    ("POST", "/api/flow_runs/{id}/resume"), ("POST", "/api/flow_runs/{id}/input"),
    ("POST", "/api/flow_runs/{id}/input/filter"), ("GET", "/api/flow_runs/{id}/input/{key}"),
    ("POST", "/api/task_runs/"), ("GET", "/api/task_runs/{id}"),
    ("PATCH", "/api/task_runs/{id}"), ("POST", "/api/task_runs/filter"),
    ("POST", "/api/task_runs/{id}/set_state"),
    ("GET", "/api/deployments/{id}"),
    ("GET", "/api/deployments/name/{flow_name}/{deployment_name}"),
    ("POST", "/api/deployments/{id}/create_flow_run"),
    ("GET", "/api/flows/{id}"), ("GET", "/api/flows/name/{name}"), ("POST", "/api/flows/"),
    ("POST", "/api/logs/"), ("POST", "/api/events"),
    ("GET", "/api/events/in"), ("GET", "/api/events/out"),
    ("POST", "/api/artifacts/"), ("PATCH", "/api/artifacts/{id}"),
    ("GET", "/api/artifacts/{id}"), ("POST", "/api/artifacts/filter"),
    ("GET", "/api/artifacts/{key}/latest"),
    ("GET", "/api/variables/name/{name}"),
    ("GET", "/api/block_documents/{id}"), ("POST", "/api/block_documents/filter"),
    ("GET", "/api/block_types/slug/{slug}"),
    ("GET", "/api/block_types/slug/{slug}/block_documents"),
    ("GET", "/api/block_types/slug/{slug}/block_documents/name/{block_document_name}"),
    ("GET", "/api/block_schemas/{id}"), ("GET", "/api/block_schemas/checksum/{checksum}"),
    ("POST", "/api/concurrency_limits/increment"), ("POST", "/api/concurrency_limits/decrement"),
    ("GET", "/api/concurrency_limits/tag/{tag}"),
    ("POST", "/api/v2/concurrency_limits/increment"),
    ("POST", "/api/v2/concurrency_limits/increment-with-lease"),
    ("POST", "/api/v2/concurrency_limits/decrement"),
    ("POST", "/api/v2/concurrency_limits/decrement-with-lease"),
    ("POST", "/api/v2/concurrency_limits/leases/{lease_id}/renew"),
    ("GET", "/api/v2/concurrency_limits/{id_or_name}"),
    ("GET", "/flow-files/{file:path}"),
    # events name the run's work queue (prefect.events.related); found by the conformance suite
    ("GET", "/api/work_queues/{id}"),
    # `prefect task serve`: the subscription, and deleting a run it cannot submit
    ("GET", "/api/task_runs/subscriptions/scheduled"), ("DELETE", "/api/task_runs/{id}"),
}  # fmt: skip


def test_worker_rows_are_exactly_the_worker_calls() -> None:
    rows = {(r.method, r.pattern) for r in RULES if r.worker}
    assert rows - WORKER_CALLS == set(), "worker rows nobody listed as a worker call"
    assert WORKER_CALLS - rows == set(), "worker calls without a worker row"


def test_worker_can_make_every_worker_call() -> None:
    refused = [
        f"{m} {p}" for m, p in WORKER_CALLS if not decide(Role.WORKER, m, concrete(p)).allowed
    ]
    assert refused == []


def test_worker_gets_nothing_else(operations: list[tuple[str, str]]) -> None:
    extra = [
        f"{m} {p}"
        for m, p in operations
        if (m, p) not in WORKER_CALLS and decide(Role.WORKER, m, concrete(p)).allowed
    ]
    assert extra == []
    assert not decide(Role.WORKER, "GET", "/dashboard").allowed  # no UI for a machine


def test_no_worker_row_is_admin_only() -> None:
    assert [r.pattern for r in RULES if r.worker and r.access is Access.ADMIN] == []


def test_worker_may_not_manage_pools_deployments_or_blocks() -> None:
    for method, path in [
        ("POST", "/api/work_pools/"),
        ("PATCH", "/api/work_pools/p"),
        ("POST", "/api/deployments/"),
        ("POST", "/api/block_documents/"),
        ("PATCH", "/api/variables/name/v"),
        ("DELETE", "/api/flow_runs/x"),
    ]:
        assert not decide(Role.WORKER, method, path).allowed, (method, path)


def test_docs_table_is_generated_from_the_rules() -> None:
    path = ROOT / "docs" / "auth-roles.md"
    assert path.read_text() == render_markdown(), (
        "regenerate: python -c 'from prefectstack.auth.policy import render_markdown; "
        'open("docs/auth-roles.md", "w").write(render_markdown())\''
    )


BLOCK_LIST = "/api/block_documents/filter"


def test_the_block_list_is_a_viewer_read_whose_body_is_checked_for_secrets() -> None:
    """The UI's Blocks and Event Feed pages list blocks (POST .../filter) for every role;
    Prefect reads `include_secrets` from that body, so the auth service checks it there."""
    for role in (Role.VIEWER, Role.OPERATOR, Role.DEVELOPER, Role.WORKER):
        assert decide(role, "POST", BLOCK_LIST).allowed, role
    rule = body_rule("POST", BLOCK_LIST)
    assert rule is not None
    assert needs_body_check(Role.VIEWER, "POST", BLOCK_LIST) is rule
    assert needs_body_check(Role.WORKER, "POST", BLOCK_LIST) is rule
    assert needs_body_check(Role.DEVELOPER, "POST", BLOCK_LIST) is None
    for role in (Role.VIEWER, Role.OPERATOR):
        allowed: list[dict[str, Any]] = [
            {}, {"include_secrets": False}, {"include_secrets": "false"},
            {"include_secrets": 0}, {"include_secrets": None}, {"limit": 10}]
        for body in allowed:
            assert rule.check(role, body) is None, (role, body)
        refused: list[dict[str, Any]] = [
            {"include_secrets": True}, {"include_secrets": "true"},
            {"include_secrets": 1}, {"include_secrets": "yes"},
            {"include_secrets": " TRUE "}, {"include_secrets": [1]}]
        for body in refused:
            assert "may not read secrets" in (rule.check(role, body) or ""), (role, body)
        assert rule.check(role, [{"include_secrets": True}]) is not None  # not an object
    assert rule.check(Role.WORKER, {"include_secrets": True}) is None  # Block.load()
