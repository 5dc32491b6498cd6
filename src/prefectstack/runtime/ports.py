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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_free(services: list[Service]) -> None:
    busy = [
        f"port {port} ({svc.name}) is in use by {holder(port)}"
        for svc in services
        for port in svc.ports
        if not is_free(port)
    ]
    if busy:
        raise StackError(
            "cannot start: " + "; ".join(busy),
            hint="stop that process, or choose another port in the stack file "
            "(postgres.port, redis.port, api.port, edge.https_port, edge.http_port, auth.port, "
            "workers[N].health_port)",
        )
