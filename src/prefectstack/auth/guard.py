"""The edge's body check: writes whose body decides the role they need (auth/bodies.py).

Caddy's `forward_auth` cannot see a request body, so the edge sends `POST` and `PATCH` on the
run routes of auth/bodies.py here instead. For each request this:

1. judges the caller and the route exactly as `/auth/verify` does (same credentials, origin
   check, role table and audit);
2. for a role the body can make a difference for (below developer), parses the body as JSON
   and refuses (403, audited) what the role may not send: `job_variables` on a new run, any
   field of a flow run but the ones a worker sends;
3. sends the request on to an API process, with the API's own credentials, and the body it
   checked re-encoded (what the API parses is what was checked, byte for byte), and relays
   the answer.

A write is tried on the next API process only when its connection never reached one: it is
never repeated once sent. A read (the block list) is also tried again when the process it
reached died before answering, as the edge does for every read.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from prefectstack.auth.bodies import BLOCK_LIST, asks_for_secrets, needs_body_check
from prefectstack.auth.policy import split_uri
from prefectstack.auth.relay import Upstreams
from prefectstack.auth.roles import Kind

if TYPE_CHECKING:
    from prefectstack.auth.app import AuthService

# Prefect caps a run's parameters well below this; a bigger body is refused unread.
MAX_BODY_BYTES = 16 * 1024 * 1024
UPSTREAM_TIMEOUT = 120.0
# Not passed on: the client's credentials (the API gets its own), hop-by-hop headers, and
# what describes a body this proxy may have re-encoded.
_DROP_REQUEST = frozenset({
    "host", "authorization", "cookie", "content-length", "content-encoding",
    "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "proxy-authorization", "proxy-connection", "accept-encoding",
})
_DROP_RESPONSE = frozenset({
    "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive",
    "server", "date",
})


class BodyGuard:
    """The ASGI endpoint for the body-checked routes (see the module docstring)."""

    def __init__(self, service: AuthService, upstreams: Upstreams,
                 max_bytes: int = MAX_BODY_BYTES) -> None:
        self.service = service
        self.upstreams = upstreams
        self.max_bytes = max_bytes

    async def handle(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        target = raw.decode("latin-1")
        if request.url.query:
            target += f"?{request.url.query}"
        method = request.method.upper()
        path, _ = split_uri(target)
        judged = await self.service.judge(request, method, target)
        if isinstance(judged, Response):
            return judged
        if judged is None:  # no public route takes a body-checked write
            return JSONResponse({"detail": "not a public route"}, 403)
        identity, decision = judged

        def record(status: int, reason: str) -> None:
            self.service._record(request, method=method, path=path, status=status,
                                 identity=identity, reason=reason)

        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_bytes:
                record(413, "request body too large for the body check")
                return JSONResponse({"detail": "request body too large"}, 413)
        content = bytes(body)
        rule = needs_body_check(identity.role, method, path)
        secrets = False
        if rule is not None:
            try:
                parsed = json.loads(content)
            except ValueError:
                record(400, f"{decision.reason}: the body is not JSON")
                return JSONResponse({"detail": "the body must be JSON"}, 400)
            refused = rule.check(identity.role, parsed)
            if refused is not None:
                record(403, refused)
                return JSONResponse({"detail": refused}, 403)
            content = json.dumps(parsed).encode()
            secrets = path.rstrip("/") == BLOCK_LIST and asks_for_secrets(parsed)
        elif path.rstrip("/") == BLOCK_LIST:
            # A developer's or admin's body is not checked (it may ask for anything), but a
            # read of secret values is audited whoever makes it.
            try:
                secrets = asks_for_secrets(json.loads(content))
            except ValueError:
                secrets = False  # the API refuses a body that is not JSON
        if secrets:
            record(200, f"{decision.reason} with secrets (include_secrets in the body)")
        elif decision.audited:
            record(200, decision.reason + (" (body checked)" if rule else ""))
        read = decision.rule is not None and decision.rule.kind is Kind.READ
        return await self._forward(request, method, target, content,
                                   rewritten=rule is not None, replayable=read)

    async def _forward(self, request: Request, method: str, target: str, content: bytes, *,
                       rewritten: bool, replayable: bool = False) -> Response:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _DROP_REQUEST
                   and not k.lower().startswith("x-prefectstack-")}
        if rewritten:
            headers["content-type"] = "application/json"
        authorization = self.service.config.api_authorization
        if authorization:
            headers["authorization"] = authorization
        for address in self.upstreams.in_turn():
            try:
                answer = await self.upstreams.http().request(
                    method, f"http://{address}{target}", headers=headers, content=content,
                    timeout=UPSTREAM_TIMEOUT)
            except httpx.ConnectError:
                continue  # never reached that process: the next one may take it
            except httpx.HTTPError as exc:
                if replayable and not isinstance(exc, httpx.TimeoutException):
                    continue  # a read whose process died mid-answer: ask the next one
                return JSONResponse({"detail": f"the API did not answer: {type(exc).__name__}"},
                                    502)
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP_RESPONSE}
            return Response(answer.content, answer.status_code, headers=kept)
        return JSONResponse({"detail": "no API process answered"}, 502)
