"""Decide whether a role may make a request, from the route table alone (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from prefectstack.auth.bodies import BODY_RULES, UNCHECKED_ACCESS
from prefectstack.auth.roles import Access, Kind, Role, Rule, reaches
from prefectstack.auth.routes import RULES, SECRET_ACCESS, SECRET_QUERY_PARAMETERS

_FALSE_VALUES = frozenset({"0", "off", "f", "false", "n", "no"})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule: Rule | None = None  # the deciding rule; None when no rule matched
    reveals_secrets: bool = False  # an allowed read of secret values (`include_secrets`)

    @property
    def audited(self) -> bool:
        """A change that went through, a read of secret values, or anything refused."""
        return (not self.allowed or self.reveals_secrets
                or (self.rule is not None and self.rule.kind is Kind.WRITE))


def split_uri(uri: str) -> tuple[str, str]:
    """The decoded path (as the upstream server will route it) and the raw query."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # `//[...`: no valid authority; kept whole, it is no clean path
        path, _, query = uri.partition("?")
        return unquote(path) or "/", query
    return unquote(parts.path) or "/", parts.query


def is_clean(path: str) -> bool:
    """Refuse paths the upstream might resolve differently from us: dot segments, empty
    segments, backslashes and control characters are never sent by Prefect or the UI."""
    if not path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path):
        return False
    segments = path.split("/")[1:]
    inner = segments[:-1]  # a trailing slash is normal (`/api/flows/`)
    return all(s not in ("", ".", "..") for s in inner) and segments[-1] not in (".", "..")


def _by_method(rules: Sequence[Rule]) -> dict[str, list[Rule]]:
    index: dict[str, list[Rule]] = {}
    for rule in rules:
        index.setdefault(rule.method, []).append(rule)
    return index


_INDEX = _by_method(RULES)  # every request is judged: skip the other methods' rows


def matching_rules(method: str, path: str, rules: Sequence[Rule] = RULES) -> list[Rule]:
    method = method.upper()
    index = _INDEX if rules is RULES else _by_method(rules)
    candidates = index.get("GET" if method == "HEAD" else method, [])
    matched = [r for r in candidates if not r.fallback and r.matches(method, path)]
    return matched or [r for r in candidates if r.fallback and r.matches(method, path)]


def _asks_for_secrets(query: str) -> bool:
    return any(
        key in SECRET_QUERY_PARAMETERS and value.strip().lower() not in _FALSE_VALUES
        for key, value in parse_qsl(query, keep_blank_values=True)
    )


def _may_see_secrets(role: Role | None) -> bool:
    return role is Role.WORKER or reaches(role, SECRET_ACCESS)


