"""The ASGI app Caddy's `forward_auth` asks, plus the sign-in and sign-out pages.

`GET /auth/verify` judges the original request from `X-Forwarded-Method` and
`X-Forwarded-Uri`: 200 with `X-Prefectstack-User`/`-Role` lets it through; 401 (a 302 to the
sign-in page for a browser navigation), 403 or 429 is sent back to the client by Caddy.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from prefectstack.auth import credentials as creds
from prefectstack.auth.audit import AuditLog, Record, now_iso
from prefectstack.auth.bodies import needs_body_check
from prefectstack.auth.database import DatabaseUnavailable
from prefectstack.auth.guard import BodyGuard
from prefectstack.auth.pages import CONTENT_SECURITY_POLICY, login_page
from prefectstack.auth.policy import Decision, decide, split_uri
from prefectstack.auth.pools import PoolOf, PoolScope
from prefectstack.auth.relay import Relay, Upstreams
from prefectstack.auth.store import SESSION_SECONDS, Identity, Store
from prefectstack.auth.store_backup import BACKUP_PATH, StoreBackup
from prefectstack.auth.throttle import Throttle

USER_HEADER = "X-Prefectstack-User"
ROLE_HEADER = "X-Prefectstack-Role"
# Copied by the edge into the request as Authorization: the API's own credentials (Prefect's
# server auth string), given only with a request this service let through. The edge's
# Caddyfile names the same header (topology/caddyfile.py; a test keeps the two equal).
UPSTREAM_AUTH_HEADER = "X-Prefectstack-Upstream-Authorization"
UI_SETTINGS_PATH = "/ui-settings"
LOGIN_PATH = "/auth/login"
MAX_FORM_BYTES = 8192


@dataclass(frozen=True)
class AuthConfig:
    # Off only for plain-HTTP tests: browsers drop Secure cookies on http:// origins.
    cookie_secure: bool = True
    session_seconds: float = SESSION_SECONDS
    # The stack's public URL (`https://host:port`); None: trust the edge's X-Forwarded-Host.
    public_origin: str | None = None
    # The service listens on loopback behind Caddy, which sets X-Forwarded-For itself.
    trust_forwarded: bool = True
    # Prefect's server auth string (`user:password`): None when the API has none.
    api_auth_string: str | None = None

    @property
    def api_authorization(self) -> str | None:
        if not self.api_auth_string:
            return None
        return "Basic " + base64.b64encode(self.api_auth_string.encode()).decode()

    @property
    def cookie_name(self) -> str:
        # `__Host-`: the browser accepts it only Secure, for Path=/ and without Domain, so
        # a sibling subdomain cannot plant or shadow it.
        return "__Host-prefectstack" if self.cookie_secure else "prefectstack"


class AuthService:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        throttle: Throttle,
        config: AuthConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.throttle = throttle
        self.config = config
        self.clock = clock
        self.pool_scope = PoolScope(_no_api)  # create_app gives it the API processes

    def _record(
        self,
        request: HTTPConnection,
        *,
        method: str,
        path: str,
        status: int,
        identity: Identity | None,
        reason: str,
        key_prefix: str | None = None,
    ) -> None:
        self.audit.write(
            Record(
                time=now_iso(self.clock),
                identity=identity.name if identity else None,
                role=identity.role.value if identity else None,
                method=method,
                path=path,
                status=status,
                client=self._client(request),
                key_prefix=identity.key_prefix if identity else key_prefix,
                reason=reason,
            )
        )

    def _login_record(
        self,
        request: Request,
        status: int,
        identity: Identity | None,
        reason: str,
        path: str = LOGIN_PATH,
    ) -> None:
        self._record(
            request, method="POST", path=path, status=status, identity=identity, reason=reason
        )

    def _client(self, request: HTTPConnection) -> str:
        peer = request.client.host if request.client else None
        return creds.client_address(request.headers, peer, self.config.trust_forwarded)

    # -- forward_auth

    async def verify(self, request: Request) -> Response:
        headers = request.headers
        method = headers.get("x-forwarded-method", request.method).upper()
        uri = headers.get("x-forwarded-uri", "/")
        judged = await self.judge(request, method, uri)
        if isinstance(judged, Response):
            return judged
        if judged is None:
            return Response(status_code=200)
        identity, decision = judged
        path, _ = split_uri(uri)
        if needs_body_check(identity.role, method, path) is not None:
            # The edge sends these to the auth service's body check (auth/guard.py); one
            # that reached forward_auth instead took a path the edge did not route there.
            reason = f"{decision.reason} only through the edge's body check"
            self._record(request, method=method, path=path, status=403, identity=identity,
                         reason=reason)
            return JSONResponse({"detail": reason}, 403)
        if decision.audited:
            self._record(request, method=method, path=path, status=200, identity=identity,
                         reason=decision.reason)
        allowed = {USER_HEADER: identity.name, ROLE_HEADER: identity.role.value}
        if self.config.api_authorization:
            allowed[UPSTREAM_AUTH_HEADER] = self.config.api_authorization
        return Response(status_code=200, headers=allowed)

    async def judge(
        self, request: Request, method: str, uri: str
    ) -> tuple[Identity, Decision] | Response | None:
        """Who asks and whether the route table lets them (refusals answered and audited
        here): None for a public route, the identity and the decision when allowed (the
        caller audits an allowed write), else the response to send."""
        headers = request.headers
        path, _ = split_uri(uri)
        public = decide(None, method, uri)
        if public.allowed:
            return None
        outcome = await run_in_threadpool(
            creds.authenticate,
            self.store,
            self.throttle,
            authorization=headers.get("authorization"),
            session=request.cookies.get(self.config.cookie_name),
            client=self._client(request),
        )
        identity = outcome.identity

        def refuse(status: int, reason: str, extra: dict[str, str] | None = None) -> Response:
            self._record(
                request,
                method=method,
                path=path,
                status=status,
                identity=identity,
                reason=reason,
                key_prefix=outcome.key_prefix,
            )
            return JSONResponse({"detail": reason}, status, headers=extra)

        if outcome.retry_after:
            return refuse(429, outcome.failure, {"Retry-After": str(outcome.retry_after)})
        if identity is None:
            return self._unauthenticated(request, method, path, uri, outcome)
        ambient = identity.via == "session"
        if not creds.origin_allowed(method, headers, self.config.public_origin, ambient=ambient):
            return refuse(403, "cross-origin request refused")
        decision = decide(identity.role, method, uri)
        if not decision.allowed:
            return refuse(403, decision.reason)
        scoped = await self.pool_scope.refusal(identity, decision.rule, path)
        if scoped is not None:
            return refuse(*scoped)
        return identity, decision

    def _unauthenticated(
        self, request: Request, method: str, path: str, uri: str, outcome: creds.Outcome
    ) -> Response:
        reason = outcome.failure or "credentials required"
        prefix = outcome.key_prefix
        if creds.wants_html(method, path, request.headers):
            target = f"{LOGIN_PATH}?next={quote(creds.safe_next(uri), safe='')}"
            self._record(
                request,
                method=method,
                path=path,
                status=302,
                identity=None,
                reason=reason,
                key_prefix=prefix,
            )
            return RedirectResponse(target, status_code=302)
        self._record(
            request,
            method=method,
            path=path,
            status=401,
            identity=None,
            reason=reason,
            key_prefix=prefix,
        )
        return JSONResponse(
            {"detail": reason},
            401,
            # Bearer, not Basic: a Basic challenge would make browsers pop up their own
            # dialog and then replay the password on every request (ambient credentials).
            headers={"WWW-Authenticate": 'Bearer realm="prefectstack"'},
        )

    # -- sign in / sign out

    def _page(
        self,
        status: int,
        *,
        next_path: str,
        error: str = "",
        username: str = "",
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        response = HTMLResponse(
            login_page(next_path=next_path, error=error, username=username), status, headers
        )
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    async def login_form(self, request: Request) -> Response:
        return self._page(200, next_path=creds.safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return JSONResponse({"detail": "sign-in form too large"}, 413)
        form = parse_qs(body.decode(errors="replace"))
        username = form.get("username", [""])[0].strip()
        password = form.get("password", [""])[0]
        next_path = creds.safe_next(form.get("next", ["/"])[0])
        client = self._client(request)
        if not creds.origin_allowed(
            "POST", request.headers, self.config.public_origin, ambient=False
        ):
            self._login_record(request, 403, None, "cross-origin sign-in refused")
            return self._page(403, next_path=next_path, error="Sign in from this site's page.")
        verdict = self.throttle.check(client, username)
        if not verdict.allowed:
            return self._too_many(request, next_path, username, verdict.retry_after)
        identity = await run_in_threadpool(self.store.verify_password, username, password)
        if identity is None:
            after = self.throttle.failure(client, username)
            if after.retry_after:
                return self._too_many(request, next_path, username, after.retry_after)
            target = await run_in_threadpool(creds.attempted, self.store, username)
            self._login_record(request, 401, None, f"failed sign-in as {target}")
            return self._page(
                401, next_path=next_path, error="Wrong username or password.", username=username
            )
        self.throttle.success(client, username)
        token = await run_in_threadpool(
            self.store.create_session, identity.name, self.config.session_seconds
        )
        self._login_record(request, 303, identity, "signed in")
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            self.config.cookie_name,
            token,
            max_age=int(self.config.session_seconds),
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="lax",
        )
        return response

    def _too_many(self, request: Request, next_path: str, username: str, retry: int) -> Response:
        self._login_record(request, 429, None, "sign-in throttled")
        return self._page(
            429,
            next_path=next_path,
            error=f"Too many failed attempts. Try again in {retry} seconds.",
            username=username,
            headers={"Retry-After": str(retry)},
        )

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        if not creds.origin_allowed(
            "POST", request.headers, self.config.public_origin, ambient=False
        ):
            return JSONResponse({"detail": "cross-origin sign-out refused"}, 403)
        token = request.cookies.get(self.config.cookie_name)
        if token:
            identity = await run_in_threadpool(self.store.verify_session, token)
            await run_in_threadpool(self.store.end_session, token)
            self._login_record(request, 303, identity, "signed out", path="/auth/logout")
        response.delete_cookie(
            self.config.cookie_name,
            path="/",
            secure=self.config.cookie_secure,
            httponly=True,
            samesite="lax",
        )
        return response


async def _no_api(run_id: str) -> str | None:
    raise LookupError(run_id)


def pool_lookup(upstreams: Upstreams, authorization: str | None) -> PoolOf:
    """A flow run's work pool, asked of the API processes in turn (auth/pools.py)."""
    headers = {"Authorization": authorization} if authorization else {}

    async def pool_of(run_id: str) -> str | None:
        import httpx

        for address in upstreams.in_turn():
            try:
                answer = await upstreams.http().get(
                    f"http://{address}/api/flow_runs/{quote(run_id, safe='')}",
                    headers=headers, timeout=10)
                if answer.status_code in (404, 422):
                    return None  # no such run: the API will say so itself
                if answer.status_code == 200:
                    return str(answer.json().get("work_pool_name") or "")
            except (httpx.HTTPError, ValueError):
                continue
        raise LookupError(run_id)

    return pool_of


