"""prefectstack.urls: the loopback host names and the /api URL of a server."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from prefectstack.urls import LOOPBACK_HOSTS, api_url


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("https://prefect.example.com", "https://prefect.example.com/api"),
        ("https://prefect.example.com/", "https://prefect.example.com/api"),
        ("https://prefect.example.com/api", "https://prefect.example.com/api"),
        ("https://prefect.example.com/api/", "https://prefect.example.com/api"),
        ("http://127.0.0.1:4200", "http://127.0.0.1:4200/api"),
        ("https://h:8443/prefect", "https://h:8443/prefect/api"),
        ("https://h/apis", "https://h/apis/api"),
    ],
)
def test_api_url_appends_api_once(server: str, expected: str) -> None:
    assert api_url(server) == expected
    assert api_url(api_url(server)) == expected


@pytest.mark.parametrize("url", ["http://localhost:4200", "http://127.0.0.1", "http://[::1]:80"])
def test_loopback_urls_have_loopback_hostnames(url: str) -> None:
    assert urlsplit(url).hostname in LOOPBACK_HOSTS


@pytest.mark.parametrize("url", ["https://prefect.example.com", "http://10.0.0.1:4200"])
def test_other_hosts_are_not_loopback(url: str) -> None:
    assert urlsplit(url).hostname not in LOOPBACK_HOSTS
