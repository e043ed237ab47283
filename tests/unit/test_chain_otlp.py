"""The chain's own OTLP encoder writes what the official OpenTelemetry encoder writes, and its
exporter delivers batches to an OTLP/HTTP receiver (opentelemetry-proto trace_service.proto)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from fixtures.chain.otlp import OtlpHttpExporter, SpanEncoder, encode_request
from fixtures.chain.testing import OtlpSink

REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("congo", "t61rcWkgMzE")]))


def chain_like_spans() -> tuple[ReadableSpan, ...]:
    """Spans like the chain's, plus every field the encoder handles: a remote parent with
    tracestate, a local child, events with and without attributes, an error status with a
    message, int/float/bool/str/array attributes, a link, two scopes and two resources."""
    exporter = InMemorySpanExporter()
    for service in ("orders", "pricing"):
        provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                            "k8s.pod.name": f"{service}-0"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("fixtures.chain")
        server = tracer.start_span("GET /orders", context=trace.set_span_in_context(
            NonRecordingSpan(REMOTE)), kind=SpanKind.SERVER, attributes={
                "http.request.method": "GET", "url.path": "/orders", "meshchaos.budget_ms": 800,
                "ratio": 0.25, "flag": True, "list": ["a", "b"], "neg": -3})
        server.add_event("work.start")
        client = tracer.start_span("GET pricing", context=trace.set_span_in_context(server),
                                   kind=SpanKind.CLIENT, links=[Link(REMOTE, {"why": "test"})])
        client.add_event("call.cancelled", {"reason": "caller-gone"})
        client.set_status(Status(StatusCode.ERROR, "cancelled: caller-gone"))
        client.end()
        server.set_attribute("http.response.status_code", 200)
        server.end()
        provider.get_tracer("other.scope", "1.2").start_span("internal").end()
    return exporter.get_finished_spans()


def test_the_encoding_equals_the_official_encoders_message_for_message() -> None:
    spans = chain_like_spans()
    mine = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert mine == encode_spans(spans)
    assert len(mine.resource_spans) == 2 and len(mine.resource_spans[0].scope_spans) == 2


def test_a_reused_encoder_gives_the_same_bytes_for_the_same_spans() -> None:
    """What the encoder remembers between batches (keys, names, repeated values) must not
    change the output."""
    spans = chain_like_spans()
    encoder = SpanEncoder()
    assert encoder.request(spans) == encoder.request(spans) == encode_request(spans)


async def test_the_exporter_posts_protobuf_batches_to_the_receiver() -> None:
    spans = chain_like_spans()
    async with OtlpSink() as sink:
        exporter = OtlpHttpExporter(f"{sink.url}/v1/traces")
        try:
            results = [await asyncio.to_thread(exporter.export, spans) for _ in range(2)]
        finally:
            exporter.shutdown()
    assert [r.name for r in results] == ["SUCCESS", "SUCCESS"]
    assert [ctype for ctype, _ in sink.bodies] == ["application/x-protobuf"] * 2
    assert len(sink.spans()) == 2 * len(spans)


def test_an_unreachable_receiver_fails_the_export_without_raising() -> None:
    """The batch processor drops a failed batch; the app must never see an exception."""
    exporter = OtlpHttpExporter("http://127.0.0.1:9/v1/traces", timeout_s=1.0)
    try:
        assert exporter.export(chain_like_spans()).name == "FAILURE"
    finally:
        exporter.shutdown()


def test_a_non_http_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="OTLP endpoint must be an http"):
        OtlpHttpExporter("grpc://collector:4317")
