"""The edge end to end: real Caddy, the real auth service and real Prefect API processes."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefectstack.auth.policy import decide
from prefectstack.auth.roles import Role
from prefectstack.auth.store import Store

from .conftest import cli, direct_api, free_port, stack_yaml, wait_for

pytestmark = pytest.mark.integration

FAKE_ID = "00000000-0000-4000-8000-000000000000"
# An admin call with an empty body is harmless everywhere but here: an empty bulk_delete
# filter matches everything, and the database admin routes drop or clear the database.
NEVER_CALL = re.compile(r"^/api/admin/database/|/bulk_delete$")


class Edge:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: dict[str, int] = json.loads((root / "ports.json").read_text())
        self.base = f"https://localhost:{self.ports['https']}"
        self.ca = str(root / "state" / "ca.crt")
        self.keys: dict[str, str] = {}

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, verify=ssl.create_default_context(cafile=self.ca),
                            headers=headers, timeout=30, **kwargs)

    def key(self, role: str) -> str:
        if role not in self.keys:
            out = cli("keys", "create", f"test-{role}", "--role", role, cwd=self.root).stdout
            self.keys[role] = out.strip().splitlines()[-1]
        return self.keys[role]

    def audit(self, *args: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = json.loads(
            cli("audit", "--json", *args, cwd=self.root).stdout
        )
        return records


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    root = tmp_path_factory.mktemp("edge")
    ports = {k: free_port() for k in ("pg", "redis", "api", "worker", "https", "http", "auth")}
    (root / "stack.yaml").write_text(stack_yaml(**ports).replace("interval_seconds: 3600",
                                                                  "interval_seconds: 86400"))
    (root / "ports.json").write_text(json.dumps(ports))
    try:
        up = cli("up", "--detach", cwd=root)
        assert "password (shown this once)" in up.stdout
        yield Edge(root)
    finally:
        cli("down", cwd=root, check=False, timeout=120)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", FAKE_ID, path)


def openapi_routes(edge: Edge) -> list[tuple[str, str]]:
    doc = httpx.get(f"{direct_api(edge.root, edge.ports['api'])}/openapi.json", timeout=30).json()
    return sorted(
        (method.upper(), "/api" + path if not path.startswith("/api") else path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )


def test_tls_validates_against_the_exported_ca_only(edge: Edge) -> None:
    with edge.client() as client:
        assert client.get("/api/health").json() is True
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{edge.base}/api/health", verify=ssl.create_default_context(), timeout=10)


def test_plain_http_redirects_to_https(edge: Edge) -> None:
    response = httpx.get(f"http://localhost:{edge.ports['http']}/dashboard?x=1", timeout=10)
    assert response.status_code == 308
    assert response.headers["location"] == f"{edge.base}/dashboard?x=1"


def test_security_headers_and_compression(edge: Edge) -> None:
    with edge.client(edge.key("viewer")) as client:
        response = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert "max-age=31536000" in response.headers["strict-transport-security"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers.get("content-encoding") == "gzip"


def test_operator_runs_a_deployment_through_the_edge_and_viewer_cannot(edge: Edge) -> None:
    with edge.client(edge.key("viewer")) as viewer:
        deployment = viewer.get("/api/deployments/name/shell-command/shell").json()
        refused = viewer.post(f"/api/deployments/{deployment['id']}/create_flow_run", json={})
    assert refused.status_code == 403
    with edge.client(edge.key("operator")) as operator:
        run = operator.post(
            f"/api/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"args": ["through-the-edge"]}},
        ).raise_for_status().json()

        def done() -> str | None:
            state = operator.get(f"/api/flow_runs/{run['id']}").json()["state"]
            return state["type"] if state["type"] in ("COMPLETED", "FAILED", "CRASHED") else None

        assert wait_for(done, 180, "the run through the edge", interval=1) == "COMPLETED"
    operator_prefix = edge.key("operator")[:12]
    trigger = [r for r in edge.audit("--user", f"key:{operator_prefix}")
               if r["path"].endswith("/create_flow_run")]
    assert trigger and trigger[0]["status"] == 200 and trigger[0]["role"] == "operator"
    denied = [r for r in edge.audit("--user", f"key:{edge.key('viewer')[:12]}")
              if r["path"].endswith("/create_flow_run")]
    assert denied and denied[0]["status"] == 403
    # the stack's own worker polled and reported through the edge with its worker key
    assert any(r["role"] == "worker" for r in edge.audit("--since", "1h"))


def test_only_probes_answer_without_credentials(edge: Edge) -> None:
    routes = openapi_routes(edge)
    assert len(routes) > 150
    wrong = []
    with edge.client() as client:
        for method, path in routes:
            if NEVER_CALL.search(path):
                continue
            status = client.request(method, concrete(path)).status_code
            public = path in ("/api/health", "/api/ready")
            if (status == 401) == public:
                wrong.append(f"{method} {path} -> {status}")
        ui = client.get("/deployments", headers={"Accept": "text/html"})
    assert wrong == []
    assert ui.status_code == 302 and ui.headers["location"].startswith("/auth/login")


def test_the_ui_is_not_asked_for_the_apis_own_password(edge: Edge) -> None:
    """The API processes demand Prefect's server auth string, which makes their UI settings
    say `auth: BASIC` (the UI would then ask for that password). Through the edge, signed
    in, the UI gets the settings without it, and the API itself still answers only with
    the string (which the edge adds to requests it let through)."""
    with edge.client(edge.key("viewer")) as client:
        settings = client.get("/ui-settings")
        flows = client.post("/api/flows/filter", json={})
        server = client.get("/api/admin/settings")
    # The server's settings (the UI shows them to viewers) without a credential in them.
    assert server.status_code == 200, server.text
    assert server.json()["server"]["docket"]["url"].startswith("redis://:********@")
    secrets = json.loads((edge.root / "state" / "secrets.json").read_text())
    assert not [name for name, value in secrets.items() if value in server.text]
    assert settings.status_code == 200 and settings.json()["auth"] is None
    assert settings.json()["api_url"] == f"{edge.base}/api"
    assert flows.status_code == 200
    direct = httpx.get(f"http://127.0.0.1:{edge.ports['api']}/ui-settings", timeout=10).json()
    assert direct["auth"] == "BASIC"


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_every_route_answers_as_the_role_table_says(edge: Edge, role: str) -> None:
    """The real edge enforces the table route by route (the table itself is tested against
    Prefect's OpenAPI document in tests/unit/test_auth_routes.py)."""
    wrong, refused = [], 0
    with edge.client(edge.key(role)) as client:
        for method, path in openapi_routes(edge):
            if NEVER_CALL.search(path):
                continue
            uri = concrete(path)
            status = client.request(method, uri).status_code
            allowed = decide(Role(role), method, uri).allowed
            if allowed and status in (401, 403):
                wrong.append(f"{method} {path}: allowed by the table, got {status}")
            if not allowed:
                refused += 1
                if status != 403:
                    wrong.append(f"{method} {path}: refused by the table, got {status}")
    assert wrong == []
    if role == "admin":
        assert refused == 0
    else:
        assert refused > 50  # every mutating route


def test_revoked_key_stops_at_once_and_expired_key_is_refused(edge: Edge) -> None:
    key = cli("keys", "create", "short-lived", "--role", "viewer",
              cwd=edge.root).stdout.strip().splitlines()[-1]
    with edge.client(key) as client:
        assert client.post("/api/flows/filter", json={}).status_code == 200
        cli("keys", "revoke", key[:12], cwd=edge.root)
        assert client.post("/api/flows/filter", json={}).status_code == 401
    store = Store(edge.root / "state" / "data" / "auth")
    try:
        expired = store.create_key("expired", Role.VIEWER, expires_at=time.time() - 1)
    finally:
        store.close()
    with edge.client(expired) as client:
        assert client.post("/api/flows/filter", json={}).status_code == 401
    listed = json.loads(cli("keys", "list", "--json", cwd=edge.root).stdout)
    assert {k["prefix"]: k["revoked_at"] is not None for k in listed}[key[:12]] is True
    assert key not in json.dumps(listed)  # never the key itself


def test_basic_auth_string_with_a_key_is_accepted(edge: Edge) -> None:
    key = edge.key("viewer")
    with edge.client(auth=("ci", key)) as client:
        assert client.post("/api/flows/filter", json={}).status_code == 200


def test_failed_sign_ins_are_slowed_then_refused(edge: Edge) -> None:
    cli("users", "add", "mallory", "--role", "viewer", cwd=edge.root)
    statuses = []
    with edge.client(follow_redirects=False) as client:
        for _ in range(6):
            response = client.post(
                "/auth/login", data={"username": "mallory", "password": "wrong-password-123"},
                headers={"Origin": edge.base},
            )
            statuses.append(response.status_code)
    assert 429 in statuses, statuses
    throttled = statuses.index(429)
    assert throttled >= 3 and all(s != 303 for s in statuses)
    # The refusals are audited: one by one while the anonymous budget lasts (earlier tests
    # of this module may have spent it), else counted into a summary line, written before
    # the next line that isn't one (a change, made here).
    def audited() -> bool:
        with edge.client(edge.key("developer")) as client:
            client.post("/api/variables/", json={"name": f"flush-{time.time_ns()}",
                                                 "value": "x"}).raise_for_status()
        records = edge.audit("--since", "1h")
        return any(r["path"] == "/auth/login" and r["status"] == 429 for r in records) or any(
            r["path"] == "(anonymous refusals, counted)" and "429 x" in (r["reason"] or "")
            for r in records)

    wait_for(audited, 30, "the throttled sign-ins in the audit log", interval=2)


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and playwright (see scripts/test.sh)")
        pytest.skip("needs Debian's chromium and the playwright package")
    return sync_playwright


def _quick_run_as(edge: Edge, page: Any, user: str, password: str) -> int:
    """Sign in, open the hello deployment, click Run > Quick run; the API's answer."""
    page.set_default_timeout(120_000)  # a 2-core machine under load renders slowly
    page.goto(f"{edge.base}/deployments")
    assert "/auth/login" in page.url  # not signed in: the sign-in page, not the UI
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/deployments")
    try:
        page.get_by_role("link", name="hello", exact=True).first.click()
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"failed-{user}.png"))
        raise
    page.wait_for_load_state("networkidle")
    page.get_by_text("Deployment ID").first.wait_for()
    page.locator("button", has_text="Run").first.click()
    with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as answer:
        page.get_by_text("Quick run", exact=True).first.click()
    return int(answer.value.status)


