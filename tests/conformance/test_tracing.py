"""Sidecar spans and trace-context propagation (docs/fidelity.md §3)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.conftest import LEAF, NS, OtlpReceiver, Pair, endpoint, leaf_route

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"
KIND_SERVER, KIND_CLIENT = 2, 3


def _parts(traceparent: str) -> list[str]:
    return traceparent.split("-")


def _by_trace(spans: list[dict[str, Any]], trace: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["trace_id"] == trace]


async def test_each_sidecar_keeps_trace_id_and_injects_its_own_span_id(
        pair: Pair, otlp: OtlpReceiver) -> None:
    """§3 "Each sidecar injects the same trace-id with its own new span-id as parent-id … The
    parent-id the app sees differs from what the caller's app sent"; docs/architecture.md: the
    outbound sidecar's per-try child CLIENT span is the parent of the next hop."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint})
    resp = await pair.call("/work", {"traceparent": VALID, "tracestate": "vendor=abc,x=1"})
    assert resp.status == 200
    seen = pair.app.seen[-1].headers
    version, trace, parent, flags = _parts(seen["traceparent"])
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert parent != PARENT
    assert seen["tracestate"] == "vendor=abc,x=1"
    spans = await otlp.wait_spans(lambda s: len(_by_trace(s, TRACE)) >= 3)
    spans = _by_trace(spans, TRACE)
    front = next(s for s in spans if s["service"] == "front.shop" and s["parent_id"] == PARENT)
    child = next(s for s in spans if s["parent_id"] == front["span_id"])
    server = next(s for s in spans if s["service"] == "leaf.shop")
    assert front["kind"] == child["kind"] == KIND_CLIENT
    assert server["kind"] == KIND_SERVER
    assert server["parent_id"] == child["span_id"]
    assert server["span_id"] == parent  # the callee app's parent is the inbound span
    assert front["name"] == child["name"] == f"{LEAF}:8080/*"
    assert server["name"] == f"{LEAF}:8080/*"
    attrs = front["attrs"]
    assert attrs["http.method"] == "GET"
    assert attrs["http.url"] == "http://leaf:8080/work"
    assert attrs["http.status_code"] == 200
    assert attrs["response_flags"] == "-"
    assert attrs["upstream_cluster"] == f"outbound|8080||{LEAF}"
    assert attrs["guid:x-request-id"] == seen["x-request-id"]
    assert attrs["node_id"] == "sidecar~127.0.0.1~front-1.shop~shop.svc.cluster.local"
    assert attrs["component"] == "proxy"
    assert attrs["istio.namespace"] == "shop"
    assert attrs["istio.canonical_service"] == "front"
    assert attrs["meshchaos.pod"] == "front-1"
    assert attrs["meshchaos.direction"] == "outbound"
    assert attrs["meshchaos.attempt"] == 1
    assert child["attrs"]["meshchaos.attempt"] == 1
    assert server["attrs"]["meshchaos.direction"] == "inbound"
    assert server["attrs"]["upstream_cluster"] == "inbound|8080||"


async def test_each_retry_gets_its_own_child_span(pair: Pair, otlp: OtlpReceiver) -> None:
    """docs/architecture.md: "the outbound sidecar emits one child CLIENT span per upstream
    attempt (Envoy start_child_span), each the parent of the next hop"."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint}, routes=leaf_route(
        retries={"attempts": 2, "retry_on": ["5xx"]}))
    resp = await pair.call("/work?status=500", {"traceparent": VALID})
    assert resp.status == 500
    spans = await otlp.wait_spans(lambda s: len(_by_trace(s, TRACE)) >= 7)
    spans = _by_trace(spans, TRACE)
    front = next(s for s in spans if s["parent_id"] == PARENT)
    children = sorted((s for s in spans if s["parent_id"] == front["span_id"]),
                      key=lambda s: s["attrs"]["meshchaos.attempt"])
    assert [c["attrs"]["meshchaos.attempt"] for c in children] == [1, 2, 3]
    servers = [s for s in spans if s["kind"] == KIND_SERVER]
    assert sorted(s["parent_id"] for s in servers) == sorted(c["span_id"] for c in children)
    app_parents = {_parts(s.headers["traceparent"])[2] for s in pair.app.seen}
    assert app_parents == {s["span_id"] for s in servers}
    assert front["attrs"]["meshchaos.attempt"] == 3


@pytest.mark.parametrize("traceparent", [
    pytest.param(f"{VALID}-extra", id="longer-than-55"),
    pytest.param(f"00-{'0' * 32}-{PARENT}-01", id="zero-trace-id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="zero-parent-id"),
    pytest.param(f"00-{TRACE[:-1]}g-{PARENT}-01", id="not-hex"),
    pytest.param(f"00_{TRACE}_{PARENT}_01", id="bad-separators"),
])
async def test_invalid_traceparent_passes_through_unchanged_without_span(
        pair: Pair, otlp: OtlpReceiver, traceparent: str) -> None:
    """§3 "Present but invalid → NullSpan: no span and no injection, so the invalid
    traceparent/tracestate pass through unchanged. Envoy does not restart the trace"."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint})
    resp = await pair.call("/work", {"traceparent": traceparent, "tracestate": "k=v"})
    assert resp.status == 200
    seen = pair.app.seen[-1].headers
    assert seen["traceparent"] == traceparent
    assert seen["tracestate"] == "k=v"
    marker = await pair.call("/marker", {"traceparent": VALID})  # flushes after the first
    assert marker.status == 200
    await otlp.wait_spans(lambda s: len(_by_trace(s, TRACE)) >= 3)
    assert all(s["attrs"]["http.url"].endswith("/marker") for s in otlp.spans)


