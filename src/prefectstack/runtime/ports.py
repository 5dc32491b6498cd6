"""Check that every port a stack binds is free, and name whoever holds one."""

from __future__ import annotations

import errno
import socket

import psutil

from prefectstack.errors import StackError
from prefectstack.topology import LOOPBACK, Service


def holder(port: int) -> str:
    """`pid 123 (postgres -D ...)` for the process listening on `port`, when visible."""
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return "another process"
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return "another process"
            try:
                proc = psutil.Process(conn.pid)
                cmd = " ".join(proc.cmdline())[:80] or proc.name()
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd})"
    return "another process"


def is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether `port` can be bound on `host` as the service will bind it. The wildcard
    addresses (`0.0.0.0`, `::`) collide with a holder on any address of their family."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return True  # no IPv6 here: nothing can hold the port on it either
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return True  # an address this host doesn't have: the start will say so
            raise
    return True


def bind_addresses(svc: Service, edge_bind: list[str]) -> list[str]:
    """Where the local backend's process for `svc` binds: the edge on its listen addresses
    (every interface when none is set), everything else on loopback."""
    if svc.role == "edge":
        return list(edge_bind) or ["0.0.0.0", "::"]  # what Caddy binds with no `bind`
    return [LOOPBACK]


def check_free(services: list[Service], edge_bind: list[str] | None = None) -> None:
    busy = [
        f"port {port} ({svc.name}) is in use by {holder(port)}"
        for svc in services
        for port in svc.ports
        if not all(is_free(port, host) for host in bind_addresses(svc, edge_bind or []))
    ]
    if busy:
        raise StackError(
            "cannot start: " + "; ".join(busy),
            hint="stop that process, or choose another port in the stack file "
            "(postgres.port, redis.port, api.port, edge.https_port, edge.http_port, auth.port, "
            "workers[N].health_port)",
        )
