"""localmesh.http's server: head limits as Envoy's HTTP/1 codec counts them, and repeated
fields kept apart (docs/fidelity.md §1.8, §3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from localmesh.http import Request, Response, ServerConnection
from localmesh.http.server import ENVOY_HEAD_LIMITS, HeadLimits, serve
from tests.conformance.rawapp import send_raw, send_raw_then_eof

SMALL = HeadLimits(max_bytes=40, max_count=3)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def __call__(self, req: Request, conn: ServerConnection) -> Response:
        self.requests.append(req)
        return Response(200, {}, b"ok")


@pytest.fixture
async def small_server() -> AsyncIterator[tuple[int, Recorder]]:
    rec = Recorder()
    server = await serve(rec, limits=SMALL)
    try:
        yield server.sockets[0].getsockname()[1], rec
    finally:
        server.close()
        await server.wait_closed()


def _head(target: str, *fields: tuple[str, str]) -> bytes:
    return "".join([f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in fields),
                    "\r\n"]).encode()


def test_envoy_defaults_are_60_kib_and_100_fields() -> None:
    """§1.8: max_request_headers_kb 60 (HttpConnectionManager), max_headers_count 100
    (HttpProtocolOptions)."""
    assert (ENVOY_HEAD_LIMITS.max_bytes, ENVOY_HEAD_LIMITS.max_count) == (61_440, 100)


async def test_the_size_counts_target_names_and_values_and_refuses_only_above(
        small_server: tuple[int, Recorder]) -> None:
    """§1.8 ``getHeadersSize``: URL + each name + each value, no separators; ``>`` the limit."""
    port, rec = small_server
    # "/t" (2) + "host" "h" (5) + "x-a" (3) + 30 = 40: exactly the limit
    assert (await send_raw(port, _head("/t", ("host", "h"), ("x-a", "v" * 30))))[0] == 200
    status, data, closed = await send_raw_then_eof(
        port, _head("/t", ("host", "h"), ("x-a", "v" * 31)))
    assert status == 431 and closed
    assert data.endswith(b"Request Header Fields Too Large")
    assert len(rec.requests) == 1


async def test_the_fourth_field_over_a_limit_of_three_is_refused(
        small_server: tuple[int, Recorder]) -> None:
    """§1.8 ``completeLastHeader``: the count is checked as each field ends, ``>`` the limit."""
    port, rec = small_server
    assert (await send_raw(port, _head("/", ("a", "1"), ("b", "1"), ("c", "1"))))[0] == 200
    assert (await send_raw(port, _head("/", ("a", "1"), ("b", "1"), ("c", "1"),
                                       ("d", "1"))))[0] == 431
    assert len(rec.requests) == 1


async def test_the_refusal_hook_builds_the_answer(small_server: tuple[int, Recorder]) -> None:
    """The sidecar's hook sees the head so far and the details Envoy would log."""
    seen: list[tuple[str, int, str]] = []

    def refused(req: Request, conn: ServerConnection, status: int, details: str) -> Response:
        seen.append((req.target, status, details))
        return Response(status, {}, b"mine")

    server = await serve(Recorder(), limits=SMALL, refused=refused)
    port = server.sockets[0].getsockname()[1]
    try:
        status, data = await send_raw(port, _head("/r", ("a", "1"), ("b", "1"), ("c", "1"),
                                                  ("d", "1")))
        assert status == 431 and data.endswith(b"mine")
        status, _ = await send_raw(port, _head("/big", ("a", "v" * 100)))
        assert status == 431
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [("/r", 431, "http1.too_many_headers"), ("/big", 431,
                                                           "http1.headers_too_large")]


async def test_without_limits_a_large_head_is_served() -> None:
    """Servers other than the sidecar's data path (admin, apps) keep no limit."""
    rec = Recorder()
    server = await serve(rec)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await send_raw(port, _head("/", ("x", "v" * 100_000))))[0] == 200
    finally:
        server.close()
        await server.wait_closed()


async def test_repeated_fields_are_joined_and_also_kept_apart() -> None:
    """RFC 9110 §5.3 joins repeated fields with ", "; ``Request.repeated`` keeps each value
    for the tracer, which reads the first ``traceparent`` as Envoy's header map does (§3)."""
    rec = Recorder()
    server = await serve(rec)
    port = server.sockets[0].getsockname()[1]
    try:
        await send_raw(port, _head("/", ("traceparent", "a"), ("x-one", "1"),
                                   ("traceparent", "b"), ("TraceParent", "c")))
        await send_raw(port, _head("/", ("x-one", "1")))
    finally:
        server.close()
        await server.wait_closed()
    first, second = rec.requests
    assert first.headers["traceparent"] == "a, b, c"
    assert first.repeated == {"traceparent": ["a", "b", "c"]}
    assert second.repeated is None
