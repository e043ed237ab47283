"""Trace context through one chain hop: W3C traceparent/tracestate, B3, x-request-id.

A chain app is served on 127.0.0.1 and calls a recording downstream directly; the
test sends the incoming headers and reads what the downstream received, plus the
app's spans from an in-memory exporter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fixtures.chain.config import ChainConfig, parse_calls
from fixtures.chain.testing import RecordingServer, RunningChain, serve_chain

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
async def hop(
    exporter: InMemorySpanExporter,
) -> AsyncIterator[tuple[RunningChain, RecordingServer]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with RecordingServer() as leaf:
        cfg = ChainConfig(name="orders", stages=parse_calls(f"seq:{leaf.url}/pricing"))
        async with serve_chain(cfg, provider.get_tracer("test")) as app:
            yield app, leaf


async def send(app: RunningChain, headers: list[tuple[str, str]]) -> int:
    async with aiohttp.ClientSession() as session, session.get(
        f"{app.url}/orders", headers=CIMultiDict(headers)
    ) as resp:
        await resp.read()
        return resp.status


def parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, parent_id, flags = traceparent.split("-")
    return version, trace_id, parent_id, flags


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


async def test_valid_traceparent_keeps_trace_id_and_sends_own_client_span_as_parent(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """W3C-L2 processing model: "outgoing requests MUST carry an updated parent-id"; the
    trace-id and the sampled flag are kept."""
    app, leaf = hop
    assert await send(app, [("traceparent", TRACEPARENT)]) == 200
    version, trace_id, parent_id, flags = parts(leaf.requests[0].headers["traceparent"])
    spans = exporter.get_finished_spans()
    (server,), (client,) = by_kind(spans, SpanKind.SERVER), by_kind(spans, SpanKind.CLIENT)
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id == f"{client.context.span_id:016x}" != PARENT_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert server.name == "GET /orders" and client.name == "GET 127.0.0.1"


async def test_tracestate_is_forwarded_unchanged_with_a_valid_traceparent(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C tracestate: "unmodified entries keep their order"; multiple fields are combined
    in order (RFC 9110 §5.3)."""
    app, leaf = hop
    await send(app, [("traceparent", TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE"),
                     ("tracestate", "rojo=00f067aa0ba902b7")])
    assert leaf.requests[0].headers["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.mark.parametrize("bad", [
    pytest.param(f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", id="uppercase-hex"),
    pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", id="all-zero-trace-id"),
    pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="all-zero-parent-id"),
    pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01", id="version-ff"),
    pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01-extra", id="version-00-trailing-data"),
    pytest.param(f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", id="short-trace-id"),
    pytest.param(f"cc-{TRACE_ID}-{PARENT_ID}-01.what", id="future-version-bad-separator"),
])
async def test_invalid_traceparent_restarts_the_trace_and_drops_tracestate(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter, bad: str
) -> None:
    """W3C-L2 30-processing-model: an invalid traceparent → "create a new traceparent" and
    "MUST NOT attempt to parse tracestate" (the new trace carries none)."""
    app, leaf = hop
    assert await send(app, [("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")]) == 200
    headers = leaf.requests[0].headers
    _, trace_id, _, _ = parts(headers["traceparent"])
    (server,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert trace_id != TRACE_ID and server.parent is None
    assert "tracestate" not in headers


async def test_future_version_traceparent_is_parsed_and_sent_as_version_00(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C-L2: a higher version with trailing "-" fields is parsed for its trace-id and
    parent-id, and the vendor emits version 00 ("downgrade version")."""
    app, leaf = hop
    await send(app, [("traceparent", f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-will-be-like")])
    version, trace_id, _, _ = parts(leaf.requests[0].headers["traceparent"])
    assert (version, trace_id) == ("00", TRACE_ID)


async def test_two_traceparent_headers_restart_the_trace(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """W3C test suite test_traceparent_duplicated: two traceparent fields → ignore both and
    restart the trace (OpenTelemetry alone would take the first)."""
    app, leaf = hop
    other = f"00-{'1' * 32}-{PARENT_ID}-01"
    await send(app, [("traceparent", TRACEPARENT), ("traceparent", other),
                     ("tracestate", "congo=t61rcWkgMzE")])
    headers = leaf.requests[0].headers
    _, trace_id, _, _ = parts(headers["traceparent"])
    (server,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert trace_id not in (TRACE_ID, "1" * 32) and server.parent is None
    assert "tracestate" not in headers


async def test_tracestate_of_33_members_is_discarded_but_the_trace_continues(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C tracestate: at most 32 list-members; the W3C test suite expects an incoming
    33-member header to be discarded. It "MUST NOT affect traceparent"."""
    app, leaf = hop
    members = ",".join(f"k{i}=v{i}" for i in range(33))
    await send(app, [("traceparent", TRACEPARENT), ("tracestate", members)])
    headers = leaf.requests[0].headers
    assert parts(headers["traceparent"])[1] == TRACE_ID
    assert "tracestate" not in headers


async def test_tracestate_of_32_members_is_kept(hop: tuple[RunningChain, RecordingServer]) -> None:
    """W3C tracestate: "list = list-member 0*31( OWS "," OWS list-member )" allows 32."""
    app, leaf = hop
    members = ",".join(f"k{i}=v{i}" for i in range(32))
    await send(app, [("traceparent", TRACEPARENT), ("tracestate", members)])
    assert leaf.requests[0].headers["tracestate"] == members


async def test_lone_tracestate_without_traceparent_is_discarded(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C-L2 processing model: no traceparent → generate one, and a lone tracestate
    MUST be discarded."""
    app, leaf = hop
    await send(app, [("tracestate", "congo=t61rcWkgMzE")])
    headers = leaf.requests[0].headers
    assert "traceparent" in headers and "tracestate" not in headers


async def test_unsampled_traceparent_stays_unsampled(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C trace-flags: sampled may change only with a new parent-id; the app keeps the
    caller's decision (ParentBased sampler) so 00 goes out as 00."""
    app, leaf = hop
    await send(app, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")])
    assert parts(leaf.requests[0].headers["traceparent"])[3] == "00"


async def test_b3_multi_headers_are_forwarded_with_the_client_span_id(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """B3 propagation (openzipkin/b3-propagation, multiple headers): the callee receives the
    same X-B3-TraceId and the caller's span as X-B3-SpanId, with the sampling decision."""
    app, leaf = hop
    await send(app, [("traceparent", TRACEPARENT), ("x-b3-traceid", TRACE_ID),
                     ("x-b3-spanid", PARENT_ID), ("x-b3-sampled", "1")])
    headers = leaf.requests[0].headers
    (client,) = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert headers["x-b3-traceid"] == TRACE_ID
    assert headers["x-b3-spanid"] == f"{client.context.span_id:016x}"
    assert headers["x-b3-sampled"] == "1"
    assert "b3" not in headers


async def test_b3_single_header_is_forwarded_in_single_form(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """B3 single header: "b3: {TraceId}-{SpanId}-{SamplingState}" goes out in the same form."""
    app, leaf = hop
    await send(app, [("b3", f"{TRACE_ID}-{PARENT_ID}-1")])
    headers = leaf.requests[0].headers
    (client,) = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert headers["b3"] == f"{TRACE_ID}-{client.context.span_id:016x}-1"
    assert "x-b3-traceid" not in headers


async def test_b3_alone_continues_the_trace_when_no_traceparent_arrived(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """Istio USE_B3_WITH_W3C_PROPAGATION semantics (fidelity §3): a B3-only caller's
    trace continues, and the outbound call carries it in both W3C and B3."""
    app, leaf = hop
    await send(app, [("x-b3-traceid", TRACE_ID), ("x-b3-spanid", PARENT_ID), ("x-b3-sampled", "1")])
    headers = leaf.requests[0].headers
    (server,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert parts(headers["traceparent"])[1] == TRACE_ID == headers["x-b3-traceid"]


async def test_w3c_wins_over_b3_because_sidecars_rewrite_only_traceparent(
    hop: tuple[RunningChain, RecordingServer], exporter: InMemorySpanExporter
) -> None:
    """fidelity §3: each sidecar injects its own span id into traceparent but leaves
    B3 alone, so the SERVER span's parent comes from traceparent."""
    app, _ = hop
    await send(app, [("traceparent", TRACEPARENT), ("x-b3-traceid", "1" * 32),
                     ("x-b3-spanid", "2" * 16), ("x-b3-sampled", "1")])
    (server,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID


async def test_no_b3_is_invented_when_none_arrived(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """The app forwards the B3 formats its caller used and adds none of its own."""
    app, leaf = hop
    await send(app, [("traceparent", TRACEPARENT)])
    headers = leaf.requests[0].headers
    assert not any(name.lower().startswith("x-b3-") or name.lower() == "b3" for name in headers)


async def test_x_request_id_is_copied_to_every_outbound_call(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """fidelity §3 (Istio's list): apps must propagate x-request-id unchanged."""
    app, leaf = hop
    await send(app, [("x-request-id", "7c9f6a2e-1f0b-4c55-9d6f-3a1f1b2c9e01")])
    assert leaf.requests[0].headers["x-request-id"] == "7c9f6a2e-1f0b-4c55-9d6f-3a1f1b2c9e01"


async def test_one_server_span_and_one_client_span_per_call_with_contract_attributes(
    exporter: InMemorySpanExporter,
) -> None:
    """Telemetry contract: one SERVER span per request named "<METHOD> <route path>", one
    CLIENT span per outbound call named "<METHOD> <service>", with meshchaos.* attributes."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with RecordingServer() as a, RecordingServer() as b:
        calls = f"seq:{a.url}/a;par:{b.url}/b1;par:{b.url}/b2"
        cfg = ChainConfig(name="orders", stages=parse_calls(calls))
        async with serve_chain(cfg, provider.get_tracer("test")) as app:
            assert await send(app, [("traceparent", TRACEPARENT),
                                    ("x-envoy-expected-rq-timeout-ms", "800")]) == 200
    spans = exporter.get_finished_spans()
    (server,) = by_kind(spans, SpanKind.SERVER)
    clients = by_kind(spans, SpanKind.CLIENT)
    assert sorted(str((c.attributes or {})["url.path"]) for c in clients) == ["/a", "/b1", "/b2"]
    assert all(c.parent is not None and c.parent.span_id == server.context.span_id for c in clients)
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET", "url.path": "/orders", "meshchaos.hop": "orders",
        "meshchaos.defect": "none", "meshchaos.budget_ms": 800, "http.response.status_code": 200,
    }
    assert [e.name for e in server.events] == ["work.start", "work.end"]
    for client in clients:
        attrs = client.attributes or {}
        assert attrs["meshchaos.hop"] == "orders" and attrs["http.response.status_code"] == 200
        assert 0 < int(attrs["meshchaos.timeout_sent_ms"]) <= 795  # type: ignore[arg-type]


@pytest.mark.parametrize(("flags", "sent"), [("03", "03"), ("02", "02"), ("01", "01"),
                                             ("05", "01"), ("ff", "03")])
async def test_random_trace_id_flag_is_kept_and_unknown_flags_are_zeroed(
    hop: tuple[RunningChain, RecordingServer], flags: str, sent: str
) -> None:
    """W3C-L2 trace-flags: the random-trace-id flag (bit 1) is propagated unchanged with the
    same trace-id; sampled (bit 0) is kept; other bits are not defined and are set to zero."""
    app, leaf = hop
    await send(app, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{flags}")])
    assert parts(leaf.requests[0].headers["traceparent"])[3] == sent


async def test_traceparent_surrounded_by_whitespace_is_accepted(
    hop: tuple[RunningChain, RecordingServer],
) -> None:
    """W3C test suite test_traceparent_ows_handling: optional whitespace around the value."""
    app, leaf = hop
    await send(app, [("traceparent", f" \t{TRACEPARENT} \t")])
    assert parts(leaf.requests[0].headers["traceparent"])[1] == TRACE_ID
