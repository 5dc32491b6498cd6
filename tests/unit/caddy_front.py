"""The real Caddy binary in front of loopback upstreams, with the edge's own `reverse_proxy`
block (topology/caddyfile.py): for tests of the edge's balancing and retries."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from prefectstack.runtime.binaries import caddy


@contextmanager
def caddy_in_front(tmp_path: Path, proxy: str) -> Iterator[str]:
    """Run Caddy with `proxy` (a `reverse_proxy` block) on a free loopback port; yields its
    base URL once it answers, and stops it afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "Caddyfile").write_text(
        "{\n\tadmin off\n\tauto_https off\n"
        f"\tstorage file_system {tmp_path / 'caddy'}\n}}\n"
        f"http://127.0.0.1:{port} {{\n\thandle {{\n\t\t{proxy}\n\t}}\n}}\n")
    process = subprocess.Popen(
        [caddy(), "run", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # ready when the listener answers (a readiness signal, not a sleep)
        try:
            httpx.get(base + "/api/health", timeout=2)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, "caddy did not start"
            time.sleep(0.05)
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
