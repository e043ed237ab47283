"""Envoy's request head limits and the loop guard of a sidecar (docs/fidelity.md §1.8, §1.6).

A real app on loopback (``rawapp``) sits behind the sidecar and records what reaches it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conformance.conftest import NS, Sidecars, config, endpoint, field_of
from tests.conformance.rawapp import RawApp, send_raw, send_raw_then_eof

LIMIT_BYTES = 60 * 1024  # HttpConnectionManager.max_request_headers_kb default: 60
LIMIT_COUNT = 100  # HttpProtocolOptions.max_headers_count default: 100
APP = f"app.{NS}.svc.cluster.local"


@pytest.fixture
async def raw_app() -> AsyncIterator[RawApp]:
    app = RawApp()
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _inbound(sidecars: Sidecars, app: RawApp) -> int:
    """A sidecar in front of ``app``: its inbound port."""
    sc = await sidecars.start("app-1", "app", app_port=app.port)
    services = {APP: {"name": "app", "namespace": NS, "ports": [8080],
                      "endpoints": [endpoint("app-1", sc.ports["inbound"])]}}
    assert (await sc.push(config("app-1", "app", services=services, app_port=app.port))).status \
        == 200
    return sc.ports["inbound"]


def _head(target: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _sized(target: str, total: int) -> list[tuple[str, str]]:
    """Fields whose Envoy head size (target + each name and value) is exactly ``total``."""
    fields = [("host", "app:8080")]
    used = len(target) + sum(len(k) + len(v) for k, v in fields) + len("x-big")
    return [*fields, ("x-big", "v" * (total - used))]


async def test_a_head_of_exactly_60_kib_is_served_and_one_byte_more_is_431(
        sidecars: Sidecars, raw_app: RawApp) -> None:
    """§1.8: Envoy's HTTP/1 codec refuses a request whose URL plus header names and values
    exceed ``max_request_headers_kb`` (60 KiB, ``checkMaxHeadersSize`` compares with ``>``)
    with ``431 Request Header Fields Too Large`` (details ``http1.headers_too_large``), the HCM
    marks the codec error ``DPE`` and closes the connection after the answer."""
    port = await _inbound(sidecars, raw_app)
    status, _ = await send_raw(port, _head("/fits", _sized("/fits", LIMIT_BYTES)))
    assert status == 200
    assert len(raw_app.seen[-1].one("x-big")) > 61_000  # the app got the whole field
    status, data, closed = await send_raw_then_eof(
        port, _head("/over", _sized("/over", LIMIT_BYTES + 1)))
    assert status == 431
    assert data.endswith(b"\r\n\r\nRequest Header Fields Too Large")
    assert closed
    assert [r.target for r in raw_app.seen] == ["/fits"]  # the refused one never reached it
    sc = sidecars.procs[-1]
    line = await sc.wait_log(lambda ln: "/over" in ln)
    assert (field_of(line, 2), field_of(line, 3), field_of(line, 4)) == (
        "431", "DPE", "http1.headers_too_large")
    assert field_of(line, 16) == "-" and field_of(line, 21) == "-"  # no cluster, no route


async def test_a_200_kb_header_is_refused_at_once(sidecars: Sidecars, raw_app: RawApp) -> None:
    """§1.8: the issue's 200 kB header, served 200 before, is refused while it arrives; the
    client still reads the 431 although it sent far more than the server read (Envoy's
    ``FlushWriteAndDelay`` close)."""
    port = await _inbound(sidecars, raw_app)
    start = time.monotonic()
    status, _ = await send_raw(port, _head("/huge", [("host", "app:8080"),
                                                     ("x-big", "v" * 200_000)]))
    assert status == 431
    assert time.monotonic() - start < 1.0
    assert not raw_app.seen


async def test_100_header_fields_are_served_and_101_are_431(
        sidecars: Sidecars, raw_app: RawApp) -> None:
    """§1.8: ``max_headers_count`` (default 100) counts the fields of the head; the 101st makes
    the codec answer ``431`` with details ``http1.too_many_headers``."""
    port = await _inbound(sidecars, raw_app)
    hundred = [("host", "app:8080"), *((f"x-h{i}", "1") for i in range(LIMIT_COUNT - 1))]
    status, _ = await send_raw(port, _head("/hundred", hundred))
    assert status == 200
    assert len(raw_app.seen[-1].fields) >= LIMIT_COUNT  # all of them, plus the sidecar's own
    status, _ = await send_raw(port, _head("/more", [*hundred, ("x-last", "1")]))
    assert status == 431
    line = await sidecars.procs[-1].wait_log(lambda ln: "/more" in ln)
    assert (field_of(line, 2), field_of(line, 3), field_of(line, 4)) == (
        "431", "DPE", "http1.too_many_headers")


async def test_the_outbound_listener_has_the_same_limits(
        sidecars: Sidecars, raw_app: RawApp) -> None:
    """§1.8: the limits are the HCM's, on every HTTP listener of the sidecar."""
    await _inbound(sidecars, raw_app)
    sc = sidecars.procs[-1]
    target = f"http://{APP}:8080/out"
    status, _ = await send_raw(sc.ports["outbound"],
                               _head(target, _sized(target, LIMIT_BYTES + 1)))
    assert status == 431


async def test_a_sidecar_never_proxies_to_its_own_outbound_listener(
        sidecars: Sidecars, raw_app: RawApp) -> None:
    """§1.6 loop guard: Envoy has no loop detection of its own; Istio's ``virtualOutbound``
    listener sends a connection to the capture port itself to ``BlackHoleCluster``
    (filter chain ``virtualOutbound-blackhole``). The passthrough (ALLOW_ANY) to the listener
    the request came in on is therefore ``503 UH`` on ``BlackHoleCluster`` at once, one line,
    where it used to loop until the sidecar ran out of file descriptors."""
    await _inbound(sidecars, raw_app)
    sc = sidecars.procs[-1]
    own = sc.ports["outbound"]
    start = time.monotonic()
    status, data = await send_raw(own, _head(f"http://127.0.0.1:{own}/loop",
                                             [("host", f"127.0.0.1:{own}")]))
    took = time.monotonic() - start
    assert status == 503 and data.endswith(b"no healthy upstream")
    assert took < 0.5, took
    await asyncio.sleep(0.2)  # the access log flushes every 50 ms: a loop would add lines
    lines = [ln for ln in sc.lines if "/loop" in ln]
    assert len(lines) == 1, lines
    line = lines[0]
    assert (field_of(line, 2), field_of(line, 3), field_of(line, 4)) == (
        "503", "UH", "no_healthy_upstream")
    assert field_of(line, 16) == "BlackHoleCluster" and field_of(line, 21) == "allow_any"
    # The same passthrough to another listener (here the sidecar's own inbound, which
    # hands over to the app) is no loop and still goes through.
    inbound = sc.ports["inbound"]
    status, _ = await send_raw(own, _head(f"http://127.0.0.1:{inbound}/via-inbound",
                                          [("host", f"127.0.0.1:{inbound}")]))
    assert status == 200
    assert raw_app.seen[-1].target == "/via-inbound"