def test_browser_signs_in_and_runs_as_operator_refused_as_viewer(edge: Edge) -> None:
    sync_playwright = _browser_or_skip()
    cli("users", "add", "olivia", "--role", "operator", "--password-stdin", cwd=edge.root,
        input_text="operator-password-1\n")
    cli("users", "add", "victor", "--role", "viewer", "--password-stdin", cwd=edge.root,
        input_text="viewer-password-12\n")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            operator = browser.new_context(ignore_https_errors=True,
                                           viewport={"width": 1400, "height": 900})
            page = operator.new_page()
            page.goto(f"{edge.base}/dashboard")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(ARTIFACTS / "sign-in.png"))
            assert _quick_run_as(edge, page, "olivia", "operator-password-1") == 201
            page.get_by_text("scheduled to start").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "operator-quick-run.png"))
            page.goto(f"{edge.base}/dashboard")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            viewer = browser.new_context(ignore_https_errors=True,
                                         viewport={"width": 1400, "height": 900})
            vpage = viewer.new_page()
            assert _quick_run_as(edge, vpage, "victor", "viewer-password-12") == 403
            vpage.wait_for_timeout(1000)  # let the UI show its error before the screenshot
            vpage.screenshot(path=str(ARTIFACTS / "viewer-refused.png"))
        finally:
            browser.close()
    runs = [r for r in edge.audit("--user", "olivia") if r["path"].endswith("/create_flow_run")]
    assert [r["status"] for r in runs] == [200]
    refused = [r for r in edge.audit("--user", "victor") if r["path"].endswith("/create_flow_run")]
    assert [r["status"] for r in refused] == [403]