class UiSettings:
    """The Prefect UI's settings as the API serves them, minus `auth: BASIC`: that is how
    Prefect tells its UI to ask for the server's password, which only the edge holds (people
    sign in to the edge). Reached only through the edge, after its checks."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    async def handle(self, request: Request) -> Response:
        import httpx

        for address in self.upstreams.in_turn():
            try:
                answer = await self.upstreams.http().get(
                    f"http://{address}{UI_SETTINGS_PATH}", timeout=10)
                settings = answer.json()
            except (httpx.HTTPError, ValueError):
                continue
            if answer.status_code == 200 and isinstance(settings, dict):
                settings["auth"] = None
                return JSONResponse(settings, headers={"Cache-Control": "no-store"})
        return JSONResponse({"detail": "no API process answered"}, 502)


SETTINGS_PATH = "/api/admin/settings"
MASK = "********"
_SECRET_KEYS = ("password", "secret", "auth_string", "api_key", "token")


def masked(value: object, key: str = "") -> object:
    """Prefect's server settings with every credential hidden: keys that name one, and the
    password in any URL (Prefect shows `server.docket.url` with Redis's password)."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        if value and any(word in key.lower() for word in _SECRET_KEYS):
            return MASK
        return _URL_PASSWORD.sub(rf"\1{MASK}@", value)
    return value


_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/@:\s]*:)[^@/\s]+@", re.IGNORECASE)


