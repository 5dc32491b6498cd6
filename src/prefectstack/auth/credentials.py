"""Who is asking, from what the edge forwards: credentials, client address, origin.

Accepted credentials, in this order (the first present decides; a bad one is never
retried with the next):
- `Authorization: Bearer <api key>`: what PREFECT_API_KEY sends;
- `Authorization: Basic base64(<user>:<secret>)`: what PREFECT_API_AUTH_STRING sends. When the
  secret is shaped like an API key (`pfs_...`) it is checked as one and the user part is only
  a label (`worker:pfs_...`); otherwise it is that user's password;
- the session cookie set by the sign-in page.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from prefectstack.apikeys import key_prefix
from prefectstack.auth.roles import SAFE_METHODS
from prefectstack.auth.store import Identity, Store
from prefectstack.auth.throttle import Throttle


@dataclass(frozen=True)
class Outcome:
    identity: Identity | None
    failure: str = ""  # why presented credentials were refused; "" when none were presented
    retry_after: int = 0  # > 0: refused by the throttle (429)
    key_prefix: str | None = None  # of a presented key, even a refused one

    @property
    def presented(self) -> bool:
        return self.identity is not None or bool(self.failure)


def _basic(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: not ASCII
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else None


def _by_key(store: Store, key: str) -> Outcome:
    identity = store.verify_key(key)
    if identity is None:
        return Outcome(None, "unknown, revoked or expired API key", key_prefix=key_prefix(key))
    return Outcome(identity, key_prefix=identity.key_prefix)


def attempted(store: Store, username: str) -> str:
    """How a failed sign-in names its target in the audit log: people type passwords into
    the username field, so a name is logged only when such a user exists."""
    return repr(username) if store.has_user(username) else "an unknown user"


def _by_password(store: Store, throttle: Throttle, client: str, user: str, pw: str) -> Outcome:
    verdict = throttle.check(client, user)
    if not verdict.allowed:
        return Outcome(None, "too many failed sign-ins", verdict.retry_after)
    identity = store.verify_password(user, pw)
    if identity is None:
        after = throttle.failure(client, user)
        failure = f"wrong password for {attempted(store, user)}"
        return Outcome(None, failure, after.retry_after)
    throttle.success(client, user)
    return Outcome(identity)


def authenticate(
    store: Store,
    throttle: Throttle,
    *,
    authorization: str | None,
    session: str | None,
    client: str,
) -> Outcome:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return _by_key(store, value.strip())
        if scheme.lower() == "basic":
            pair = _basic(value)
            if pair is None:
                return Outcome(None, "malformed Basic credentials")
            user, secret = pair
            if key_prefix(secret) is not None:
                return _by_key(store, secret)
            return _by_password(store, throttle, client, user, secret)
        return Outcome(None, f"unsupported authorization scheme {scheme!r}")
    if session:
        identity = store.verify_session(session)
        return Outcome(identity, "" if identity else "expired or unknown session")
    return Outcome(None)


def client_address(headers: Mapping[str, str], peer: str | None, trust_forwarded: bool) -> str:
    """The caller's address: the last X-Forwarded-For hop, the one the edge itself added."""
    forwarded = headers.get("x-forwarded-for", "") if trust_forwarded else ""
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    return hops[-1] if hops else (peer or "unknown")


def _origin_of(url: str) -> str | None:
    """`scheme://host[:port]`, or None for what no browser sends (`https://localhost:abc`,
    `https://[`): such an origin matches nothing, and is never a 500."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if port is None or (parts.scheme, port) in (("https", 443), ("http", 80)):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def expected_origin(headers: Mapping[str, str], public_origin: str | None) -> str | None:
    if public_origin:
        return _origin_of(public_origin)
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not host:
        return None
    proto = headers.get("x-forwarded-proto", "https").split(",")[0].strip()
    return _origin_of(f"{proto}://{host.split(',')[0].strip()}")


def origin_allowed(
    method: str, headers: Mapping[str, str], public_origin: str | None, *, ambient: bool
) -> bool:
    """CSRF and cross-site websocket defense.

    A browser names the page's origin on every cross-origin request and every websocket
    handshake (which the edge may forward without its Upgrade header), so a foreign or
    opaque `Origin` is refused whatever the credentials. For ambient credentials (the session
    cookie) a change without any `Origin` must show `Sec-Fetch-Site: same-origin`, which
    every current browser sends. Non-browser clients send neither header and use keys.
    """
    origin = headers.get("origin")
    if origin is not None:
        expected = expected_origin(headers, public_origin)
        return (origin != "null" and expected is not None
                and _origin_of(origin) == expected)
    if ambient and method.upper() not in SAFE_METHODS:
        return headers.get("sec-fetch-site", "").lower() == "same-origin"
    return True


def wants_html(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """A browser navigation, which gets the sign-in page instead of a bare 401."""
    if method.upper() not in ("GET", "HEAD") or path == "/api" or path.startswith("/api/"):
        return False
    return "text/html" in headers.get("accept", "")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target) or target.startswith("/auth/"):
        return "/"
    return target