def ui_pages() -> list[str]:
    """Every page of Prefect's UI without a parameter in its path, read from the router in
    the UI bundle that this Prefect serves: the segments that are routes of their own
    (`workspace.<segment>`, or `settings`), not children like `catalog` or `create`."""
    import prefect

    assets = Path(prefect.__file__).parent / "server" / "ui" / "assets"
    bundle = "".join(f.read_text(errors="replace") for f in assets.glob("*.js"))
    segments = set(re.findall(r"path:`([a-z][a-z-]*)`", bundle))
    pages = sorted(s for s in segments
                   if f"name:`workspace.{s}`" in bundle or f"name:`{s}`" in bundle)
    # the walk must not pass because the bundle changed shape and nothing was found
    assert {"dashboard", "deployments", "blocks", "events", "settings"} <= set(pages), pages
    return pages


def _sign_in(edge: Edge, page: Any, user: str, password: str) -> None:
    page.set_default_timeout(120_000)  # a 2-core machine under load renders slowly
    page.goto(f"{edge.base}/dashboard")
    assert "/auth/login" in page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/dashboard"), page.url


def test_every_ui_page_works_for_every_role(edge: Edge) -> None:
    """The roles walk the UI's pages: no API read a page makes is refused or fails, and no
    page shows Prefect's "Something went wrong" (issue 9: the role table as each role
    really uses the UI). The UI makes the same reads whatever the role, and what a role may
    do its betters may too (test_auth_policy.py: the role table is monotonic), so the viewer
    walks every page; the other roles sign in and see the dashboard."""
    sync_playwright = _browser_or_skip()
    pages = ui_pages()
    problems: dict[str, list[str]] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for role in ("viewer", "operator", "developer", "admin"):
                user, password = f"walk-{role}", f"walk-{role}-password-1"
                cli("users", "add", user, "--role", role, "--password-stdin", cwd=edge.root,
                    input_text=password + "\n")
                context = browser.new_context(ignore_https_errors=True,
                                              viewport={"width": 1400, "height": 900})
                page = context.new_page()
                _sign_in(edge, page, user, password)
                failed: list[str] = []
                page.on("response", lambda r, failed=failed: failed.append(
                    f"{r.status} {r.request.method} {r.url.split('/api', 1)[-1]}")
                    if "/api/" in r.url and r.status >= 400 else None)
                for name in pages if role == "viewer" else ["dashboard"]:
                    failed.clear()
                    page.goto(f"{edge.base}/{name}")
                    page.wait_for_load_state("networkidle")
                    text = page.inner_text("body")
                    if "Something went wrong" in text:
                        failed.append("the page says: Something went wrong")
                    if failed:
                        problems[f"{role} /{name}"] = sorted(set(failed))
                        page.screenshot(path=str(ARTIFACTS / f"walk-{role}-{name}.png"))
                context.close()
        finally:
            browser.close()
    assert problems == {}, json.dumps(problems, indent=1)


