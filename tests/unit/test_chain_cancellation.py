"""Cancellation and fan-out: a caller leaving stops the work and closes the calls below it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fixtures.chain.config import ChainConfig, WorkSpec, parse_calls
from fixtures.chain.defects import Defect
from fixtures.chain.ledger import WorkLedger
from fixtures.chain.testing import RecordingServer, RunningChain, serve_chain

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


async def leave_after(app: RunningChain, ready: asyncio.Event | None, delay: float = 0.0) -> float:
    """Send a request on a raw connection, then close it (once ``ready`` is set and ``delay``
    has passed) without reading the answer; returns the monotonic time of the close."""
    _, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(f"GET /x HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode())
    await writer.drain()
    if ready is not None:
        await asyncio.wait_for(ready.wait(), 5.0)
    await asyncio.sleep(delay)
    left = time.monotonic()
    writer.close()
    await writer.wait_closed()
    return left


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def debug_work(app: RunningChain, trace_id: str = TRACE_ID) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
        f"{app.url}/debug/work", params={"trace_id": trace_id}
    ) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.parametrize("http_client", ["lean", "aiohttp"])
async def test_caller_leaving_closes_the_downstream_call_within_50ms(
    provider: TracerProvider, exporter: InMemorySpanExporter, http_client: str
) -> None:
    """Go's net/http contract the chain mirrors (fidelity §6): the request context "is
    canceled when the client's connection closes"; the downstream connection is closed so the
    next hop sees the disconnect (§1.6 "0 DC"). Measured at the downstream server."""
    async with RecordingServer(delay_s=5.0) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), http_client=http_client)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            ready = asyncio.Event()
            waiter = asyncio.ensure_future(leaf.wait_arrived())
            waiter.add_done_callback(lambda _: ready.set())
            left = await leave_after(app, ready)
            (rec,) = await leaf.wait_ended()
            await asyncio.sleep(0.05)
            work = await debug_work(app)
    assert rec.cancelled and rec.ended is not None
    assert rec.ended - left < 0.050
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == "cancelled: caller-gone"
    assert [(e.name, dict(e.attributes or {})) for e in server.events] == [
        ("work.start", {}), ("work.cancelled", {"reason": "caller-gone"})]
    assert [(e.name, dict(e.attributes or {})) for e in client.events] == [
        ("call.cancelled", {"reason": "caller-gone"})]
    (item,) = work["items"]
    assert item["outcome"] == "cancelled" and item["ended"] is not None


@pytest.mark.parametrize("http_client", ["lean", "aiohttp"])
async def test_caller_leaving_closes_every_parallel_call(
    provider: TracerProvider, http_client: str
) -> None:
    """Cancellation reaches every in-flight call of a fan-out, not just the first."""
    async with RecordingServer(delay_s=5.0) as a, RecordingServer(delay_s=5.0) as b:
        cfg = ChainConfig(stages=parse_calls(f"par:{a.url}/a;par:{b.url}/b"),
                          http_client=http_client)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            ready = asyncio.Event()
            waiter = asyncio.ensure_future(asyncio.gather(a.wait_arrived(), b.wait_arrived()))
            waiter.add_done_callback(lambda _: ready.set())
            left = await leave_after(app, ready)
            (ra,), (rb,) = await a.wait_ended(), await b.wait_ended()
    assert ra.cancelled and rb.cancelled
    assert ra.ended is not None and rb.ended is not None
    assert max(ra.ended, rb.ended) - left < 0.050


async def test_caller_leaving_during_simulated_work_stops_it_and_makes_no_call(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Never complete work for a caller that is gone: the calls after the work never start."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"),
                          work_before=WorkSpec("fixed", 300.0))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await leave_after(app, None, delay=0.05)
            await asyncio.sleep(0.4)
            work = await debug_work(app)
    assert leaf.requests == []
    (item,) = work["items"]
    assert item["outcome"] == "cancelled" and item["work_ms"] < 250
    (server,) = exporter.get_finished_spans()
    assert [e.name for e in server.events] == ["work.start", "work.cancelled"]


async def test_parallel_calls_really_overlap(provider: TracerProvider) -> None:
    """par entries run at once: both downstreams hold their request at the same time and the
    hop takes about one delay, not two."""
    async with RecordingServer(delay_s=0.2) as a, RecordingServer(delay_s=0.2) as b:
        cfg = ChainConfig(stages=parse_calls(f"par:{a.url}/a;par:{b.url}/b"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session, session.get(f"{app.url}/x") as resp:
                assert resp.status == 200
            took = time.monotonic() - started
    (ra,), (rb,) = a.requests, b.requests
    assert ra.ended is not None and rb.ended is not None
    assert max(ra.arrived, rb.arrived) < min(ra.ended, rb.ended)  # the intervals overlap
    assert took < 0.35


async def test_sequential_calls_do_not_overlap(provider: TracerProvider) -> None:
    """seq entries run one after another: the second starts after the first answered."""
    async with RecordingServer(delay_s=0.1) as a, RecordingServer(delay_s=0.1) as b:
        cfg = ChainConfig(stages=parse_calls(f"seq:{a.url}/a;seq:{b.url}/b"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert (await fetch(f"{app.url}/x"))[0] == 200
    assert a.requests[0].ended is not None and b.requests[0].arrived >= a.requests[0].ended


async def test_failed_downstream_fails_the_hop_with_its_status(provider: TracerProvider) -> None:
    """A downstream error is the hop's error: 503 below → 503 here; the work after is skipped."""
    async with RecordingServer(statuses=[503]) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status, text = await fetch(f"{app.url}/x")
    assert status == 503
    assert json.loads(text)["calls"] == [{"service": "127.0.0.1", "status": 503, "attempts": 1}]
    assert len(leaf.requests) == 1  # no retry inside the app: retries are the mesh's job


