"""Real readiness probes: PostgreSQL and Redis protocol pings, HTTP GETs."""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from pathlib import Path

import httpx

from prefectstack.topology import Probe, Service

TIMEOUT = 1.0


def pg_ping(host: str, port: int) -> bool:
    """What pg_isready does: the postmaster answers an SSLRequest, and a StartupMessage
    tells a server that serves from one still starting up or shutting down."""
    try:
        # The postmaster accepts before it can serve; a StartupMessage tells them apart.
        return pg_listening(host, port) and _pg_accepts_startup(host, port)
    except OSError:
        return False


def pg_listening(host: str, port: int) -> bool:
    """The postmaster answers an SSLRequest: it listens (maybe not yet serving)."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


# postmaster.pid's 8th line: the postmaster's status (PostgreSQL 10+, what pg_ctl waits on)
_PM_STATUS_LINE = 7


def pg_status(pid_file: Path) -> str | None:
    """`starting`, `ready`, `stopping` or `standby` from a data dir's postmaster.pid; ""
    while it is absent or still being written; None when it can't be read."""
    try:
        lines = pid_file.read_text().splitlines()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError):
        return None
    return lines[_PM_STATUS_LINE].strip() if len(lines) > _PM_STATUS_LINE else ""


def _pg_accepts_startup(host: str, port: int) -> bool:
    params = b"user\0prefectstack_probe\0database\0postgres\0\0"
    body = struct.pack("!i", 196608) + params
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        reply = sock.recv(4096)
    if not reply:
        return False
    if reply[:1] == b"E":
        # "the database system is starting up" is 57P03; auth failures mean it is serving.
        return b"57P03" not in reply and b"57P01" not in reply
    return reply[:1] == b"R"  # an authentication request: up and serving


def redis_ping(host: str, port: int) -> bool:
    """PING without credentials: a serving Redis answers +PONG or -NOAUTH."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
        return answer.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT):
            return True
    except OSError:
        return False


_client: httpx.Client | None = None


def _http() -> httpx.Client:
    """One client for every probe: `httpx.get` would build a client (and its TLS context)
    on each call, the largest part of an idle supervisor's CPU. No connection is kept
    alive, so each probe connects afresh, as a restarted or hung service needs."""
    global _client
    if _client is None:
        _client = httpx.Client(
            timeout=TIMEOUT * 2, limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )
    return _client


def http_ok(probe: Probe) -> bool:
    try:
        response = _http().get(f"http://{probe.host}:{probe.port}{probe.path}")
        return response.status_code == 200
    except httpx.HTTPError:
        return False


class RealProber:
    def __init__(self, pg_pid_files: Mapping[str, Path] | None = None) -> None:
        # The postmaster.pid of each PostgreSQL this host runs: its status line says when
        # the server is ready without connecting, so the probe adds no "the database system
        # is starting up" FATAL to the log while it recovers.
        self.pg_pid_files = dict(pg_pid_files or {})

    def check(self, svc: Service) -> bool:
        probe = svc.probe
        if probe.kind == "pg":
            pid_file = self.pg_pid_files.get(svc.name)
            known = pg_status(pid_file) if pid_file else None
            if known is None:
                return pg_ping(probe.host, probe.port)
            return known == "ready" and pg_listening(probe.host, probe.port)
        if probe.kind == "redis":
            return redis_ping(probe.host, probe.port)
        if probe.kind == "http":
            return http_ok(probe)
        if probe.kind == "tcp":
            return tcp_open(probe.host, probe.port)
        return True
