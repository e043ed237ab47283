"""How the sidecar's span exporter batches: spans reach the collector soon after they end,
a full batch leaves at once, a busy exporter posts at most once per interval, and an idle
exporter sends nothing. The conformance OTLP/HTTP receiver on loopback counts what arrives
(opentelemetry-proto collector/trace/v1 ExportTraceServiceRequest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from localmesh.sidecar.tracing import KIND_SERVER, Span, SpanExporter
from tests.conformance.conftest import OtlpReceiver


def _span(n: int) -> Span:
    return Span(trace_id=f"{n + 1:032x}", span_id=f"{n + 1:016x}", parent_id="",
                name="inbound", kind=KIND_SERVER, start_ns=1, end_ns=2)


@asynccontextmanager
async def _exporting(otlp: OtlpReceiver, **options: Any) -> AsyncIterator[SpanExporter]:
    exporter = SpanExporter(otlp.endpoint, "front.shop", {}, **options)
    exporter.start()
    try:
        yield exporter
    finally:
        await exporter.stop()


async def _received(otlp: OtlpReceiver, count: int) -> None:
    await otlp.wait_spans(lambda spans: len(spans) >= count)


async def test_a_span_reaches_the_collector_one_linger_after_it_ends(otlp: OtlpReceiver) -> None:
    async with _exporting(otlp, linger=0.02) as exporter:
        exporter.add(_span(0))
        await _received(otlp, 1)
        assert otlp.batches == [1] and exporter.exported == 1


async def test_spans_ending_within_the_linger_share_one_post(otlp: OtlpReceiver) -> None:
    async with _exporting(otlp, linger=0.2) as exporter:
        for n in range(5):
            exporter.add(_span(n))
        await _received(otlp, 5)
        assert otlp.batches == [5]


async def test_a_full_batch_leaves_without_waiting_for_the_linger(otlp: OtlpReceiver) -> None:
    async with _exporting(otlp, linger=30.0, max_batch=8) as exporter:
        for n in range(8):
            exporter.add(_span(n))
        await _received(otlp, 8)  # within 5 s: far less than the 30 s linger
        assert otlp.batches == [8]


async def test_a_span_queued_while_a_batch_is_on_the_wire_is_sent_too(
        otlp: OtlpReceiver) -> None:
    async with _exporting(otlp, linger=0.01) as exporter:
        exporter.add(_span(0))
        await asyncio.sleep(0.015)  # the first batch is leaving now
        exporter.add(_span(1))
        await _received(otlp, 2)
        assert sum(otlp.batches) == 2 and exporter.exported == 2


async def test_an_idle_exporter_sends_nothing_and_stop_flushes_what_is_left(
        otlp: OtlpReceiver) -> None:
    async with _exporting(otlp, linger=30.0) as exporter:
        await asyncio.sleep(0.1)
        assert otlp.batches == []
        exporter.add(_span(0))
    assert otlp.batches == [1]


async def test_a_busy_exporter_posts_at_most_once_per_min_interval(otlp: OtlpReceiver) -> None:
    """Spans arriving faster than the minimum interval share POSTs instead of each
    linger starting a POST of its own: a saturated sidecar spends its CPU on traffic."""
    async with _exporting(otlp, linger=0.001, min_interval=0.2) as exporter:
        exporter.add(_span(0))
        await _received(otlp, 1)
        for n in range(1, 6):  # five spans, 10 ms apart, right after a POST
            exporter.add(_span(n))
            await asyncio.sleep(0.01)
        await _received(otlp, 6)
        assert otlp.batches == [1, 5]
