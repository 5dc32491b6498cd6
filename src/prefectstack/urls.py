"""Host and URL spellings shared across the package. Pure, stdlib only."""

from __future__ import annotations

# Host names that mean "this machine" (URL hosts, as `urlsplit(...).hostname` gives them).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def api_url(server: str) -> str:
    """A Prefect server's API URL from its root or its API URL: `https://h` and
    `https://h/api/` both give `https://h/api`."""
    url = server.rstrip("/")
    return url if url.endswith("/api") else url + "/api"
