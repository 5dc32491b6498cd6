"""decide(): matching, default deny, path hygiene, secrets in queries, the UI fallback."""

from __future__ import annotations

import pytest

from prefectstack.auth.policy import decide, is_clean, render_markdown, split_uri
from prefectstack.auth.roles import Access, Kind, Role, Rule, compile_pattern


def test_unknown_routes_are_denied_to_everyone() -> None:
    for role in [None, *Role]:
        decision = decide(role, "GET", "/api/not-a-route")
        assert not decision.allowed
        assert decision.rule is None
        assert "default deny" in decision.reason


def test_trailing_slash_and_query_do_not_change_the_match() -> None:
    assert decide(Role.DEVELOPER, "POST", "/api/flows").allowed
    assert decide(Role.DEVELOPER, "POST", "/api/flows/").allowed
    assert decide(Role.VIEWER, "POST", "/api/flow_runs/filter?limit=5").allowed


def test_head_is_judged_as_get() -> None:
    assert decide(Role.VIEWER, "HEAD", "/api/flows/abc").allowed
    assert not decide(None, "HEAD", "/api/flows/abc").allowed


def test_methods_without_rows_are_denied() -> None:
    assert not decide(Role.ADMIN, "OPTIONS", "/api/flows/filter").allowed
    assert not decide(Role.ADMIN, "TRACE", "/api/health").allowed


@pytest.mark.parametrize(
    "uri",
    [
        "/api/health/../flows/",
        "/api/./flows/filter",
        "/api//flows/filter",
        "/api/health/%2e%2e/flows",
        "/api/flows\\x",
        "/api/flows/%0a",
    ],
)
def test_unnormalized_paths_are_denied(uri: str) -> None:
    assert not decide(Role.ADMIN, "GET", uri).allowed


def test_path_is_decoded_once_like_the_upstream_does() -> None:
    assert split_uri("/api/variables/name/a%20b?x=1") == ("/api/variables/name/a b", "x=1")
    assert is_clean("/api/flows/")
    assert not is_clean("api/flows")


def test_secrets_in_the_query_need_developer_or_worker() -> None:
    uri = "/api/block_documents/abc?include_secrets=true"
    assert not decide(Role.VIEWER, "GET", uri).allowed
    assert not decide(Role.OPERATOR, "GET", uri).allowed
    assert decide(Role.DEVELOPER, "GET", uri).allowed
    assert decide(Role.WORKER, "GET", uri).allowed
    # anything but a clear false counts as asking
    assert not decide(Role.VIEWER, "GET", "/api/block_documents/abc?include_secrets=").allowed
    assert not decide(Role.VIEWER, "GET", "/api/block_documents/abc?include_secrets=1").allowed
    assert decide(Role.VIEWER, "GET", "/api/block_documents/abc?include_secrets=false").allowed


def test_reading_secret_values_is_audited_even_when_allowed() -> None:
    worker = decide(Role.WORKER, "GET", "/api/block_documents/abc?include_secrets=true")
    assert worker.allowed and worker.audited and "with secrets" in worker.reason
    plain = decide(Role.WORKER, "GET", "/api/block_documents/abc")
    assert plain.allowed and not plain.audited


def test_the_ui_needs_a_signed_in_person() -> None:
    for path in ["/", "/dashboard", "/assets/index.js", "/ui-settings", "/v2/runs"]:
        assert not decide(None, "GET", path).allowed
        assert decide(Role.VIEWER, "GET", path).allowed
        assert not decide(Role.WORKER, "GET", path).allowed
    assert not decide(Role.ADMIN, "POST", "/dashboard").allowed


def test_the_ui_fallback_never_covers_api_or_auth_paths() -> None:
    assert decide(Role.VIEWER, "GET", "/api/unknown").rule is None
    assert decide(Role.VIEWER, "GET", "/api").rule is None
    assert decide(Role.VIEWER, "GET", "/auth/verify").rule is None
    assert decide(Role.VIEWER, "GET", "/apiary").allowed  # only the /api segment is special


def test_sign_in_pages_are_public() -> None:
    assert decide(None, "GET", "/auth/login?next=/").allowed
    assert decide(None, "POST", "/auth/login").allowed
    assert decide(None, "POST", "/auth/logout").allowed


def test_flow_files_are_readable_by_workers() -> None:
    # the edge serves them at /flow-files/ (the row once said /flows/, the UI's own page)
    assert decide(Role.WORKER, "GET", "/flow-files/etl/main.py").allowed
    assert decide(Role.VIEWER, "GET", "/flow-files/etl/main.py").allowed
    assert not decide(None, "GET", "/flow-files/etl/main.py").allowed
    assert not decide(Role.WORKER, "GET", "/flows/etl").allowed  # the UI page: people only



def test_when_two_templates_match_the_stricter_decides() -> None:
    rules = [
        Rule("GET", "/api/things/{id}/extra", Access.VIEWER, Kind.READ),
        Rule("GET", "/api/things/name/{name}", Access.ADMIN, Kind.READ),
    ]
    decision = decide(Role.VIEWER, "GET", "/api/things/name/extra", rules)
    assert not decision.allowed
    assert decision.rule is rules[1]
    assert decide(Role.ADMIN, "GET", "/api/things/name/extra", rules).allowed


def test_patterns() -> None:
    assert compile_pattern("/a/{id}/b").fullmatch("/a/x/b")
    assert not compile_pattern("/a/{id}/b").fullmatch("/a/x/y/b")
    assert compile_pattern("/f/{p:path}").fullmatch("/f/x/y.py")
    ui = compile_pattern("/{p:ui}")
    assert ui.fullmatch("/") and ui.fullmatch("/runs/flow-run/1")
    assert not ui.fullmatch("/api/x") and not ui.fullmatch("/auth") and not ui.fullmatch("/api")


def test_decisions_say_why() -> None:
    decision = decide(Role.VIEWER, "POST", "/api/deployments/")
    assert decision.reason == "viewer may not POST /api/deployments/: needs developer"
    assert decision.audited
    assert not decide(Role.VIEWER, "POST", "/api/flows/filter").audited
    assert decide(Role.OPERATOR, "POST", "/api/deployments/x/create_flow_run").audited
    assert not decide(Role.WORKER, "POST", "/api/logs/").audited  # telemetry


def test_markdown_lists_every_rule() -> None:
    text = render_markdown()
    assert "| POST | `/api/flow_runs/filter` | viewer | read | yes |" in text
    assert "| GET | `/api/health` | anyone | read | yes | liveness probe |" in text
    assert "(fallback)" in text


def test_the_role_table_is_monotonic() -> None:
    """What a role may do, every role above it may do too, for every route and with secrets
    asked for or not (so a viewer's clean walk of the UI speaks for the roles above it)."""
    from prefectstack.auth.routes import RULES

    ladder = [Role.VIEWER, Role.OPERATOR, Role.DEVELOPER, Role.ADMIN]
    for rule in RULES:
        path = rule.pattern.replace("{", "").replace("}", "").replace(":path", "").replace(
            ":ui", "")
        for query in ("", "?include_secrets=true"):
            allowed = [decide(role, rule.method, path + query).allowed for role in ladder]
            assert allowed == sorted(allowed), (rule.method, rule.pattern, query, allowed)
