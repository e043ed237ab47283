"""Deadlines through one chain hop: budget in → shrinking timeout out → 504 once spent."""

from __future__ import annotations

import time

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fixtures.chain.budget import Deadline, incoming_budget_ms, parse_grpc_timeout
from fixtures.chain.config import ChainConfig, WorkSpec, parse_calls
from fixtures.chain.testing import Forwarder, RecordingServer, RunningChain, serve_chain

UPSTREAM = "x-envoy-upstream-rq-timeout-ms"
EXPECTED = "x-envoy-expected-rq-timeout-ms"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(("value", "ms"), [
    ("1H", 3_600_000.0), ("2M", 120_000.0), ("3S", 3000.0), ("250m", 250.0),
    ("1500u", 1.5), ("2000000n", 2.0), ("99999999m", 99_999_999.0), (" 10m ", 10.0),
])
def test_grpc_timeout_units_convert_to_milliseconds(value: str, ms: float) -> None:
    """gRPC PROTOCOL-HTTP2: Timeout → "grpc-timeout" TimeoutValue TimeoutUnit; TimeoutValue is
    at most 8 ASCII digits; units H hours, M minutes, S seconds, m ms, u µs, n ns."""
    assert parse_grpc_timeout(value) == ms


@pytest.mark.parametrize(
    "value", ["", "10", "m", "123456789m", "10s", "10ms", "-5m", "1.5S", "\u0661\u0660m"]
)
def test_malformed_grpc_timeout_is_ignored(value: str) -> None:
    """gRPC PROTOCOL-HTTP2: 9+ digits, unknown units and missing parts are not a TimeoutValue;
    a header that does not parse gives no budget rather than failing the request."""
    assert parse_grpc_timeout(value) is None


@pytest.mark.parametrize(("headers", "budget"), [
    ({EXPECTED: "750"}, 750.0),
    ({"grpc-timeout": "300m"}, 300.0),
    ({EXPECTED: "750", "grpc-timeout": "2S"}, 750.0),
    ({EXPECTED: "abc", "grpc-timeout": "2S"}, 2000.0),
    ({EXPECTED: "12.5"}, None),
    ({}, None),
])
def test_incoming_budget_is_the_smallest_parsable_header(
    headers: dict[str, str], budget: float | None
) -> None:
    """fidelity §1.4: a non-integer timeout header is ignored (Envoy SimpleAtoi); with two
    budgets the tighter one binds."""
    assert incoming_budget_ms(headers) == budget


def test_outbound_timeout_is_budget_minus_elapsed_minus_margin() -> None:
    """The budget shrinks along the chain: left = budget - elapsed - margin (whole ms)."""
    deadline = Deadline(start=100.0, budget_ms=1000.0, margin_ms=5.0)
    assert deadline.outbound_timeout_ms(100.0) == 995
    assert deadline.outbound_timeout_ms(100.2505) == 744
    assert deadline.outbound_timeout_ms(100.996) < 1  # spent: within the margin
    assert deadline.at == 101.0


