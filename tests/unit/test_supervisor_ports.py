"""Loopback ports for pods are held until their process is about to bind them."""

from __future__ import annotations

import socket

import pytest

from localmesh.supervisor.ports import PortAllocator


def plain_bind(port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_held_port_cannot_be_taken_until_released() -> None:
    ports = PortAllocator()
    port = ports.allocate()
    try:
        with pytest.raises(OSError):
            plain_bind(port)
    finally:
        ports.release(port)
    plain_bind(port)


def test_ports_are_distinct_and_not_handed_out_twice_in_a_row() -> None:
    ports = PortAllocator()
    first = [ports.allocate() for _ in range(20)]
    ports.release_all()
    second = [ports.allocate() for _ in range(20)]
    ports.release_all()
    assert len(set(first)) == 20 and not set(first) & set(second)
