"""The edge's websocket relay: Prefect's websockets, authenticated the way its clients do it.

Prefect's Python client opens `/api/events/in`, `/api/events/out`, `/api/logs/out` and the
task-run subscription with the `prefect` subprotocol and no Authorization header (against a
self-hosted URL), then authenticates in-band with a first message
`{"type": "auth", "token": <PREFECT_API_AUTH_STRING or key>}`. `forward_auth` only sees the
handshake, so Caddy sends websocket upgrades under /api/ here instead. The relay:

1. authenticates the handshake's own credentials (Authorization header, or the session cookie
   of a signed-in browser, whose Origin must be the stack's), else the in-band token: an API
   key, `<label>:<key>` (the auth-string form) or `<user>:<password>`;
2. applies the same role table as HTTP (`GET <path>`), auditing every refusal;
3. opens the same path on an API process (the next one in turn, skipping any that refuses the
   connection), completes Prefect's handshake there, then relays frames both ways;
4. re-checks the credential every few seconds and closes the socket (1008) once the key is
   revoked or expired, the session ended or the user removed.

A refused socket is closed the way Prefect's own server closes it: 1008 (policy violation)
with a reason, or a refused handshake (HTTP 403) when there is nothing to accept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from prefectstack.apikeys import key_prefix
from prefectstack.auth import credentials as creds
from prefectstack.auth.database import DatabaseUnavailable
from prefectstack.auth.policy import decide, split_uri
from prefectstack.auth.store import Identity, Store

PREFECT_SUBPROTOCOL = "prefect"
# Paths served by the first healthy API process only (see Upstreams.for_path).
PINNED_PREFIX = "/api/task_runs/"
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
AUTH_MESSAGE_TIMEOUT = 10.0
UPSTREAM_OPEN_TIMEOUT = 10.0
# A revoked key or ended session closes its open sockets within this many seconds.
RECHECK_SECONDS = 3.0
# Prefect's events can be large (a flow run's parameters ride along); its server's limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Close codes that may not be sent on the wire (RFC 6455 7.4.1): relay them as these.
_UNSENDABLE = {1005: 1000, 1006: INTERNAL_ERROR, 1015: INTERNAL_ERROR}

if TYPE_CHECKING:
    from prefectstack.auth.app import AuthService

logger = logging.getLogger("prefectstack.auth.relay")


@dataclass(frozen=True)
class Credential:
    """What the client presented, kept to re-check it while the socket stays open."""

    authorization: str | None = None
    session: str | None = None


def from_token(token: str) -> Credential:
    """An in-band token: `<label>:<key>` or `<user>:<password>` (PREFECT_API_AUTH_STRING) is
    checked as Basic credentials, anything else as a bare API key (Bearer)."""
    if ":" in token:
        return Credential(authorization="Basic " + base64.b64encode(token.encode()).decode())
    return Credential(authorization=f"Bearer {token}")


def still_valid(store: Store, credential: Credential) -> Identity | None:
    """The credential's identity now, without touching the sign-in throttle (a password that
    was right when the socket opened is only re-checked, never counted as a failed try)."""
    if credential.session:
        return store.verify_session(credential.session)
    scheme, _, value = (credential.authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        return store.verify_key(value.strip())
    if scheme.lower() == "basic":
        decoded = base64.b64decode(value).decode(errors="replace")
        user, _, secret = decoded.partition(":")
        if key_prefix(secret) is not None:
            return store.verify_key(secret)
        return store.verify_password(user, secret)
    return None


class Upstreams:
    """The API processes, each socket starting at the next one (the least-busy choice that
    Caddy makes for HTTP is not visible here; turns spread long-lived sockets evenly)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise ValueError("the websocket relay needs at least one API address")
        self.addresses = tuple(addresses)
        self._turn = count()
        self._http: httpx.AsyncClient | None = None

    def http(self) -> httpx.AsyncClient:
        """The one client for plain-HTTP calls to the API processes. A client per call built
        an SSL context each time (certifi's bundle loaded: most of this service's CPU under a
        burst of runs). Keep-alive is off, so every call still gets a fresh connection and a
        write never meets one an API process is closing (a write is never sent twice)."""
        if self._http is None:
            self._http = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0))
        return self._http

    def in_turn(self) -> list[str]:
        start = next(self._turn) % len(self.addresses)
        return [*self.addresses[start:], *self.addresses[:start]]

    def for_path(self, path: str) -> list[str]:
        """Task workers subscribe where the edge sends every task-run call (the first API
        process that answers): Prefect keeps background task runs in that process's memory."""
        if path.startswith(PINNED_PREFIX):
            return list(self.addresses)
        return self.in_turn()


