"""What stands in front of the auth service's routes: only the edge gets answers, and every
5xx answer is audited.

The auth service listens on loopback (a private network in containers), where any local
user can reach it. Left open, a local user could:
- ask `/auth/verify` with their own key and get back the API's own credentials (the header
  the edge copies into requests it lets through), which are admin on the API port;
- choose the `X-Forwarded-For` address their password guesses are throttled under (a fresh
  one each time: never throttled) and that the audit log records;
- read the server settings the auth service fetches with the API's credentials.

So the edge proves itself on every request with a per-stack secret header (`${secret.
edge_secret}`, set by the Caddyfile's `request_header` from the edge's environment and
removed before anything reaches the API). Without it the gate answers only the sign-in page
(the service's own readiness probe) and refuses the rest with 403, audited under the
caller's real address: nothing behind the gate ever reads X-Forwarded-For from a caller
that isn't the edge. Without a configured secret (unit tests, a service run by hand) the
gate checks nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefectstack.auth import credentials as creds
from prefectstack.auth.audit import AuditLog, Record, now_iso

EDGE_HEADER = "X-Prefectstack-Edge"  # topology/caddyfile.py sets it (a test keeps them equal)
# The readiness probe, and the auth store's backup, which checks a token of its own
# (auth/store_backup.py; it exists only when that token is configured).
OPEN = frozenset({("GET", "/auth/login"), ("HEAD", "/auth/login"), ("GET", "/auth/backup")})

log = logging.getLogger("prefectstack.auth")


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers", [])}


class Gate:
    def __init__(self, app: ASGIApp, audit: AuditLog, *, edge_secret: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.audit = audit
        self.edge_secret = edge_secret or None
        self.clock = clock

    def from_edge(self, scope: Scope) -> bool:
        if self.edge_secret is None:
            return True
        presented = _header(scope, EDGE_HEADER) or ""
        return hmac.compare_digest(presented.encode("latin-1"), self.edge_secret.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = "GET" if scope["type"] == "websocket" else str(scope.get("method", "GET"))
        trusted = self.from_edge(scope)
        if not trusted and (method.upper(), scope.get("path", "")) not in OPEN:
            self._record(scope, 403, "refused: not from the edge", trusted=False)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _json(send, 403, {"detail": "only the edge may call the auth service"})
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._http(scope, receive, send, trusted)

    async def _http(self, scope: Scope, receive: Receive, send: Send, trusted: bool) -> None:
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # answered (if not yet) and audited, never unrecorded
            log.exception("the auth service failed on %s %s", scope.get("method"),
                          _path(scope))
            self._record(scope, 500, f"internal error: {type(exc).__name__}", trusted=trusted)
            if not status:
                await _json(send, 500, {"detail": "internal error (audited)"})
            return
        if status and status[0] >= 500:
            self._record(scope, status[0], "the auth service answered with an error",
                         trusted=trusted)

    def _record(self, scope: Scope, status: int, reason: str, *, trusted: bool) -> None:
        headers = _headers(scope)
        peer = scope.get("client")
        address = creds.client_address(headers, peer[0] if peer else None, trusted)
        method = str(scope.get("method", "GET")) if scope["type"] == "http" else "GET"
        path = _path(scope)
        if trusted and scope.get("path") == "/auth/verify":
            method = headers.get("x-forwarded-method", method).upper()
            path = headers.get("x-forwarded-uri", path).split("?", 1)[0]
        self.audit.write(Record(time=now_iso(self.clock), identity=None, role=None,
                                method=method, path=path, status=status, client=address,
                                reason=reason))


def _path(scope: Scope) -> str:
    return str(scope.get("path", "/"))


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
