"""Both downstream transports (aiohttp and the lean localmesh.http pool) behave the same:
status through, absolute-form through a proxy, keep-alive, a closed connection on cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from fixtures.chain.errors import CallFailed, ConfigError
from fixtures.chain.testing import Forwarder, RecordingServer
from fixtures.chain.transport import AiohttpTransport, LeanTransport, Transport, make_transport

KINDS = [pytest.param("aiohttp", id="aiohttp"), pytest.param("lean", id="lean")]


@pytest.mark.parametrize("kind", KINDS)
async def test_status_and_headers_arrive_and_the_connection_is_reused(kind: str) -> None:
    """Keep-alive: two calls in a row share one connection (per-request cost stays low)."""
    async with RecordingServer(statuses=[201, 503]) as leaf:
        transport = make_transport(kind, None)
        try:
            first = await transport.get(f"{leaf.url}/a?x=1", {"traceparent": "tp"})
            second = await transport.get(f"{leaf.url}/b", {})
        finally:
            await transport.close()
    assert (first, second) == (201, 503)
    assert leaf.requests[0].headers["traceparent"] == "tp"
    assert leaf.requests[0].path == "/a" and leaf.requests[1].path == "/b"
    assert leaf.requests[0].peer == leaf.requests[1].peer


@pytest.mark.parametrize("kind", KINDS)
async def test_calls_go_through_the_proxy_by_service_name(kind: str) -> None:
    """architecture.md: outbound calls to http://<service>:<port>/... go through HTTP_PROXY,
    which routes by host (absolute-form request, RFC 9112 §3.2.2)."""
    async with RecordingServer() as leaf, Forwarder({}) as proxy:
        proxy.routes["orders"] = leaf.port
        transport = make_transport(kind, proxy.url)
        try:
            status = await transport.get("http://orders:8080/orders", {"x-request-id": "r1"})
        finally:
            await transport.close()
    assert status == 200
    assert proxy.seen[0]["Host"] == "orders:8080"
    assert leaf.requests[0].headers["x-request-id"] == "r1"


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_a_call_closes_its_connection_at_once(kind: str) -> None:
    """fidelity §1.1/§1.6: a reset stream closes the H1 connection, so the server sees
    its caller leave; measured at the server, within 50 ms."""
    async with RecordingServer(delay_s=5.0) as leaf:
        transport = make_transport(kind, None)
        try:
            call = asyncio.ensure_future(transport.get(f"{leaf.url}/slow", {}))
            await leaf.wait_arrived()
            cancelled_at = time.monotonic()
            call.cancel()
            (rec,) = await leaf.wait_ended()
        finally:
            await transport.close()
    assert rec.cancelled and rec.ended is not None and rec.ended - cancelled_at < 0.050


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_connection_is_a_call_without_answer(kind: str) -> None:
    transport = make_transport(kind, None)
    try:
        with pytest.raises(CallFailed, match=r"GET http://127.0.0.1:9/x got no answer"):
            await transport.get("http://127.0.0.1:9/x", {})
    finally:
        await transport.close()


async def test_auto_picks_the_lean_client_when_localmesh_is_installed() -> None:
    transports: list[Transport] = [make_transport("auto", None), make_transport("aiohttp", None)]
    try:
        assert isinstance(transports[0], LeanTransport)
        assert isinstance(transports[1], AiohttpTransport)
    finally:
        await asyncio.gather(*(t.close() for t in transports))


def test_unknown_transport_and_bad_proxy_are_refused() -> None:
    with pytest.raises(ConfigError, match="CHAIN_HTTP_CLIENT='curl'"):
        make_transport("curl", None)
    with pytest.raises(ConfigError, match="HTTP_PROXY='socks5://x:1'"):
        make_transport("lean", "socks5://x:1")
