"""The API key format, shared by the auth service (which checks keys) and the runtime (which
generates the stack's own keys before the auth service exists). Pure, stdlib only."""

from __future__ import annotations

import re
import secrets

KEY_PATTERN = re.compile(r"^pfs_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")


def new_api_key() -> str:
    """`pfs_<8 hex>_<43 url-safe chars>`: the prefix is public (logs), the rest is secret."""
    return f"pfs_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_prefix(key: str) -> str | None:
    """The public part of a well-formed key (`pfs_ab12cd34`), else None."""
    return key[:12] if KEY_PATTERN.fullmatch(key) else None
