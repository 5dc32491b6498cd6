"""The port pre-check binds each port where the service will: a holder on another address
of the same host (127.0.0.2, a wildcard) is found before anything starts."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from prefectstack.errors import StackError
from prefectstack.runtime import ports
from prefectstack.topology import Service


def held(host: str) -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def on_127_0_0_2() -> Iterator[int]:
    yield from held("127.0.0.2")


def service(role: str, port: int) -> Service:
    return Service(name=role, role=role, kind="daemon", argv=("x",),  # type: ignore[arg-type]
                   ports=(port,))


def test_the_edge_binding_every_interface_sees_a_holder_on_another_address(
    on_127_0_0_2: int,
) -> None:
    with pytest.raises(StackError, match=f"port {on_127_0_0_2} \\(edge\\) is in use"):
        ports.check_free([service("edge", on_127_0_0_2)], edge_bind=[])


def test_a_loopback_service_or_an_edge_bound_elsewhere_is_not_blocked_by_it(
    on_127_0_0_2: int,
) -> None:
    ports.check_free([service("api", on_127_0_0_2)])  # binds 127.0.0.1 only
    ports.check_free([service("edge", on_127_0_0_2)], edge_bind=["127.0.0.1"])
    with pytest.raises(StackError):
        ports.check_free([service("edge", on_127_0_0_2)], edge_bind=["127.0.0.2"])


def test_a_wildcard_holder_blocks_a_loopback_service() -> None:
    for port in held("0.0.0.0"):
        with pytest.raises(StackError, match="in use"):
            ports.check_free([service("api", port)])
