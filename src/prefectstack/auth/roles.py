"""Roles, access levels and the shape of one route rule. The rules themselves are in
routes.py; the decision over them is in policy.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    ADMIN = "admin"
    # Not on the ladder: a worker key may use exactly the rules marked `worker`.
    WORKER = "worker"


class Access(StrEnum):
    """The minimum rung of the ladder viewer < operator < developer < admin a rule needs."""

    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"
    DEVELOPER = "developer"
    ADMIN = "admin"


class Kind(StrEnum):
    READ = "read"  # changes nothing (includes Prefect's POST */filter, */count, ...)
    WRITE = "write"  # changes something: audited when allowed
    # High-volume writes by running flows and workers (logs, events, heartbeats, task-run
    # states): audited only when denied, or they would bury the lines a person looks for.
    TELEMETRY = "telemetry"


_LADDER = {Access.VIEWER: 1, Access.OPERATOR: 2, Access.DEVELOPER: 3, Access.ADMIN: 4}
_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.DEVELOPER: 3, Role.ADMIN: 4}

# `{name}` is one path segment; `{name:path}` is the rest of the path; `{name:ui}` is any
# path outside /api and /auth (the Prefect UI's single-page app and its assets).
_PARAM = re.compile(r"\{([a-z_]+)(?::(path|ui))?\}")
_CONVERTERS = {None: "[^/]+", "path": ".*", "ui": "(?!(?:api|auth)(?:/|$)).*"}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def reaches(role: Role | None, access: Access) -> bool:
    """Whether a role on the ladder stands at or above `access` (a worker never does)."""
    if access is Access.PUBLIC:
        return True
    if role is None or role is Role.WORKER:
        return False
    return _RANK[role] >= _LADDER[access]


def normalize(path: str) -> str:
    """Compare paths without a trailing slash: Prefect declares `/flows/` and its client
    calls it, while FastAPI redirects between the two forms."""
    return path.rstrip("/") or "/"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    position = 0
    for match in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[position : match.start()]))
        parts.append(_CONVERTERS[match.group(2)])
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Rule:
    method: str
    pattern: str
    access: Access
    kind: Kind
    worker: bool = False
    # A fallback applies only when no other rule matches the request (the UI catch-all).
    fallback: bool = False
    note: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_pattern(normalize(self.pattern)))

    def matches(self, method: str, path: str) -> bool:
        wanted = "GET" if method == "HEAD" else method
        return wanted == self.method and self.regex.fullmatch(normalize(path)) is not None

    def allows(self, role: Role | None) -> bool:
        if role is Role.WORKER and self.worker:
            return True
        return reaches(role, self.access)

    @property
    def audited(self) -> bool:
        return self.kind is Kind.WRITE
