"""Retries and Envoy's local replies on upstream failures (docs/fidelity.md §1.3, §1.6, §2.2)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from tests.conformance.conftest import LEAF, NS, Pair, endpoint, field_of, leaf_route


def _closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def dropping_server() -> AsyncIterator[tuple[int, list[int]]]:
    """Reads a request, then closes the connection without answering (a crash mid-request)."""
    hits: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        hits.append(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], hits
    finally:
        server.close()
        await server.wait_closed()


async def test_connect_refused_is_retried_then_503_uf_urx(pair: Pair) -> None:
    """§2.2 "connect refused/timeout → UF, retried ≤2x on other hosts → 503 UF,URX"; §1.6 body
    "upstream connect error or disconnect/reset before headers. retried and the latest reset
    reason: …", details `upstream_reset_before_response_started{…}`."""
    dead = endpoint("leaf-dead", _closed_port())
    await pair.configure(services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [dead]}})
    resp = await pair.call("/work")
    assert resp.status == 503
    body = resp.body.decode()
    assert body.startswith("upstream connect error or disconnect/reset before headers. "
                           "retried and the latest reset reason: remote connection failure")
    assert "transport failure reason: delayed connect error: Connection refused" in body
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UF,URX upstream_reset_before_response_started{remote_connection_failure|" \
           "delayed_connect_error:_Connection_refused} " in line
    assert field_of(line, -1) == "3"  # 1 try + Istio's 2 default retries


async def test_connect_failure_without_retries_has_no_retried_wording(pair: Pair) -> None:
    """§2.2 ConvertPolicy: `attempts <= 0` → no policy; §1.6 the body has no "retried and the
    latest" and the flags are just UF."""
    dead = endpoint("leaf-dead", _closed_port())
    await pair.configure(services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [dead]}},
                         routes=leaf_route(retries={"attempts": 0}))
    resp = await pair.call("/work")
    assert resp.status == 503
    assert resp.body.decode().startswith(
        "upstream connect error or disconnect/reset before headers. reset reason: "
        "remote connection failure")
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UF upstream_reset_before_response_started" in line


async def test_retry_moves_to_another_host_after_connect_failure(pair: Pair) -> None:
    """§2.2 default policy: `retry_host_predicate: previous_hosts` — the retry lands on the
    healthy endpoint and the caller sees 200."""
    dead = endpoint("leaf-dead", _closed_port())
    services = pair.services([dead])
    services[LEAF]["endpoints"] = [dead, services[LEAF]["endpoints"][0]]
    await pair.configure(services=services)
    for _ in range(4):
        resp = await pair.call("/work")
        assert resp.status == 200


async def test_connection_dropped_mid_request_is_503_uc_and_not_retried(
        pair: Pair, dropping_server: tuple[int, list[int]]) -> None:
    """§2.2 "connection dropped mid-request → 503 UC/UR, not retried"; §1.6 ConnectionTermination
    → UC, reset reason `connection termination`."""
    port, hits = dropping_server
    await pair.configure(services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [endpoint("leaf-x", port)]}})
    resp = await pair.call("/work")
    assert resp.status == 503
    assert resp.body.decode() == ("upstream connect error or disconnect/reset before headers. "
                                  "reset reason: connection termination")
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UC upstream_reset_before_response_started{connection_termination} " in line
    assert hits == [1]


async def test_reset_is_retried_when_retry_on_has_reset(
        pair: Pair, dropping_server: tuple[int, list[int]]) -> None:
    """§1.3 `reset` (no response) retries a dropped connection; exhausted → UC,URX (§1.2)."""
    port, hits = dropping_server
    await pair.configure(services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [endpoint("leaf-x", port)]}},
                         routes=leaf_route(retries={"attempts": 1, "retry_on": ["reset"]}))
    resp = await pair.call("/work")
    assert resp.status == 503
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UC,URX " in line
    assert hits == [1, 1]


async def test_retriable_status_code_from_retry_on_integers(pair: Pair) -> None:
    """§2.2 ConvertPolicy: integer retryOn tokens become `retriable_status_codes`; the last
    response is returned with URX once retries are exhausted (§1.2)."""
    await pair.configure(routes=leaf_route(retries={
        "attempts": 2, "retry_on": ["retriable-status-codes"], "retriable_status_codes": [503]}))
    resp = await pair.call("/work?status=503")
    assert resp.status == 503
    assert len(pair.app.seen) == 3
    line = await pair.front.wait_log(lambda ln: "status=503" in ln)
    assert " 503 URX via_upstream " in line


async def test_default_policy_does_not_retry_a_503_response(pair: Pair) -> None:
    """§2.2: `retriable_status_codes: []` (503 dropped in 1.24): a 503 answer is not retried."""
    await pair.configure()
    resp = await pair.call("/work?status=503")
    assert resp.status == 503
    assert len(pair.app.seen) == 1


async def test_no_ready_endpoint_is_503_uh(pair: Pair) -> None:
    """§1.6 other flags: UH = no healthy upstream (503)."""
    not_ready = endpoint("leaf-1", pair.leaf.ports["inbound"], ready=False)
    await pair.configure(services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [not_ready]}})
    resp = await pair.call("/work")
    assert resp.status == 503
    assert resp.body == b"no healthy upstream"
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UH no_healthy_upstream " in line


async def test_unknown_host_is_404_nr(pair: Pair) -> None:
    """§1.6 other flags: NR = no route (404)."""
    await pair.configure()
    resp = await pair.call("/work", host="nowhere:8080")
    assert resp.status == 404
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert " 404 NR route_not_found " in line


async def test_virtual_service_without_matching_route_is_404_nr(pair: Pair) -> None:
    """§1.6 NR: a host whose routes match nothing gets no route."""
    await pair.configure(routes=leaf_route(prefix="/only"))
    assert (await pair.call("/work")).status == 404
    assert (await pair.call("/only/x")).status == 200


async def test_app_down_behind_the_callee_sidecar_is_503_uf(pair: Pair) -> None:
    """docs/architecture.md: pods whose app is down "serve 503 UF to callers"; the inbound
    default route retries only `reset-before-request` (§2.2)."""
    await pair.configure()
    await pair.app.stop()
    resp = await pair.call("/work")
    assert resp.status == 503
    line = await pair.leaf.wait_log(lambda ln: "GET /work " in ln)
    assert " 503 UF,URX " in line
    assert " inbound|8080|| " in line


async def test_upstream_service_time_header_on_proxied_responses(pair: Pair) -> None:
    """§1.5 `x-envoy-upstream-service-time` (response): ms to upstream response headers."""
    await pair.configure()
    resp = await pair.call("/work?sleep=0.2")
    assert resp.status == 200
    assert int(resp.headers["x-envoy-upstream-service-time"]) >= 200


async def test_ip_address_that_is_no_service_passes_through(pair: Pair) -> None:
    """Istio's default outboundTrafficPolicy ALLOW_ANY: traffic to an address outside the
    registry goes through the PassthroughCluster (route `allow_any`); unknown names stay NR."""
    await pair.configure()
    resp = await pair.call("/outside", host=f"127.0.0.1:{pair.app.port}")
    assert resp.status == 200
    assert pair.app.seen[-1].path == "/outside"
    line = await pair.front.wait_log(lambda ln: "/outside" in ln)
    assert " PassthroughCluster " in line and " allow_any " in line