def decide(role: Role | None, method: str, uri: str, rules: Sequence[Rule] = RULES) -> Decision:
    """Allowed only when every rule matching the request allows the role: when two Prefect
    path templates match one path, the stricter wins rather than the first."""
    path, query = split_uri(uri)
    who = role.value if role else "anonymous"
    if not is_clean(path):
        return Decision(False, f"unnormalized path {path!r}")
    matched = matching_rules(method, path, rules)
    if not matched:
        return Decision(False, f"no rule for {method.upper()} {path} (default deny)")
    for rule in matched:
        if not rule.allows(role):
            needs = "not a worker route" if role is Role.WORKER else f"needs {rule.access.value}"
            return Decision(False, f"{who} may not {rule.method} {rule.pattern}: {needs}", rule)
    rule = matched[0]
    if _asks_for_secrets(query):
        if not _may_see_secrets(role):
            return Decision(False, f"{who} may not read secrets: needs {SECRET_ACCESS.value}",
                            rule)
        return Decision(True, f"{who} may {rule.method} {rule.pattern} with secrets", rule,
                        reveals_secrets=True)
    return Decision(True, f"{who} may {rule.method} {rule.pattern}", rule)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(rules: Sequence[Rule] = RULES) -> str:
    """docs/auth-roles.md, generated from the table (a test keeps the file in step)."""
    lines = [
        "# Roles and routes",
        "",
        "<!-- generated from src/prefectstack/auth/routes.py; do not edit by hand -->",
        "",
        "Roles form a ladder, each with everything of the rung below: "
        "`viewer` < `operator` < `developer` < `admin`.",
        "`worker` is off the ladder: a worker key may use exactly the rows marked *yes* in the "
        "worker column.",
        "A request that no row matches is **denied**. When two rows match one path, the stricter "
        "one decides. Paths are compared without a trailing slash; `{x}` is one path segment, "
        "`{x:path}` the rest of the path, `{x:ui}` any path outside `/api` and `/auth`.",
        f"A query asking for {', '.join(f'`{p}`' for p in SECRET_QUERY_PARAMETERS)} needs "
        f"`{SECRET_ACCESS.value}` (or a worker key) whatever the row says.",
        "",
        "Kinds: `read` changes nothing; `write` is audited when allowed; `telemetry` (logs, "
        "events, heartbeats, task-run states) is audited only when denied. "
        "Every denied request is audited.",
        "",
        "- `viewer`: reads everything but secrets (the block list too: the auth service "
        "checks its body for `include_secrets`); changes nothing.",
        "- `operator`: viewer + runs deployments (with parameters, never with `job_variables`), "
        "cancels/retries/pauses/resumes runs, pauses and resumes deployments and schedules, "
        "saves UI searches.",
        "- `developer`: operator + creates, updates and deletes deployments, flows, blocks, "
        "variables, work pools and queues, automations and concurrency limits; decides what "
        "runs: overrides `job_variables` on a run, changes a run's parameters and "
        "infrastructure.",
        "- `admin`: everything in the table (and, through the CLI, users and keys).",
        "- `worker`: what `prefect worker start` and the flow runs it starts call (poll, run, "
        "report); it cannot create work pools, so the stack creates them, and of a flow run it "
        "changes only the state and what the worker and engine record (see the body checks).",
        "",
        "Credentials: `Authorization: Bearer <key>` (PREFECT_API_KEY); `Authorization: Basic` "
        "(PREFECT_API_AUTH_STRING) as `<user>:<password>` or `<label>:<key>`; or the session "
        "cookie from `/auth/login`. Only `/api/health`, `/api/ready` and the sign-in pages "
        "answer without them; the UI itself needs a signed-in person.",
        "",
        "Websockets (`GET` rows marked websocket) are checked by the edge's relay with the same "
        "rows: Prefect's client authenticates them in-band (first message `{\"type\": "
        "\"auth\", \"token\": ...}`, the token being a key, `<label>:<key>` or "
        "`<user>:<password>`), or by the handshake's Authorization header or session cookie.",
        "",
        "Body checks: the edge's `forward_auth` never sees a request body, so the edge sends "
        "these requests to the auth service, which judges them with the rows below and then, for "
        f"a role below `{UNCHECKED_ACCESS.value}`, their JSON body (re-encoded as checked "
        "before it reaches the API). Sent any other way, they are refused to those roles.",
        "",
        "| method | path | body rule |",
        "|---|---|---|",
        *(f"| {b.method} | `{_cell(b.pattern)}` | {_cell(b.note)} |" for b in BODY_RULES),
        "",
        "| method | path | minimum role | kind | worker | note |",
        "|---|---|---|---|---|---|",
    ]
    for rule in rules:
        access = "anyone" if rule.access is Access.PUBLIC else rule.access.value
        pattern = rule.pattern + (" (fallback)" if rule.fallback else "")
        lines.append(
            f"| {rule.method} | `{_cell(pattern)}` | {access} | {rule.kind.value} | "
            f"{'yes' if rule.worker else ''} | {_cell(rule.note)} |"
        )
    return "\n".join(lines) + "\n"
