"""Each defective twin does exactly its one bug and nothing else.

Every twin is observed through the same five scenarios and summarised as a
:class:`Profile`; the expected profile is the correct service's with only the
twin's bug changed, so a twin that breaks anything else, or fails to break its
own thing, fails here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fixtures.chain.config import GRPC_CALL_PATH, ChainConfig, WorkSpec, parse_calls
from fixtures.chain.defects import CORRECT, Defect, behaviour_for, parse_defect
from fixtures.chain.errors import ConfigError
from fixtures.chain.testing import RecordingServer, RunningChain, serve_chain

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
INCOMING = {
    "traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE",
    "x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT_ID, "x-b3-sampled": "1",
    "x-request-id": "7c9f6a2e-1f0b-4c55-9d6f-3a1f1b2c9e01",
    "x-envoy-expected-rq-timeout-ms": "1000",
}


@dataclass(frozen=True)
class Profile:
    """What a hop observably does, one field per behaviour."""

    joins_trace: bool = True  # the SERVER span is a child of the incoming traceparent
    traceparent: str = "child"  # child | unchanged | absent | other
    tracestate: str = "forwarded"
    b3: str = "forwarded"
    request_id: str = "forwarded"
    budget_sent: str = "shrunk"  # shrunk | grown | absent
    deadline_status: int = 504  # hop status when the downstream outlives the budget
    attempts_on_503: int = 1
    call_on_caller_gone: str = "closed"  # closed | left-open
    work_on_caller_gone: str = "cancelled"  # cancelled | orphaned
    status_on_side_call_503: int = 200  # hop status when only its optional call failed
    # The same hop calling a gRPC callee (grpc://): what its call's metadata and deadline
    # carry, and how often it calls a callee that answers UNAVAILABLE.
    grpc_traceparent: str = "child"
    grpc_tracestate: str = "forwarded"
    grpc_b3: str = "forwarded"
    grpc_request_id: str = "forwarded"
    grpc_deadline: str = "shrunk"  # shrunk | grown | fresh | absent
    grpc_attempts_on_unavailable: int = 1


GOOD = Profile()
BUG = {
    Defect.NONE: {},
    Defect.DROP_TRACEPARENT: {"traceparent": "absent", "grpc_traceparent": "absent"},
    Defect.REUSE_PARENT: {"traceparent": "unchanged", "grpc_traceparent": "unchanged"},
    Defect.DROP_TRACESTATE: {"tracestate": "absent", "grpc_tracestate": "absent"},
    Defect.DROP_B3: {"b3": "absent", "grpc_b3": "absent"},
    Defect.DROP_REQUEST_ID: {"request_id": "absent", "grpc_request_id": "absent"},
    Defect.IGNORE_BUDGET: {"budget_sent": "absent", "deadline_status": 200,
                           "grpc_deadline": "absent"},
    Defect.ADD_ELAPSED: {"budget_sent": "grown", "grpc_deadline": "grown"},
    Defect.NO_CANCEL: {"call_on_caller_gone": "left-open", "work_on_caller_gone": "orphaned"},
    Defect.CANCEL_SELF_ONLY: {"call_on_caller_gone": "left-open"},
    Defect.APP_RETRIES: {"attempts_on_503": 3, "grpc_attempts_on_unavailable": 3},
    Defect.NO_FALLBACK: {"status_on_side_call_503": 503},
    Defect.GRPC_FRESH_DEADLINE: {"grpc_deadline": "fresh"},
    Defect.GRPC_DROP_METADATA: {"grpc_traceparent": "absent", "grpc_tracestate": "absent",
                                "grpc_b3": "absent"},
    Defect.GRPC_RETRY_UNAVAILABLE: {"grpc_attempts_on_unavailable": 3},
    # The messaging twins change only the AMQP leg (tests/unit/test_chain_messaging.py): over
    # HTTP they must look exactly like the correct service.
    Defect.AMQP_DROP_TRACE_HEADERS: {},
    Defect.AMQP_NEW_TRACE: {},
    Defect.AMQP_PROCESS_EXPIRED: {},
    Defect.AMQP_ACK_BEFORE_WORK: {},
    Defect.AMQP_NOT_IDEMPOTENT: {},
}


def tracer_and_spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def get(app: RunningChain, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.get(
        f"{app.url}/x", headers=headers
    ) as resp:
        await resp.read()
        return resp.status


async def observe_headers(defect: Defect) -> dict[str, object]:
    provider, exporter = tracer_and_spans()
    async with RecordingServer() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), defect=defect,
                          work_before=WorkSpec("fixed", 30.0))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert await get(app, INCOMING) == 200
    out = leaf.requests[0].headers
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (client,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    client_id = f"{client.context.span_id:016x}"
    sent = out.get("traceparent")
    budget = int(out.get("x-envoy-upstream-rq-timeout-ms", "-1"))
    return {
        "joins_trace": server.parent is not None and server.parent.span_id == int(PARENT_ID, 16),
        "traceparent": "absent" if sent is None else "unchanged" if sent == TRACEPARENT
        else "child" if sent == f"00-{TRACE_ID}-{client_id}-01" else "other",
        "tracestate": "forwarded" if out.get("tracestate") == INCOMING["tracestate"] else "absent",
        "b3": "forwarded"
        if (out.get("x-b3-traceid"), out.get("x-b3-spanid")) == (TRACE_ID, client_id)
        else "absent",
        "request_id": "forwarded" if out.get("x-request-id") == INCOMING["x-request-id"]
        else "absent",
        "budget_sent": "absent" if budget < 0 else "grown" if budget > 1000
        else "shrunk" if budget <= 1000 - 30 - 5 else "other",
    }


async def observe_deadline(defect: Defect) -> dict[str, object]:
    provider, _ = tracer_and_spans()
    async with RecordingServer(delay_s=0.3) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), defect=defect)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status = await get(app, {"x-envoy-expected-rq-timeout-ms": "80"})
    return {"deadline_status": status}


async def observe_retries(defect: Defect) -> dict[str, object]:
    provider, _ = tracer_and_spans()
    async with RecordingServer(statuses=[503, 503, 200]) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), defect=defect)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            await get(app, {})
    return {"attempts_on_503": len(leaf.requests)}


async def observe_caller_gone(defect: Defect) -> dict[str, object]:
    provider, _ = tracer_and_spans()
    async with RecordingServer(delay_s=0.3) as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:{leaf.url}/leaf"), defect=defect)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            _, writer = await asyncio.open_connection("127.0.0.1", app.port)
            request = f"GET /x HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\n\r\n"
            writer.write(request.encode())
            await leaf.wait_arrived()
            writer.close()
            await writer.wait_closed()
            (rec,) = await leaf.wait_ended()
            await asyncio.sleep(0.05)  # let a detached twin finish its bookkeeping
            (item,) = app.service.ledger.items(TRACE_ID)
    return {
        "call_on_caller_gone": "closed" if rec.cancelled else "left-open",
        "work_on_caller_gone": item.outcome,
    }


async def observe_side_call_failure(defect: Defect) -> dict[str, object]:
    """A required call that succeeds beside an optional one that always fails ``503``."""
    provider, _ = tracer_and_spans()
    async with RecordingServer() as main, RecordingServer(statuses=[503]) as side:
        cfg = ChainConfig(stages=parse_calls(f"par:{main.url}/main;par?:{side.url}/side"),
                          defect=defect)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            status = await get(app, {})
    assert main.requests and side.requests, "both calls must have been made"
    return {"status_on_side_call_503": status}


class GrpcLeaf:
    """A grpcio server with the chain's method on raw bytes: records each call's metadata
    and deadline; answers UNAVAILABLE when ``failing``."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.calls: list[tuple[dict[str, str], float | None]] = []
        self.port = 0
        self._server = grpc.aio.server()

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.calls.append(({k: str(v) for k, v in context.invocation_metadata() or ()},
                           context.time_remaining()))
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return b"{}"

    async def __aenter__(self) -> GrpcLeaf:
        service, method = GRPC_CALL_PATH.strip("/").split("/")
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(self._call)}),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(0)