@pytest.mark.parametrize("traceparent", [
    pytest.param(f"00-{TRACE.upper()}-{PARENT.upper()}-01", id="uppercase-hex"),
    pytest.param(f"ff-{TRACE}-{PARENT}-01", id="version-ff"),
])
async def test_envoy_accepts_what_w3c_rejects(pair: Pair, traceparent: str) -> None:
    """§3 Envoy's parser: "ascii_isxdigit → uppercase accepted (W3C: lowercase only) …
    version ff not rejected"; the injected header is version 00 with lowercase ids."""
    await pair.configure()
    await pair.call("/work", {"traceparent": traceparent})
    version, trace, parent, flags = _parts(pair.app.seen[-1].headers["traceparent"])
    assert (version, trace, flags) == ("00", TRACE, "01")
    assert parent not in (PARENT, PARENT.upper())


async def test_unsampled_parent_is_propagated_unsampled_without_spans(
        pair: Pair, otlp: OtlpReceiver) -> None:
    """§3 "Sampled is inherited": flags 00 stay 00 and nothing is recorded."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint})
    await pair.call("/work", {"traceparent": f"00-{TRACE}-{PARENT}-00"})
    _, trace, parent, flags = _parts(pair.app.seen[-1].headers["traceparent"])
    assert (trace, flags) == (TRACE, "00") and parent != PARENT
    other = "1" * 32
    await pair.call("/marker", {"traceparent": f"00-{other}-{PARENT}-01"})
    await otlp.wait_spans(lambda s: len(_by_trace(s, other)) >= 3)
    assert not _by_trace(otlp.spans, TRACE)


@pytest.mark.parametrize(("percent", "flags"), [(100.0, "01"), (0.0, "00")])
async def test_missing_traceparent_starts_a_new_trace_with_mesh_sampling(
        pair: Pair, percent: float, flags: str) -> None:
    """§3 "with no parent: new random 128-bit id and Envoy's sampling" (mesh percentage)."""
    await pair.configure(mesh={"sampling_percent": percent})
    await pair.call("/a")
    await pair.call("/b")
    first = _parts(pair.app.seen[0].headers["traceparent"])
    second = _parts(pair.app.seen[1].headers["traceparent"])
    assert first[1] != second[1]
    assert first[3] == second[3] == flags
    assert len(first[1]) == 32 and int(first[1], 16) != 0


async def test_local_replies_still_get_a_span(pair: Pair, otlp: OtlpReceiver) -> None:
    """§3 one span per sidecar per request: a 503 UH answered by the sidecar itself is a hop
    of the trace too, flagged in `response_flags`."""
    not_ready = endpoint("leaf-1", pair.leaf.ports["inbound"], ready=False)
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint},
                         services={LEAF: {"name": "leaf", "namespace": NS, "ports": [8080],
                                          "endpoints": [not_ready]}})
    resp = await pair.call("/work", {"traceparent": VALID})
    assert resp.status == 503
    spans = await otlp.wait_spans(lambda s: len(_by_trace(s, TRACE)) >= 1)
    (span,) = _by_trace(spans, TRACE)
    assert span["parent_id"] == PARENT
    assert span["attrs"]["response_flags"] == "UH"
    assert span["attrs"]["http.status_code"] == 503


async def test_outbound_span_carries_the_expected_timeout_it_sent(
        pair: Pair, otlp: OtlpReceiver) -> None:
    """docs/architecture.md span attributes: `meshchaos.expected_rq_timeout_ms` (outbound, when
    set) = the §1.5 header value the sidecar sent."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint}, routes=leaf_route(timeout_ms=650))
    await pair.call("/work", {"traceparent": VALID})
    spans = await otlp.wait_spans(lambda s: len(_by_trace(s, TRACE)) >= 3)
    front = next(s for s in _by_trace(spans, TRACE) if s["parent_id"] == PARENT)
    assert front["attrs"]["meshchaos.expected_rq_timeout_ms"] == 650
    server = next(s for s in _by_trace(spans, TRACE) if s["kind"] == KIND_SERVER)
    assert "meshchaos.expected_rq_timeout_ms" not in server["attrs"]