async def get(app: RunningChain, headers: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(
        f"{app.url}/x", headers=headers
    ) as resp:
        await resp.read()
        return resp.status, time.monotonic() - started


async def test_budget_header_in_shrinks_by_elapsed_and_margin_on_the_way_out(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """x-envoy-expected-rq-timeout-ms in (fidelity §1.5) → x-envoy-upstream-rq-timeout-ms
    out = budget - elapsed - margin: 1000 in, 100 ms of work, margin 5 → at most 895."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"),
                          work_before=WorkSpec("fixed", 100.0), margin_ms=5.0)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert (await get(app, {EXPECTED: "1000"}))[0] == 200
    sent = int(leaf.requests[0].headers[UPSTREAM])
    assert 1000 - 100 - 5 - 60 <= sent <= 1000 - 100 - 5
    (client,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert (client.attributes or {})["meshchaos.timeout_sent_ms"] == sent


async def test_grpc_timeout_budget_is_honoured_like_the_envoy_header(
    provider: TracerProvider,
) -> None:
    """gRPC deadline propagation (§6): grpc-timeout 300m → the call gets less than 300 ms."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), margin_ms=5.0)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await get(app, {"grpc-timeout": "300m"})
    assert 240 <= int(leaf.requests[0].headers[UPSTREAM]) <= 295


async def test_sequential_calls_each_get_only_what_is_left(provider: TracerProvider) -> None:
    """A later call's budget is smaller by the time the earlier call took."""
    async with RecordingServer(delay_s=0.15) as slow, RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{slow.url}/a;seq:{leaf.url}/b"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await get(app, {EXPECTED: "1000"})
    first = int(slow.requests[0].headers[UPSTREAM])
    second = int(leaf.requests[0].headers[UPSTREAM])
    assert first - second >= 150


async def test_spent_budget_fails_fast_with_504_without_calling_downstream(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A call that would get less than 1 ms is never made: 504 at once, no CLIENT span, the
    work recorded as cancelled by the deadline."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"),
                          work_before=WorkSpec("fixed", 30.0), margin_ms=5.0)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status, took = await get(app, {EXPECTED: "34"})
    assert status == 504 and leaf.requests == []
    assert took < 0.5
    (server,) = exporter.get_finished_spans()
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == "cancelled: deadline"
    assert [(e.name, dict(e.attributes or {})) for e in server.events] == [
        ("work.start", {}), ("work.cancelled", {"reason": "deadline"})]


async def test_deadline_during_simulated_work_answers_504_at_the_deadline(
    provider: TracerProvider,
) -> None:
    """The request's own deadline stops its work: budget 100 ms, work 2 s → 504 after ~100 ms."""
    cfg = ChainConfig(work_before=WorkSpec("fixed", 2000.0))
    async with serve_chain(cfg, provider.get_tracer("t")) as app:
        status, took = await get(app, {EXPECTED: "100", "traceparent": TRACEPARENT})
        (item,) = app.service.ledger.items(TRACEPARENT.split("-")[1])
    assert status == 504 and 0.09 <= took < 0.6
    assert item.outcome == "cancelled"


async def test_downstream_slower_than_the_budget_is_cut_by_the_client_timeout(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The sent timeout is also enforced locally: a 2 s downstream under a 200 ms budget is
    abandoned (its connection closed) after ~195 ms and the hop answers 504; both spans say
    "cancelled: deadline" (telemetry contract)."""
    async with RecordingServer(delay_s=2.0) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status, took = await get(app, {EXPECTED: "200"})
            (rec,) = await leaf.wait_ended()
    assert status == 504 and 0.15 <= took < 0.7
    assert rec.cancelled
    spans = {s.kind: s for s in exporter.get_finished_spans()}
    client, server = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert [(e.name, dict(e.attributes or {})) for e in client.events] == [
        ("call.cancelled", {"reason": "deadline"})]
    assert client.status.description == server.status.description == "cancelled: deadline"
    assert (server.attributes or {})["http.response.status_code"] == 504


async def test_no_budget_sends_no_timeout_header(provider: TracerProvider) -> None:
    """Without an incoming budget or a configured default there is no deadline (Istio's default
    route timeout is 0 = none, §2.1), so no header is invented."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await get(app, {})
    assert UPSTREAM not in leaf.requests[0].headers


async def test_configured_default_budget_applies_when_none_arrives(
    provider: TracerProvider,
) -> None:
    """CHAIN_DEFAULT_BUDGET_MS is the budget of requests that arrive without one."""
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), default_budget_ms=500.0)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await get(app, {})
            await get(app, {EXPECTED: "300"})
    assert 440 <= int(leaf.requests[0].headers[UPSTREAM]) <= 495
    assert int(leaf.requests[1].headers[UPSTREAM]) <= 295


async def test_budget_shrinks_hop_by_hop_through_sidecar_like_forwarders(
    provider: TracerProvider,
) -> None:
    """Across three hops (front → mid → leaf) whose proxies turn the app's
    x-envoy-upstream-rq-timeout-ms into the next hop's x-envoy-expected-rq-timeout-ms (a
    sidecar honouring app headers, §1.5/§1.7), each hop's budget is smaller than its caller's."""
    async with RecordingServer() as leaf, Forwarder({}) as proxy:
        tracer = provider.get_tracer("t")
        mid_cfg = ChainConfig(name="mid", stages=parse_calls("seq:http://leaf:8080/leaf"),
                              work_before=WorkSpec("fixed", 20.0), proxy=proxy.url)
        async with serve_chain(mid_cfg, tracer) as mid:
            front_cfg = ChainConfig(name="front", stages=parse_calls("seq:http://mid:8080/mid"),
                                    work_before=WorkSpec("fixed", 20.0), proxy=proxy.url)
            async with serve_chain(front_cfg, tracer) as front:
                proxy.routes.update({"leaf": leaf.port, "mid": mid.port})
                assert (await get(front, {EXPECTED: "1000"}))[0] == 200
    to_mid, to_leaf = (int(h[UPSTREAM]) for h in proxy.seen)
    assert int(leaf.requests[0].headers[EXPECTED]) == to_leaf
    assert 1000 - 20 - 5 - 60 <= to_mid <= 975
    assert to_mid - 20 - 5 - 60 <= to_leaf <= to_mid - 25
