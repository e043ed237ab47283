"""The chain's gRPC leg: a hop serving ``/meshchaos.chain.Hop/Call`` and a hop calling it.

Real grpcio clients and servers on loopback. The contract is gRPC's (the deadline travels
as ``grpc-timeout`` and the callee sees it as ``time_remaining()``; cancelling a call
cancels the callee's context) and the one docs/fidelity.md §1.9 gives the mesh (the
statuses Envoy maps between HTTP and gRPC).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fixtures.chain.config import GRPC_CALL_PATH, ChainConfig, WorkSpec, parse_args, parse_calls
from fixtures.chain.defects import Defect
from fixtures.chain.errors import ConfigError
from fixtures.chain.testing import RunningChain, serve_chain

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@asynccontextmanager
async def channel_to(app: RunningChain) -> AsyncIterator[grpc.aio.UnaryUnaryMultiCallable[
        bytes, bytes]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}",
                                         options=[("grpc.enable_retries", 0)]) as channel:
        yield channel.unary_unary(GRPC_CALL_PATH)


def grpc_leaf(**kw: Any) -> ChainConfig:
    return ChainConfig(name="pricing", protocol="grpc", **kw)


def http_caller(leaf: RunningChain, **kw: Any) -> ChainConfig:
    calls = parse_calls(f"seq:grpc://127.0.0.1:{leaf.port}")
    return ChainConfig(name="inventory", stages=calls, margin_ms=5, **kw)


def budget_of(span: ReadableSpan) -> float:
    value = (span.attributes or {})["meshchaos.budget_ms"]
    assert isinstance(value, int | float)
    return float(value)


def server_spans(exporter: InMemorySpanExporter, hop: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER
            and (s.attributes or {}).get("meshchaos.hop") == hop]


async def get(app: RunningChain, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"{app.url}/x", headers=headers or {}) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if resp.content_type == "application/json"
                             else text)


async def test_a_grpc_hop_answers_ok_with_its_json_body_and_a_server_span_in_the_callers_trace(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """W3C Trace Context in gRPC metadata: the SERVER span continues the caller's trace,
    and the call's deadline (grpc-timeout) is the hop's budget."""
    async with serve_chain(grpc_leaf(), provider.get_tracer("t")) as app, \
            channel_to(app) as call:
        body = await call(b"", metadata=(("traceparent", TRACEPARENT),), timeout=0.8)
    doc = json.loads(body)
    assert doc["service"] == "pricing" and doc["trace_id"] == TRACE_ID
    (span,) = server_spans(exporter, "pricing")
    attrs = span.attributes or {}
    assert span.name == "meshchaos.chain.Hop/Call"
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.grpc.status_code"] == 0
    # grpc-timeout travels rounded up to its unit: the callee may see a fraction of a ms more
    assert 700 <= budget_of(span) <= 801
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"


async def test_a_grpc_hop_whose_budget_runs_out_answers_deadline_exceeded(
        provider: TracerProvider) -> None:
    """gRPC: a server past its deadline reports DEADLINE_EXCEEDED (not Envoy's
    UNAVAILABLE, which is the mesh's answer to its own route timeout, §1.9)."""
    cfg = grpc_leaf(work_before=WorkSpec("fixed", 300.0))
    async with serve_chain(cfg, provider.get_tracer("t")) as app, channel_to(app) as call:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", metadata=(("x-envoy-expected-rq-timeout-ms", "50"),))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_grpc_hop_failing_503_answers_unavailable(provider: TracerProvider) -> None:
    """Envoy's httpToGrpcStatus (§1.9): 503 → UNAVAILABLE."""
    async with serve_chain(grpc_leaf(status=503), provider.get_tracer("t")) as app, \
            channel_to(app) as call:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_caller_passes_its_remaining_budget_on_as_the_grpc_deadline(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """The budget shrinks across the gRPC hop: the callee's deadline is what the caller had
    left less its margin, and the traceparent in the metadata names the CLIENT span."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(), tracer) as leaf, \
            serve_chain(http_caller(leaf, work_before=WorkSpec("fixed", 40.0)), tracer) as hop:
        status, doc = await get(hop, {"traceparent": TRACEPARENT,
                                      "x-envoy-expected-rq-timeout-ms": "500"})
    assert status == 200 and doc["calls"] == [{"service": "127.0.0.1", "status": 200,
                                               "attempts": 1}]
    (server,) = server_spans(exporter, "pricing")
    budget = budget_of(server)
    assert 400 <= budget <= 455  # 500 - 40 ms of work - 5 ms margin, less the call's own time
    (client,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert client.name == "meshchaos.chain.Hop/Call"
    assert (client.attributes or {})["rpc.grpc.status_code"] == 0
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert f"{server.context.trace_id:032x}" == TRACE_ID


async def test_a_caller_maps_unavailable_back_to_503_and_fails_the_same_way(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """grpcToHttpStatus (§1.9): UNAVAILABLE → 503; the hop fails as its required call did."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(status=503), tracer) as leaf, \
            serve_chain(http_caller(leaf), tracer) as hop:
        status, _ = await get(hop)
    assert status == 503
    (client,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert (client.attributes or {})["rpc.grpc.status_code"] == 14


async def test_a_caller_leaving_cancels_the_grpc_call_and_the_work_below_it(
        provider: TracerProvider) -> None:
    """gRPC: cancelling a call cancels the server's context (§6); the leaf's work stops."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(work_before=WorkSpec("fixed", 2000.0)), tracer) as leaf, \
            serve_chain(http_caller(leaf), tracer) as hop:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(get(hop, {"traceparent": TRACEPARENT}), 0.3)
        left = time.time()
        outcome = await _leaf_outcome(leaf)
        (item,) = leaf.service.ledger.items(TRACE_ID)
    assert outcome == "cancelled"
    # as fast as on HTTP (the caller's close reaches the leaf's work within tens of ms)
    assert item.as_json()["ended"] - left < 0.1


async def test_the_no_cancel_twin_serving_grpc_works_on_after_the_call_was_cancelled(
        provider: TracerProvider) -> None:
    """The cancellation-ignored twin on the gRPC server: its work outlives the call."""
    tracer = provider.get_tracer("t")
    leaf_cfg = grpc_leaf(work_before=WorkSpec("fixed", 400.0), defect=Defect.NO_CANCEL)
    async with serve_chain(leaf_cfg, tracer) as leaf, \
            serve_chain(http_caller(leaf), tracer) as hop:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(get(hop, {"traceparent": TRACEPARENT}), 0.15)
        outcome = await _leaf_outcome(leaf, until_not="running")
    assert outcome == "orphaned"


async def _leaf_outcome(leaf: RunningChain, until_not: str = "running") -> str:
    """The leaf's ledger outcome for TRACE_ID once it is no longer ``until_not`` (≤ 3 s)."""
    outcome = ""
    for _ in range(150):
        items = leaf.service.ledger.items(TRACE_ID)
        if items and (outcome := items[0].as_json()["outcome"]) != until_not:
            return str(outcome)
        await asyncio.sleep(0.02)
    return outcome


async def test_the_fresh_deadline_twin_sends_thirty_seconds_whatever_it_had_left(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(), tracer) as leaf, serve_chain(
            http_caller(leaf, defect=Defect.GRPC_FRESH_DEADLINE), tracer) as hop:
        status, _ = await get(hop, {"x-envoy-expected-rq-timeout-ms": "500"})
    assert status == 200
    (server,) = server_spans(exporter, "pricing")
    assert budget_of(server) > 29_000


async def test_the_drop_metadata_twin_sends_no_trace_context_but_keeps_x_request_id(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """Trace context dropped from the gRPC metadata: the callee starts a new trace."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(), tracer) as leaf, serve_chain(
            http_caller(leaf, defect=Defect.GRPC_DROP_METADATA), tracer) as hop:
        status, _ = await get(hop, {"traceparent": TRACEPARENT, "x-request-id": "rid-1"})
    assert status == 200
    (server,) = server_spans(exporter, "pricing")
    assert f"{server.context.trace_id:032x}" != TRACE_ID and server.parent is None


@pytest.mark.parametrize(("defect", "calls"), [(Defect.NONE, 1),
                                               (Defect.GRPC_RETRY_UNAVAILABLE, 3)])
async def test_only_the_retry_twin_calls_again_on_unavailable(
        provider: TracerProvider, exporter: InMemorySpanExporter, defect: Defect,
        calls: int) -> None:
    """Retries belong to the mesh (§1.9 retryOn unavailable): the correct hop calls once."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(status=503), tracer) as leaf, \
            serve_chain(http_caller(leaf, defect=defect), tracer) as hop:
        status, _ = await get(hop)
    assert status == 503
    assert len(server_spans(exporter, "pricing")) == calls


async def test_a_header_grpc_cannot_carry_fails_the_call_as_no_answer(
        provider: TracerProvider) -> None:
    """PROTOCOL-HTTP2: ASCII-Value is printable ASCII. An x-request-id outside it cannot go
    into the call's metadata: the call fails (502, as a call with no answer), the leaf
    never sees it, and the hop does not crash."""
    tracer = provider.get_tracer("t")
    async with serve_chain(grpc_leaf(), tracer) as leaf, \
            serve_chain(http_caller(leaf), tracer) as hop:
        reader, writer = await asyncio.open_connection("127.0.0.1", hop.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nx-request-id: caf\xe9\r\n"
                     b"Connection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readline(), 5.0)
        writer.close()
        await writer.wait_closed()
        assert head.split()[1] == b"502"
        assert leaf.service.ledger.items(TRACE_ID) == []


def test_a_grpc_call_needs_its_port_and_a_protocol_must_be_known() -> None:
    with pytest.raises(ConfigError, match=r"grpc://pricing.*needs its port"):
        parse_calls("seq:grpc://pricing")
    (stage,) = parse_calls("seq:grpc://pricing:8080")
    assert stage[0].scheme == "grpc" and stage[0].port == 8080
    assert stage[0].path == GRPC_CALL_PATH
    with pytest.raises(ConfigError, match=r"CHAIN_PROTOCOL.*'h3'"):
        parse_args([], {"CHAIN_PROTOCOL": "h3"})
