"""Header sanitising and the headers the sidecars add (docs/fidelity.md §1.4, §1.7, §3)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from localmesh.sidecar.headers import new_request_id
from localmesh.sidecar.tracing import new_trace_id
from tests.conformance.conftest import Pair, leaf_route

APP_TIMEOUT_HEADERS = {
    "x-envoy-upstream-rq-timeout-ms": "200",
    "x-envoy-max-retries": "0",
    "x-envoy-retry-on": "5xx",
    "x-envoy-expected-rq-timeout-ms": "1234",
}


async def test_app_timeout_headers_are_stripped_by_default(pair: Pair) -> None:
    """§1.7.6: "By default, an app's x-envoy-upstream-rq-timeout-ms/-retry-on/-max-retries are
    stripped by its own sidecar. A downstream x-envoy-expected-rq-timeout-ms is stripped by the
    next inbound sidecar" — so no 504 and the callee app sees none of them."""
    await pair.configure()
    start = time.monotonic()
    resp = await pair.call("/work?sleep=0.5", APP_TIMEOUT_HEADERS)
    assert resp.status == 200
    assert time.monotonic() - start >= 0.5
    seen = pair.app.seen[-1].headers
    for name in APP_TIMEOUT_HEADERS:
        assert name not in seen


async def test_app_timeout_header_is_honoured_with_the_switch_on(pair: Pair) -> None:
    """§1.4: `x-envoy-upstream-rq-timeout-ms` "overrides the route/grpc timeout … removed after
    parsing"; §1.7.7 the emulator's switch "sidecar honours app x-envoy-*"."""
    await pair.configure(mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?sleep=2", {"x-envoy-upstream-rq-timeout-ms": "300"})
    assert resp.status == 504
    assert resp.body == b"upstream request timeout"
    seen = pair.app.seen[-1].headers
    assert "x-envoy-upstream-rq-timeout-ms" not in seen
    assert seen["x-envoy-expected-rq-timeout-ms"] == "300"


async def test_app_max_retries_header_is_honoured_with_the_switch_on(pair: Pair) -> None:
    """§1.4 `x-envoy-max-retries` overrides num_retries; `x-envoy-retry-on` adds conditions."""
    await pair.configure(mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?status=500", {"x-envoy-retry-on": "5xx",
                                                "x-envoy-max-retries": "1"})
    assert resp.status == 500
    assert len(pair.app.seen) == 2


async def test_inbound_sidecar_strips_internal_headers_from_callers_by_default(
        pair: Pair) -> None:
    """§1.7.4: an external request loses `x-envoy-expected-rq-timeout-ms`, `-retry-on`, …;
    sent straight to the callee's inbound listener (no outbound sidecar in between)."""
    await pair.configure()
    resp = await pair.pool.request(
        "GET", f"http://127.0.0.1:{pair.leaf.ports['inbound']}/direct",
        {"host": "leaf:8080", **APP_TIMEOUT_HEADERS, "x-envoy-internal": "true"}, timeout=5)
    assert resp.status == 200
    seen = pair.app.seen[-1].headers
    for name in [*APP_TIMEOUT_HEADERS, "x-envoy-internal"]:
        assert name not in seen


async def test_inbound_sidecar_passes_internal_headers_with_the_switch_on(pair: Pair) -> None:
    """§1.7: internal requests keep the x-envoy-* headers; the switch makes callers internal."""
    await pair.configure(mesh={"honor_app_envoy_headers": True})
    resp = await pair.pool.request(
        "GET", f"http://127.0.0.1:{pair.leaf.ports['inbound']}/direct",
        {"host": "leaf:8080", **APP_TIMEOUT_HEADERS}, timeout=5)
    assert resp.status == 200
    seen = pair.app.seen[-1].headers
    for name, value in APP_TIMEOUT_HEADERS.items():
        assert seen[name] == value


async def test_request_id_is_generated_when_missing_and_kept_when_present(pair: Pair) -> None:
    """§3: `x-request-id` "generated (UUIDv4) if missing … sidecars keep an incoming id"."""
    await pair.configure()
    await pair.call("/a")
    generated = pair.app.seen[-1].headers["x-request-id"]
    assert uuid.UUID(generated).version == 4
    await pair.call("/b", {"x-request-id": "my-id-1"})
    assert pair.app.seen[-1].headers["x-request-id"] == "my-id-1"


async def test_peer_metadata_id_is_added_outbound_and_removed_inbound(pair: Pair) -> None:
    """docs/architecture.md: "x-envoy-peer-metadata-id … that every outbound sidecar adds and
    every inbound sidecar removes, as Istio's metadata exchange does"."""
    await pair.configure()
    await pair.call("/a")
    assert "x-envoy-peer-metadata-id" not in pair.app.seen[-1].headers
    assert pair.app.seen[-1].headers["x-forwarded-proto"] == "http"


async def test_hop_by_hop_headers_are_not_forwarded(pair: Pair) -> None:
    """RFC 9110 §7.6.1: connection-specific fields (and those named in Connection) are not
    forwarded by a proxy."""
    await pair.configure()
    # Written by hand: the lean client never sends hop-by-hop fields itself.
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.front.ports["outbound"])
    writer.write(b"GET http://leaf:8080/a HTTP/1.1\r\nhost: leaf:8080\r\n"
                 b"connection: close, x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\n"
                 b"proxy-authorization: Basic eA==\r\nte: trailers\r\nx-kept: yes\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    seen = pair.app.seen[-1].headers
    for name in ("x-private", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen
    assert seen["x-kept"] == "yes"


async def test_origin_form_with_host_header_is_routed_like_absolute_form(pair: Pair) -> None:
    """docs/architecture.md outbound listener: "absolute-form requests … (or origin-form with
    a Host header) routed by host to a Service"; short names resolve in the caller's
    namespace."""
    await pair.configure(routes=leaf_route())
    resp = await pair.pool.request(
        "GET", f"http://127.0.0.1:{pair.front.ports['outbound']}/origin",
        {"host": "leaf.shop.svc.cluster.local:8080"}, timeout=5)
    assert resp.status == 200
    assert pair.app.seen[-1].path == "/origin"


async def test_app_per_try_timeout_header_is_honoured_with_the_switch_on(pair: Pair) -> None:
    """§1.4 `x-envoy-upstream-rq-per-try-timeout-ms` sets the per-try timeout (removed after
    parsing); retried here because the app also asked `x-envoy-retry-on: 5xx` (§1.2)."""
    await pair.configure(mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?sleep=2", {"x-envoy-upstream-rq-per-try-timeout-ms": "200",
                                             "x-envoy-retry-on": "5xx",
                                             "x-envoy-max-retries": "1"})
    assert resp.status == 504
    line = await pair.front.wait_log(lambda ln: "sleep=2" in ln)
    assert " 504 UT,URX upstream_per_try_timeout " in line
    assert [s.headers["x-envoy-attempt-count"] for s in pair.app.seen] == ["1", "2"]
    assert all("x-envoy-upstream-rq-per-try-timeout-ms" not in s.headers for s in pair.app.seen)


def test_generated_ids_are_distinct_and_a_forked_child_draws_its_own() -> None:
    """§3: request ids are random v4 UUIDs and trace/span ids random non-zero hex; sidecars
    started from the supervisor's fork server must not hand out their parent's next ids."""
    ids = [new_request_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert all(len(t) == 32 and int(t, 16) for t in (new_trace_id() for _ in range(1000)))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next trace id and leave at once
        os.write(write_fd, new_trace_id().encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as pipe:
        child = pipe.read()
    assert len(child) == 32 and child != new_trace_id()