async def observe_grpc(defect: Defect) -> dict[str, object]:
    """The hop calling a gRPC callee: its metadata, its deadline, its retries."""
    provider, exporter = tracer_and_spans()
    async with GrpcLeaf() as leaf:
        cfg = ChainConfig(stages=parse_calls(f"seq:grpc://127.0.0.1:{leaf.port}"),
                          defect=defect, work_before=WorkSpec("fixed", 30.0))
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert await get(app, INCOMING) == 200
    ((meta, remaining),) = leaf.calls
    (client,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    sent = meta.get("traceparent")
    ms = None if remaining is None else remaining * 1000
    async with GrpcLeaf(failing=True) as down:
        cfg = ChainConfig(stages=parse_calls(f"seq:grpc://127.0.0.1:{down.port}"),
                          defect=defect)
        async with serve_chain(cfg, provider.get_tracer("t")) as app:
            assert await get(app, {}) == 503  # grpcToHttpStatus: UNAVAILABLE is 503
    return {
        "grpc_traceparent": "absent" if sent is None else "unchanged" if sent == TRACEPARENT
        else "child" if sent == f"00-{TRACE_ID}-{client.context.span_id:016x}-01" else "other",
        "grpc_tracestate": "forwarded" if meta.get("tracestate") == INCOMING["tracestate"]
        else "absent",
        "grpc_b3": "forwarded" if (meta.get("x-b3-traceid"), meta.get("x-b3-spanid"))
        == (TRACE_ID, f"{client.context.span_id:016x}") else "absent",
        "grpc_request_id": "forwarded"
        if meta.get("x-request-id") == INCOMING["x-request-id"] else "absent",
        "grpc_deadline": "absent" if ms is None else "fresh" if ms > 20_000
        else "grown" if ms > 1000 else "shrunk" if ms <= 1000 - 30 - 5 else "other",
        "grpc_attempts_on_unavailable": len(down.calls),
    }


async def observe(defect: Defect) -> Profile:
    fields: dict[str, object] = {}
    for scenario in (observe_headers, observe_deadline, observe_retries, observe_caller_gone,
                     observe_side_call_failure, observe_grpc):
        fields.update(await scenario(defect))
    return Profile(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("defect", [pytest.param(d, id=d.value) for d in Defect])
async def test_twin_does_its_one_bug_and_nothing_else(defect: Defect) -> None:
    """Each twin's profile equals the correct service's except for the fields of its bug:
    W3C "outgoing requests MUST carry an updated parent-id" (reuse-parent breaks it), Istio's
    header list traceparent/tracestate/x-b3-*/x-request-id (drop-*), the shrinking budget
    (ignore-budget, add-elapsed), Go-style cancellation (no-cancel, cancel-self-only),
    retries left to the mesh (app-retries), and a side call's failure degrading the reply
    instead of failing it (no-fallback); on a gRPC call, the deadline and the trace
    context in the metadata (grpc-fresh-deadline, grpc-drop-metadata) and no retry of
    UNAVAILABLE (grpc-retry-unavailable)."""
    expected = dataclasses.replace(GOOD, **BUG[defect])  # type: ignore[arg-type]
    assert await observe(defect) == expected


def test_every_defect_changes_the_behaviour_and_only_the_correct_one_does_not() -> None:
    """A twin whose switch is a no-op would not be a twin."""
    assert behaviour_for(Defect.NONE) == CORRECT
    assert all(behaviour_for(d) != CORRECT for d in Defect if d is not Defect.NONE)
    assert set(BUG) == set(Defect)


def test_unknown_defect_is_refused_naming_the_known_ones() -> None:
    """CHAIN_DEFECT must name a twin; a typo must not silently run the correct service."""
    assert parse_defect("") is Defect.NONE
    with pytest.raises(ConfigError, match=r"CHAIN_DEFECT='drop-traceparnt'.*drop-traceparent"):
        parse_defect("drop-traceparnt")
