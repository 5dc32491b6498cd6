"""One Prefect API process: what `prefect server start --no-services` runs (Prefect 3.8.8,
prefect/cli/_server_utils.py `_run_in_foreground`, one uvicorn worker), plus a drain.

SIGUSR2 drains the process: from then on `GET /api/health`, the edge's active health check,
answers 503 while every other request is still served. The edge stops sending it requests
at its next check, and a restart after that closes no connection the edge could be sending
a request on. Without it, a POST the edge wrote on an idle keep-alive connection at the
moment uvicorn closed it got a 502 (the edge cannot resend a write): the upgrade drill saw
one in 2,276 requests. `/api/ready`, the supervisor's and the orchestrators' probe, stays
as it is, so a draining process is not taken for a hung one.

Runs with the stack's environment (topology/settings.py `server_env`), which carries every
setting `prefect server start` would read; the topology runs it as
`python -m prefectstack.jobs.api_server --host H --port P`.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

HEALTH_PATH = "/api/health"
DRAIN_SIGNAL = signal.SIGUSR2

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Drain:
    """ASGI middleware: `GET /api/health` answers 503 once `start()` was called."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.draining = False

    def start(self, *_args: object) -> None:
        self.draining = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.draining and scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b'"draining"'})
            return
        await self.app(scope, receive, send)


def port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on, if it cannot: checked before Prefect is
    imported, as `prefect server start` does. Otherwise uvicorn would find out only after
    the app's start-up (tens of seconds on a loaded machine), on every restart."""
    try:
        info = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
        family, kind, proto, _name, address = info[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        reason = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        if exc.errno == errno.EADDRINUSE:  # Prefect's own words, which users search for
            return f"Port {port} is already in use ({reason})"
        return reason
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefectstack.jobs.api_server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    problem = port_taken(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(1)

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    app = Drain(create_app(final=True, webserver_only=True))
    signal.signal(DRAIN_SIGNAL, app.start)  # uvicorn handles only SIGINT and SIGTERM
    uvicorn.run(
        app=app,
        host=args.host,
        port=args.port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower(),
    )


if __name__ == "__main__":
    main()
