"""The init containers' wait program (prefectstack.jobs.wait), against real sockets and a
real HTTP server on 127.0.0.1; the Kubernetes API is played by a local server too."""

from __future__ import annotations

import ast
import json
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest

from prefectstack.jobs import wait

Responder = Callable[[BaseHTTPRequestHandler], tuple[int, bytes]]


@pytest.fixture()
def serve() -> Iterator[Callable[[Responder], str]]:
    """Start an HTTP server on 127.0.0.1 answering with `respond(handler)`; returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(respond: Responder) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = respond(self)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_tcp_is_ready_once_the_port_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert wait.tcp("127.0.0.1", str(server.getsockname()[1])) is True


def test_tcp_to_a_closed_port_fails() -> None:
    with pytest.raises(ConnectionRefusedError):
        wait.tcp("127.0.0.1", str(closed_port()))


def test_http_is_ready_on_200_only(serve: Callable[[Responder], str]) -> None:
    url = serve(lambda h: (200, b"ok") if h.path == "/up" else (503, b"down"))
    assert wait.http(f"{url}/up") is True
    with pytest.raises(urllib.error.HTTPError, match="503"):
        wait.http(f"{url}/down")


def test_the_loop_gives_up_after_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    port = str(closed_port())
    assert wait.wait("tcp", ["127.0.0.1", port], interval=0.05, timeout=0.3) is False
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2
    assert all(line.startswith(f"waiting for tcp 127.0.0.1 {port}: ") for line in lines)


def test_the_loop_retries_until_the_port_opens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = str(server.getsockname()[1])
        timer = threading.Timer(0.3, server.listen)
        timer.start()
        try:
            assert wait.wait("tcp", ["127.0.0.1", port], interval=0.05, timeout=10) is True
        finally:
            timer.join()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"waiting for tcp 127.0.0.1 {port}: ")
    assert lines[-1] == f"ready: tcp 127.0.0.1 {port}"


def test_the_loop_retries_while_the_server_answers_503(
    serve: Callable[[Responder], str], capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    def respond(handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        calls.append(handler.path)
        return (503, b"starting") if len(calls) < 3 else (200, b"ok")

    url = serve(respond) + "/api/ready"
    assert wait.wait("http", [url], interval=0.01, timeout=10) is True
    assert len(calls) == 3
    out = capsys.readouterr().out.splitlines()
    assert out == [f"waiting for http {url}: HTTP Error 503: Service Unavailable"] * 2 + [
        f"ready: http {url}"
    ]


def fake_account(tmp_path: Path) -> Path:
    """A service-account directory like the one Kubernetes mounts into a pod."""
    (tmp_path / "namespace").write_text("prod\n")
    (tmp_path / "token").write_text("t0ken\n")
    shutil.copy(certifi.where(), tmp_path / "ca.crt")
    return tmp_path


def test_job_request_reads_the_namespace_and_token(tmp_path: Path) -> None:
    request = wait.job_request("migrate-abc", str(fake_account(tmp_path)))
    assert request.full_url == (
        "https://kubernetes.default.svc/apis/batch/v1/namespaces/prod/jobs/migrate-abc"
    )
    assert request.get_header("Authorization") == "Bearer t0ken"


def test_job_is_ready_once_it_succeeded(
    tmp_path: Path, serve: Callable[[Responder], str]
) -> None:
    statuses = {"done": {"succeeded": 1}, "running": {"active": 1}}
    seen: list[tuple[str, str | None]] = []

    def respond(handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        seen.append((handler.path, handler.headers.get("Authorization")))
        name = handler.path.rsplit("/", 1)[-1]
        if name not in statuses:
            return 404, b'{"kind": "Status", "code": 404}'
        return 200, json.dumps({"kind": "Job", "status": statuses[name]}).encode()

    api = serve(respond)
    account = str(fake_account(tmp_path))
    assert wait.job("done", account, api) is True
    assert wait.job("running", account, api) is False
    with pytest.raises(urllib.error.HTTPError, match="404"):
        wait.job("missing", account, api)
    assert seen[0] == ("/apis/batch/v1/namespaces/prod/jobs/done", "Bearer t0ken")


@pytest.mark.parametrize(
    "argv", [[], ["nope", "x"], ["tcp", "127.0.0.1"], ["http"], ["job", "a", "b"]]
)
def test_a_usage_error_exits_2_instead_of_waiting(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert wait.main(argv) == 2
    assert capsys.readouterr().err.startswith("usage: wait.py tcp HOST PORT | http URL | ")


def test_main_returns_0_once_ready(serve: Callable[[Responder], str]) -> None:
    assert wait.main(["http", serve(lambda h: (200, b"ok"))]) == 0


def test_the_configmap_ships_this_module_and_it_needs_only_the_standard_library() -> None:
    from prefectstack.render import kubernetes

    source = Path(wait.__file__).read_text(encoding="utf-8")
    assert source == kubernetes.WAIT_SCRIPT
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_the_rendered_script_runs_on_its_own(
    tmp_path: Path, serve: Callable[[Responder], str]
) -> None:
    from prefectstack.render import kubernetes

    script = tmp_path / "wait.py"
    script.write_text(kubernetes.WAIT_SCRIPT)
    url = serve(lambda h: (200, b"ok"))
    ready = subprocess.run([sys.executable, "-I", str(script), "http", url],
                           capture_output=True, text=True, timeout=30, check=False)
    assert (ready.returncode, ready.stdout) == (0, f"ready: http {url}\n"), ready.stderr
    usage = subprocess.run([sys.executable, "-I", str(script)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert usage.returncode == 2