@dataclass(frozen=True)
class Refusal(Exception):
    status: int  # for the audit log: 401 no or bad credentials, 403 not allowed
    reason: str
    identity: Identity | None = None
    key_prefix: str | None = None


class Relay:
    """The ASGI websocket endpoint for every /api/ path (see the module docstring)."""

    def __init__(self, service: AuthService, upstreams: Upstreams,
                 recheck_seconds: float = RECHECK_SECONDS, *,
                 api_token: str | None = None) -> None:
        self.service = service
        self.upstreams = upstreams
        self.recheck_seconds = recheck_seconds
        # The API's own in-band token (Prefect's server auth string), never the client's.
        self.api_token = api_token

    async def handle(self, websocket: WebSocket) -> None:
        # The path as sent (still percent-encoded) goes upstream; the policy decodes it the
        # way the API will route it.
        raw = websocket.scope.get("raw_path") or websocket.url.path.encode()
        target = raw.decode("latin-1")
        query = websocket.url.query
        if query:
            target += f"?{query}"
        path, _ = split_uri(target)
        prefect = PREFECT_SUBPROTOCOL in _subprotocols(websocket)
        accepted = False
        try:
            credential, identity = await self._handshake_identity(websocket)
            if identity is None and not prefect:
                raise Refusal(401, "credentials required")
            if identity is not None:
                self._authorize(identity, target)
            if prefect:
                await websocket.accept(subprotocol=PREFECT_SUBPROTOCOL)
                accepted = True
                token = await self._auth_message(websocket)
                if identity is None:
                    credential, identity = await self._token_identity(websocket, token)
                    self._authorize(identity, target)
            else:
                await websocket.accept()
                accepted = True
        except Refusal as refusal:
            self._audit(websocket, path, refusal.status, refusal.identity, refusal.reason,
                        refusal.key_prefix)
            await websocket.close(POLICY_VIOLATION, reason=refusal.reason if accepted else None)
            return
        except (WebSocketDisconnect, ConnectionClosed):
            return
        except DatabaseUnavailable:  # the replicated store is away: the client reconnects
            await websocket.close(TRY_AGAIN_LATER, reason="the auth store is unavailable")
            return
        assert credential is not None and identity is not None
        await self._relay(websocket, path, target, prefect, credential, identity)

    # -- who is asking

    async def _handshake_identity(
        self, websocket: WebSocket
    ) -> tuple[Credential | None, Identity | None]:
        """Credentials on the handshake itself: a browser's session cookie, or a client that
        sends Authorization (Prefect's events client does with an auth string)."""
        authorization = websocket.headers.get("authorization")
        session = None if authorization else websocket.cookies.get(self._cookie_name)
        if not authorization and not session:
            return None, None
        credential = Credential(authorization=authorization, session=session)
        outcome = await run_in_threadpool(
            creds.authenticate, self.service.store, self.service.throttle,
            authorization=authorization, session=session, client=self._client(websocket),
        )
        if outcome.identity is None:
            raise Refusal(429 if outcome.retry_after else 401,
                          outcome.failure or "credentials required", key_prefix=outcome.key_prefix)
        ambient = outcome.identity.via == "session"
        if not creds.origin_allowed("GET", websocket.headers, self._public_origin,
                                    ambient=ambient):
            raise Refusal(403, "cross-origin websocket refused", outcome.identity)
        return credential, outcome.identity

    async def _auth_message(self, websocket: WebSocket) -> str | None:
        """Prefect's protocol: the first message must be `{"type": "auth", ...}`."""
        try:
            text = await asyncio.wait_for(websocket.receive_text(), AUTH_MESSAGE_TIMEOUT)
            message = json.loads(text)
        except TimeoutError:
            raise Refusal(401, "no 'auth' message within "
                               f"{AUTH_MESSAGE_TIMEOUT:.0f}s") from None
        except (ValueError, KeyError):
            raise Refusal(401, "Expected 'auth' message") from None
        if not isinstance(message, dict) or message.get("type") != "auth":
            raise Refusal(401, "Expected 'auth' message")
        token = message.get("token")
        return token if isinstance(token, str) and token else None

    async def _token_identity(
        self, websocket: WebSocket, token: str | None
    ) -> tuple[Credential, Identity]:
        if token is None:
            raise Refusal(401, "Auth required but no token provided")
        credential = from_token(token)
        outcome = await run_in_threadpool(
            creds.authenticate, self.service.store, self.service.throttle,
            authorization=credential.authorization, session=None,
            client=self._client(websocket),
        )
        if outcome.identity is None:
            raise Refusal(429 if outcome.retry_after else 401,
                          outcome.failure or "Invalid token", key_prefix=outcome.key_prefix)
        return credential, outcome.identity

    def _authorize(self, identity: Identity, uri: str) -> None:
        decision = decide(identity.role, "GET", uri)
        if not decision.allowed:
            raise Refusal(403, decision.reason, identity)

    # -- relaying

    async def _relay(self, websocket: WebSocket, path: str, target: str, prefect: bool,
                     credential: Credential, identity: Identity) -> None:
        upstream = await self._open_upstream(target, prefect, self.upstreams.for_path(path))
        if isinstance(upstream, tuple):
            await websocket.close(*upstream)
            return
        async with upstream:
            tasks = {
                asyncio.create_task(self._client_to_upstream(websocket, upstream)),
                asyncio.create_task(self._upstream_to_client(upstream, websocket)),
                asyncio.create_task(self._watch(websocket, path, credential, identity)),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            code, reason = _first_result(done)
            await upstream.close()
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, ConnectionClosed):
                await websocket.close(code, reason=reason)

    async def _open_upstream(self, target: str, prefect: bool,
                             addresses: list[str]) -> ClientConnection | tuple[int, str]:
        """A connection to the first of `addresses` that takes it, or the close code and
        reason to give the client."""
        for address in addresses:
            try:
                upstream = await connect(
                    f"ws://{address}{target}",
                    subprotocols=[Subprotocol(PREFECT_SUBPROTOCOL)] if prefect else None,
                    open_timeout=UPSTREAM_OPEN_TIMEOUT,
                    max_size=MAX_MESSAGE_BYTES,
                    compression=None,  # loopback: compressing costs CPU and saves nothing
                )
            except InvalidStatus as exc:
                # The API itself refused the path (404, 403): another replica would too.
                status = exc.response.status_code
                return POLICY_VIOLATION, f"the API refused the websocket: HTTP {status}"
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                logger.warning("API %s refused a websocket (%s); trying the next", address, exc)
                continue
            if prefect:
                # The client proved who it is to this relay; the API gets its own server auth
                # string (or, without one, just the message). Its `auth_success` is what the
                # client waits for.
                await upstream.send(json.dumps({"type": "auth", "token": self.api_token}))
            return upstream
        return TRY_AGAIN_LATER, "no API process answered"

    async def _client_to_upstream(self, websocket: WebSocket,
                                  upstream: ClientConnection) -> tuple[int, str]:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return 1000, ""
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])

    async def _upstream_to_client(self, upstream: ClientConnection,
                                  websocket: WebSocket) -> tuple[int, str]:
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)
        except ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        return _UNSENDABLE.get(code, code), upstream.close_reason or ""

    async def _watch(self, websocket: WebSocket, path: str, credential: Credential,
                     identity: Identity) -> tuple[int, str]:
        """Close the socket once its credential stops being valid."""
        while True:
            await asyncio.sleep(self.recheck_seconds)
            try:
                now = await run_in_threadpool(still_valid, self.service.store, credential)
            except DatabaseUnavailable:
                continue  # revocations are written there too: checked again once it is back
            if now is None or not decide(now.role, "GET", path).allowed:
                reason = "credentials revoked or expired"
                self._audit(websocket, path, 401, identity, f"websocket closed: {reason}",
                            identity.key_prefix)
                return POLICY_VIOLATION, reason

    # -- helpers

    def _audit(self, websocket: WebSocket, path: str, status: int, identity: Identity | None,
               reason: str, prefix: str | None) -> None:
        self.service._record(websocket, method="GET", path=path, status=status,
                             identity=identity, reason=f"websocket: {reason}", key_prefix=prefix)

    def _client(self, websocket: WebSocket) -> str:
        return str(self.service._client(websocket))

    @property
    def _cookie_name(self) -> str:
        return str(self.service.config.cookie_name)

    @property
    def _public_origin(self) -> str | None:
        origin: str | None = self.service.config.public_origin
        return origin


def _subprotocols(websocket: WebSocket) -> list[str]:
    return [p.strip() for header in websocket.headers.getlist("sec-websocket-protocol")
            for p in header.split(",")]


def _first_result(done: set[asyncio.Task[tuple[int, str]]]) -> tuple[int, str]:
    for task in done:
        if not task.cancelled() and task.exception() is None:
            return task.result()
    return INTERNAL_ERROR, "relay failed"
