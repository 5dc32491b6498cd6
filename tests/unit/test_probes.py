"""The PostgreSQL readiness probe: with the data dir's postmaster.pid it never connects to a
server that is still starting (no FATAL line in its log); without one it pings."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefectstack.runtime.probes import RealProber, pg_status
from prefectstack.topology import Probe, Service

# postmaster.pid as PostgreSQL 18 writes it (no unix socket directory: line 5 is empty)
PID_FILE = "4242\n/state/data/pgdata\n1796000000\n15432\n\n127.0.0.1\n  1234567     98304\n{}\n"


def test_the_status_line_is_read_as_pg_ctl_does(tmp_path: Path) -> None:
    pid_file = tmp_path / "postmaster.pid"
    assert pg_status(pid_file) == ""  # not started yet
    pid_file.write_text("4242\n/state/data/pgdata\n")
    assert pg_status(pid_file) == ""  # still being written
    for status in ("starting", "ready   ", "stopping"):
        pid_file.write_text(PID_FILE.format(status))
        assert pg_status(pid_file) == status.strip()
    pid_file.write_bytes(b"\xff\xfe")
    assert pg_status(pid_file) is None  # unreadable: the caller pings instead


@pytest.fixture
def postmaster() -> Iterator[tuple[int, list[bytes]]]:
    """Answers an SSLRequest with N (no SSL), as a listening postmaster does; records what
    each connection sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                seen.append(data)
                if data[4:8] == (80877103).to_bytes(4, "big"):
                    conn.sendall(b"N")

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], seen
    listener.close()


def test_a_starting_server_is_not_ready_and_is_never_sent_a_startup_message(
    tmp_path: Path, postmaster: tuple[int, list[bytes]],
) -> None:
    port, seen = postmaster
    pid_file = tmp_path / "postmaster.pid"
    svc = Service("postgres", role="postgres", kind="daemon", argv=("postgres",),
                  probe=Probe("pg", port=port))
    prober = RealProber({"postgres": pid_file})
    pid_file.write_text(PID_FILE.format("starting"))
    assert not prober.check(svc)
    assert seen == []  # not even a connection
    pid_file.write_text(PID_FILE.format("ready   "))
    assert prober.check(svc)
    assert len(seen) == 1 and seen[0][4:8] == (80877103).to_bytes(4, "big")  # SSLRequest only


def test_ready_in_the_file_but_not_listening_is_not_ready(tmp_path: Path) -> None:
    """A stale postmaster.pid (the server was killed with -9) says ready; nobody listens."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text(PID_FILE.format("ready   "))
    svc = Service("postgres", role="postgres", kind="daemon", argv=("postgres",),
                  probe=Probe("pg", port=port))
    assert not RealProber({"postgres": pid_file}).check(svc)