class ServerSettings:
    """`GET /api/admin/settings` through the edge (after its checks): the API's answer with
    credentials masked. The UI shows it to everyone signed in, viewers included."""

    def __init__(self, upstreams: Upstreams, authorization: str | None) -> None:
        self.upstreams = upstreams
        self.headers = {"Authorization": authorization} if authorization else {}

    async def handle(self, request: Request) -> Response:
        import httpx

        for address in self.upstreams.in_turn():
            try:
                answer = await self.upstreams.http().get(
                    f"http://{address}{SETTINGS_PATH}", headers=self.headers, timeout=10)
                settings = answer.json()
            except (httpx.HTTPError, ValueError):
                continue
            if answer.status_code == 200:
                return JSONResponse(masked(settings), headers={"Cache-Control": "no-store"})
        return JSONResponse({"detail": "no API process answered"}, 502)


def create_app(
    store: Store,
    audit: AuditLog,
    throttle: Throttle,
    config: AuthConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    api_upstreams: Sequence[str] = (),
    recheck_seconds: float | None = None,
    backup_token: str | None = None,
) -> Starlette:
    """The auth service; with `api_upstreams` (the API processes' `host:port`) also the
    websocket relay that Caddy sends Prefect's websocket upgrades under /api/ to; with
    `backup_token` also `GET /auth/backup` (auth/store_backup.py)."""
    service = AuthService(store, audit, throttle, config or AuthConfig(), clock)
    routes: list[BaseRoute] = [
        Route("/auth/verify", service.verify, methods=["GET"]),
        Route(LOGIN_PATH, service.login_form, methods=["GET"]),
        Route(LOGIN_PATH, service.login, methods=["POST"]),
        Route("/auth/logout", service.logout, methods=["POST"]),
    ]
    if backup_token and store.path is not None:  # in PostgreSQL: the backup's pg_dump
        backup = StoreBackup(store.path, backup_token, audit, clock)
        routes.append(Route(BACKUP_PATH, backup.handle, methods=["GET"]))
    if api_upstreams:
        upstreams = Upstreams(api_upstreams)
        service.pool_scope = PoolScope(pool_lookup(upstreams, service.config.api_authorization))
        relay = Relay(service, upstreams,
                      *(() if recheck_seconds is None else (recheck_seconds,)),
                      api_token=service.config.api_auth_string)
        routes.append(WebSocketRoute("/api/{path:path}", relay.handle))
        routes.append(Route(UI_SETTINGS_PATH, UiSettings(upstreams).handle, methods=["GET"]))
        settings = ServerSettings(upstreams, service.config.api_authorization)
        routes.append(Route(SETTINGS_PATH, settings.handle, methods=["GET"]))
        guard = BodyGuard(service, upstreams)
        routes.append(Route("/api/{path:path}", guard.handle, methods=["POST", "PATCH"]))
    return Starlette(routes=routes,
                     exception_handlers={DatabaseUnavailable: _store_unavailable})


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The replicated store's database is away (a restart, a failover): 503, which Prefect's
    clients retry, instead of a 500 they would not; the request is not let through."""
    return JSONResponse({"detail": "the auth store is unavailable; retry"}, 503,
                        headers={"Retry-After": "1"})