async def test_a_failed_optional_side_call_degrades_the_reply_but_not_the_hop(
    provider: TracerProvider,
) -> None:
    """A side call marked `par?:` (ratings) may fail: the hop still answers 200 and says so."""
    async with RecordingServer(statuses=[200]) as main, RecordingServer(statuses=[503]) as side:
        cfg = ChainConfig(stages=parse_calls(f"par:{main.url}/main;par?:{side.url}/side"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status, text = await fetch(f"{app.url}/x")
    assert status == 200
    assert sorted(c["status"] for c in json.loads(text)["calls"]) == [200, 503]


async def test_a_failed_required_call_beside_an_optional_one_still_fails_the_hop(
    provider: TracerProvider,
) -> None:
    async with RecordingServer(statuses=[503]) as main, RecordingServer(statuses=[200]) as side:
        cfg = ChainConfig(stages=parse_calls(f"par:{main.url}/main;par?:{side.url}/side"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert (await fetch(f"{app.url}/x"))[0] == 503


async def test_unreachable_downstream_gives_502(provider: TracerProvider) -> None:
    """No response at all (connection refused) → 502 Bad Gateway from the hop."""
    cfg = ChainConfig(stages=parse_calls("seq:http://127.0.0.1:9/leaf"))
    async with serve_chain(cfg, provider.get_tracer("t")) as app:
        assert (await fetch(f"{app.url}/x"))[0] == 502


async def test_debug_work_reports_completed_and_deadline_outcomes(provider: TracerProvider) -> None:
    """Telemetry contract: /debug/work items per trace id with outcome completed|cancelled."""
    cfg = ChainConfig(name="pricing", work_before=WorkSpec("fixed", 50.0), pod="pricing-abc")
    other = "1" * 32
    async with serve_chain(cfg, provider.get_tracer("t")) as app, aiohttp.ClientSession() as s:
        async with s.get(f"{app.url}/x", headers={"traceparent": TRACEPARENT}) as resp:
            assert resp.status == 200
        headers = {"traceparent": f"00-{other}-b7ad6b7169203331-01",
                   "x-envoy-expected-rq-timeout-ms": "20"}
        async with s.get(f"{app.url}/x", headers=headers) as resp:
            assert resp.status == 504
        done, late = await debug_work(app), await debug_work(app, other)
        unknown = await debug_work(app, "2" * 32)
    assert done["service"] == "pricing" and done["pod"] == "pricing-abc"
    (item,) = done["items"]
    assert item["trace_id"] == TRACE_ID and item["outcome"] == "completed"
    assert 45 <= item["work_ms"] < 400 and item["ended"] >= item["started"]
    (cut,) = late["items"]
    assert cut["outcome"] == "cancelled" and cut["work_ms"] < 200
    assert unknown["items"] == []


async def test_debug_work_reports_orphaned_work_of_the_no_cancel_twin(
    provider: TracerProvider,
) -> None:
    """Telemetry contract: "orphaned" = completed after the caller had gone."""
    # The work outlasts the first look by far (a busy CI box takes ~100 ms for a first
    # aiohttp request); the second look polls until the twin's work has ended.
    cfg = ChainConfig(work_before=WorkSpec("fixed", 600.0), defect=Defect.NO_CANCEL)
    async with serve_chain(cfg, provider.get_tracer("t")) as app:
        await leave_after(app, None, delay=0.03)
        running = await debug_work(app)
        finished = running
        for _ in range(100):
            if finished["items"] and finished["items"][0]["outcome"] != "running":
                break
            await asyncio.sleep(0.02)
            finished = await debug_work(app)
    (item,) = running["items"]
    assert item["outcome"] == "running" and item["ended"] is None
    (item,) = finished["items"]
    assert item["outcome"] == "orphaned" and item["work_ms"] >= 590


async def test_debug_work_rejects_a_malformed_trace_id(provider: TracerProvider) -> None:
    """trace_id must be the 32 lowercase hex of a W3C trace-id."""
    async with serve_chain(ChainConfig(), provider.get_tracer("t")) as app:
        status, text = await fetch(f"{app.url}/debug/work?trace_id=XYZ")
    assert status == 400 and "32 lowercase hex" in text


async def test_healthz_answers_ready(provider: TracerProvider) -> None:
    """The readinessProbe target: 200 once the app can serve."""
    async with serve_chain(ChainConfig(name="orders"), provider.get_tracer("t")) as app:
        status, text = await fetch(f"{app.url}/healthz")
    assert status == 200 and json.loads(text) == {"status": "ok", "service": "orders"}


def test_work_ledger_forgets_the_oldest_traces_first() -> None:
    """/debug/work memory is bounded: beyond max_traces the oldest trace is dropped."""
    ledger = WorkLedger(max_traces=2)
    first = ledger.start("a" * 32)
    ledger.start("a" * 32)
    ledger.start("b" * 32)
    ledger.start("c" * 32)
    assert ledger.items("a" * 32) == [] and len(ledger.items("c" * 32)) == 1
    first.finish("cancelled")
    first.complete()  # a finished item keeps its first outcome
    assert first.outcome == "cancelled"


async def test_response_is_shaped_by_status_and_body_size(provider: TracerProvider) -> None:
    """CHAIN_STATUS and CHAIN_BODY_BYTES shape a successful answer; the body stays JSON."""
    cfg = ChainConfig(name="pricing", status=203, body_bytes=2048)
    async with serve_chain(cfg, provider.get_tracer("t")) as app:
        status, text = await fetch(f"{app.url}/x", {"traceparent": TRACEPARENT})
    tiny = ChainConfig(name="pricing", body_bytes=10)
    async with serve_chain(tiny, provider.get_tracer("t")) as app:
        _, small = await fetch(f"{app.url}/x")
    assert status == 203 and len(text.encode()) == 2048
    body = json.loads(text)
    assert (body["service"], body["trace_id"], body["calls"]) == ("pricing", TRACE_ID, [])
    assert "pad" not in json.loads(small) and len(small) > 10  # padding never truncates


async def test_a_5xx_status_marks_the_server_span_as_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """OTel HTTP semconv: a SERVER span is an error for 5xx answers."""
    async with serve_chain(ChainConfig(status=500), provider.get_tracer("t")) as app:
        assert (await fetch(f"{app.url}/x"))[0] == 500
    (server,) = exporter.get_finished_spans()
    assert server.status.status_code == StatusCode.ERROR
    assert [e.name for e in server.events] == ["work.start", "work.end"]
