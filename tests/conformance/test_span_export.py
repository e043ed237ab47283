"""How the sidecar's span exporter batches: spans reach the collector soon after they end,
a full batch leaves at once, and an idle exporter sends nothing. A real OTLP/HTTP receiver
on loopback counts what arrives (opentelemetry-proto collector/trace/v1
ExportTraceServiceRequest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from localmesh.sidecar.tracing import KIND_SERVER, Span, SpanExporter


class Collector:
    """Counts the spans of every OTLP/HTTP protobuf POST it gets."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.batches.append(sum(len(scope.spans) for rs in message.resource_spans
                                for scope in rs.scope_spans))
        self.arrived.set()
        return web.Response(content_type="application/x-protobuf", body=b"")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    sink = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _span(n: int) -> Span:
    return Span(trace_id=f"{n + 1:032x}", span_id=f"{n + 1:016x}", parent_id="",
                name="inbound", kind=KIND_SERVER, start_ns=1, end_ns=2)


async def test_a_span_reaches_the_collector_one_linger_after_it_ends(
        collector: tuple[Collector, str]) -> None:
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=0.02)
    exporter.start()
    try:
        exporter.add(_span(0))
        await asyncio.wait_for(sink.arrived.wait(), 5)
        assert sink.batches == [1] and exporter.exported == 1
    finally:
        await exporter.stop()


async def test_spans_ending_within_the_linger_share_one_post(
        collector: tuple[Collector, str]) -> None:
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=0.2)
    exporter.start()
    try:
        for n in range(5):
            exporter.add(_span(n))
        await asyncio.wait_for(sink.arrived.wait(), 5)
        assert sink.batches == [5]
    finally:
        await exporter.stop()


async def test_a_full_batch_leaves_without_waiting_for_the_linger(
        collector: tuple[Collector, str]) -> None:
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=30.0, max_batch=8)
    exporter.start()
    try:
        for n in range(8):
            exporter.add(_span(n))
        await asyncio.wait_for(sink.arrived.wait(), 5)  # far less than the 30 s linger
        assert sink.batches == [8]
    finally:
        await exporter.stop()


async def test_a_span_queued_while_a_batch_is_on_the_wire_is_sent_too(
        collector: tuple[Collector, str]) -> None:
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=0.01)
    exporter.start()
    try:
        exporter.add(_span(0))
        await asyncio.sleep(0.015)  # the first batch is leaving now
        exporter.add(_span(1))
        for _ in range(500):
            if sum(sink.batches) == 2:
                break
            await asyncio.sleep(0.01)
        assert sum(sink.batches) == 2 and exporter.exported == 2
    finally:
        await exporter.stop()


async def test_an_idle_exporter_sends_nothing_and_stop_flushes_what_is_left(
        collector: tuple[Collector, str]) -> None:
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=30.0)
    exporter.start()
    await asyncio.sleep(0.1)
    assert sink.batches == []
    exporter.add(_span(0))
    await exporter.stop()
    assert sink.batches == [1]


async def test_a_busy_exporter_posts_at_most_once_per_min_interval(
        collector: tuple[Collector, str]) -> None:
    """Spans arriving faster than the minimum interval share POSTs instead of each
    linger starting a POST of its own: a saturated sidecar spends its CPU on traffic."""
    sink, url = collector
    exporter = SpanExporter(url, "front.shop", {}, linger=0.001, min_interval=0.2)
    exporter.start()
    try:
        exporter.add(_span(0))
        await asyncio.wait_for(sink.arrived.wait(), 5)
        for n in range(1, 6):  # five spans, 10 ms apart, right after a POST
            exporter.add(_span(n))
            await asyncio.sleep(0.01)
        for _ in range(500):
            if sum(sink.batches) == 6:
                break
            await asyncio.sleep(0.01)
        assert sink.batches == [1, 5]
    finally:
        await exporter.stop()