def test_deploy_plan_targets_the_stack_through_the_edge(edge: Edge) -> None:
    """Without --server, `deploy` uses this stack's edge with its developer key and CA."""
    result = cli("deploy", "plan", "--json", "--detailed-exitcode", cwd=edge.root, check=False)
    assert result.returncode == 0, result.stdout + result.stderr  # nothing declared, no changes
    assert "Traceback" not in result.stderr


def test_joined_worker_runs_a_flow_talking_only_through_the_edge(edge: Edge) -> None:
    """`prefectstack worker join` as a separate process with its own PREFECT_HOME and a
    worker key, verifying the edge's TLS with the exported CA."""
    admin = edge.key("admin")
    with edge.client(admin) as client:
        hello = client.get("/api/deployments/name/hello/hello").raise_for_status().json()
        client.post("/api/work_pools/", json={
            "name": "joined-pool", "type": "process",
            "base_job_template": client.get("/api/work_pools/itest-pool").json()[
                "base_job_template"],
        }).raise_for_status()
        deployment = client.post("/api/deployments/", json={
            "name": "joined", "flow_id": hello["flow_id"], "work_pool_name": "joined-pool",
            "entrypoint": hello["entrypoint"], "path": hello["path"],
            "pull_steps": hello["pull_steps"], "parameters": {"name": "joined worker"},
        }).raise_for_status().json()
    worker_key = cli("keys", "create", "laptop", "--role", "worker",
                     cwd=edge.root).stdout.strip().splitlines()[-1]
    health = free_port()
    home = edge.root / "joined-home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefectstack", "worker", "join", "--server", edge.base,
         "--key", worker_key, "--pool", "joined-pool", "--ca", edge.ca,
         "--name", "laptop", "--health-port", str(health), "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        start_new_session=True,
    )
    try:
        wait_for(lambda: _healthy(health), 120, "the joined worker's health endpoint")
        with edge.client(admin) as client:
            run = client.post(f"/api/deployments/{deployment['id']}/create_flow_run",
                              json={}).raise_for_status().json()

            def done() -> dict[str, Any] | None:
                found: dict[str, Any] = client.get(f"/api/flow_runs/{run['id']}").json()
                final = found["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
                return found if final else None

            finished = wait_for(done, 180, "the joined worker's run", interval=1)
        assert finished["state"]["type"] == "COMPLETED"
    finally:
        ran_until_stopped = proc.poll() is None
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    # The process we started is the worker that took the run: it stayed up until we stopped
    # it, joined our pool at the edge's address, and Prefect's worker named `laptop` (not a
    # worker of the stack's own) submitted this very run.
    assert ran_until_stopped, out[-3000:]
    assert f"worker laptop joining pool joined-pool at {edge.base}/api" in out, out[-3000:]
    assert "Worker 'laptop' started!" in out, out[-3000:]
    assert f"Worker 'laptop' submitting flow run '{run['id']}'" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    laptop = [r for r in edge.audit("--user", f"key:{worker_key[:12]}")]
    assert laptop and all(r["role"] == "worker" for r in laptop)  # through the edge, as worker
    # ... and it reported the run's states through the edge with its own key
    reported = {r["path"] for r in laptop if r["method"] == "POST" and r["status"] == 200}
    assert f"/api/flow_runs/{run['id']}/set_state" in reported, sorted(reported)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
