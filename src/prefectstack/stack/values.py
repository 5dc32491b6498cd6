"""Checks for values that several stack-file sections share: host names, URLs and schedules.

Each value is read the way the program that finally uses it reads it (cron with Prefect's own
croniter, time zones with zoneinfo, rrules with dateutil, as Prefect 3.8.8 does), so that a
file that validates is one those accept. Each check returns the value or raises ValueError,
for pydantic validators.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import ipaddress
import re
import sys
import zoneinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_CRONITER = "prefectstack._croniter"  # the module name Prefect's croniter file is loaded as
# Prefect's limit (prefect._internal.schemas.validators.MAX_RRULE_LENGTH)
MAX_RRULE_LENGTH = 6500


def _ip_literal(host: str) -> bool:
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return False
    return not bracketed or address.version == 6


def check_host(host: str) -> str:
    """A host name (RFC 1123: dot-separated labels of letters, digits and inner dashes) or
    an IP address (IPv6 bare or in brackets)."""
    if _ip_literal(host):
        return host
    if not host.strip():
        raise ValueError("empty; give a host name such as `prefect.example.com`, or an IP address")
    if "/" in host or ":" in host:
        raise ValueError("give a bare host name or IP address, without scheme or port")
    if len(host) > 253:
        raise ValueError(f"`{host[:40]}...` is longer than the 253 characters a host name can be")
    bad = next((label for label in host.split(".") if not _LABEL.match(label)), None)
    if bad is not None:
        shown = "" if bad == host else f" (`{bad}`)" if bad else " (an empty part)"
        raise ValueError(
            f"`{host}` is not a valid host name{shown}: each dot-separated part has 1 to 63 "
            "letters, digits or inner dashes; no spaces or underscores"
        )
    if host.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"`{host}` is neither a host name nor a valid IP address")
    return host


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """A URL with one of `schemes`, a valid port if it has one, and a valid host if it names
    one (libpq-style `host=` parameters and multi-host lists are left to the driver)."""
    if not url.startswith(tuple(f"{s}://" for s in schemes)):
        raise ValueError(f"must start with {' or '.join(f'{s}://' for s in schemes)}")
    parts = urlsplit(url)
    if "," in parts.netloc:
        return url
    try:
        parts.port  # noqa: B018 (it raises for a port out of range or not a number)
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if parts.hostname:
        try:
            check_host(parts.hostname)
        except ValueError as exc:
            raise ValueError(f"the host: {exc}") from None
    return url


def check_public_url(url: str) -> str:
    """An http(s) URL with a host, as browsers use it: no query or fragment."""
    check_url(url, ("https", "http"))
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("the URL has no host, e.g. https://prefect.example.com")
    if parts.query or parts.fragment:
        raise ValueError("give the URL without `?query` or `#fragment`")
    return url


@functools.cache
def _croniter() -> Any:
    """The croniter Prefect 3.8.8 parses cron with: its vendored copy. Importing
    `prefect._vendor.croniter` imports all of Prefect (~2 s), so load that one file by path
    (it imports only the standard library, pytz and dateutil), or else import it."""
    spec = importlib.util.find_spec("prefect")  # finds the package without importing it
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "_vendor" / "croniter" / "croniter.py"
        file_spec = importlib.util.spec_from_file_location(_CRONITER, path)
        if path.is_file() and file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[_CRONITER] = module
            file_spec.loader.exec_module(module)
            return module.croniter
    return importlib.import_module("prefect._vendor.croniter").croniter


def check_cron(expression: str) -> str:
    """Prefect's rule (validate_cron_string): croniter accepts it, without R or H fields."""
    croniter = _croniter()
    if not croniter.is_valid(expression):
        try:
            croniter(expression)
            reason = ""
        except Exception as exc:  # croniter's own errors, whose text says what is wrong
            reason = f" ({exc})"
        raise ValueError(
            f"`{expression}` is not a valid cron expression{reason}; its 5 fields are minute "
            "(0-59), hour (0-23), day of month (1-31), month (1-12) and day of week (0-6), "
            "e.g. `0 9 * * 1-5`"
        )
    if any(field.casefold() in ("r", "h") for field in expression.split()):
        raise ValueError(f"`{expression}`: random (R) and hashed (H) fields are not supported "
                         "by Prefect")
    return expression


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str) -> str:
    """Prefect's rule (default_timezone): a name in zoneinfo's available time zones."""
    zones = _timezones()
    if zones and name not in zones:
        close = difflib.get_close_matches(name, sorted(zones), n=1, cutoff=0.7)
        suggestion = f"did you mean `{close[0]}`?" if close else "e.g. `Europe/Berlin` or `UTC`"
        raise ValueError(f"`{name}` is not an IANA time zone; {suggestion}")
    return name


def check_rrule(rule: str) -> str:
    """Prefect's rule (validate_rrule_string): dateutil parses it, and it is not too long."""
    rrulestr = importlib.import_module("dateutil.rrule").rrulestr  # no type stubs installed
    if len(rule) > MAX_RRULE_LENGTH:
        raise ValueError(f"the rule is {len(rule)} characters long; Prefect takes at most "
                         f"{MAX_RRULE_LENGTH}")
    try:
        rrulestr(rule, cache=True)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(
            f"`{rule}` is not a valid iCalendar recurrence rule ({exc}); "
            "e.g. `FREQ=WEEKLY;BYDAY=MO,WE,FR`"
        ) from None
    return rule
