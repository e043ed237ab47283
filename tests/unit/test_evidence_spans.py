"""Trace documents → spans: Jaeger JSON (architecture.md Trace store) and Tempo OTLP-JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from probes.errors import EvidenceError
from probes.evidence.spans import parse_jaeger, parse_tempo

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"


def test_jaeger_answer_yields_sidecar_and_app_spans_by_hop() -> None:
    """architecture.md Spans: sidecar spans carry component=proxy and meshchaos.direction;
    the per-attempt child CLIENT spans (Envoy start_child_span) carry none."""
    spans = parse_jaeger(json.loads((DATA / "correct/traces.json").read_text()))
    sidecars = [s for s in spans if s.sidecar]
    apps = [s for s in spans if not s.sidecar]
    assert {s.hop for s in apps if s.kind == "server"} == {
        "frontend", "orders", "inventory", "pricing", "ratings"}
    assert {s.direction for s in sidecars} == {"inbound", "outbound", "attempt"}
    orders = next(s for s in apps if s.hop == "orders" and s.kind == "server")
    assert orders.budget_ms is not None and orders.tracestate == "meshchaos=run-1"
    assert orders.header("x-b3-traceid") == orders.trace_id


def test_cancelled_span_is_read_from_its_status_and_events() -> None:
    """Telemetry contract: a cancelled request ends ERROR 'cancelled: <reason>'."""
    spans = parse_jaeger(json.loads((DATA / "timeout-correct/traces.json").read_text()))
    orders = next(s for s in spans if s.hop == "orders" and not s.sidecar and s.kind == "server")
    assert orders.cancelled and orders.status == "error"
    assert orders.status_message == "cancelled: caller-gone"


def test_not_a_jaeger_answer_raises() -> None:
    with pytest.raises(EvidenceError, match="not a jaeger traces answer"):
        parse_jaeger({"traces": []})


def _tempo_doc(trace_hex: str, span_hex: str, encode: bool) -> dict[str, object]:
    def enc(value: str) -> str:
        return base64.b64encode(bytes.fromhex(value)).decode() if encode else value

    return {"batches": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "orders"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": enc(trace_hex), "spanId": enc(span_hex), "parentSpanId": "",
            "name": "GET /api", "kind": "SPAN_KIND_SERVER", "traceState": "meshchaos=r",
            "startTimeUnixNano": "1795713903123000000", "endTimeUnixNano": "1795713903223000000",
            "attributes": [{"key": "meshchaos.budget_ms", "value": {"intValue": "900"}},
                           {"key": "meshchaos.hop", "value": {"stringValue": "orders"}}],
            "events": [{"name": "work.cancelled", "timeUnixNano": "1795713903200000000"}],
            "status": {"code": "STATUS_CODE_ERROR", "message": "cancelled: deadline"}}]}]}]}


@pytest.mark.parametrize("encode", [pytest.param(False, id="hex-ids"),
                                    pytest.param(True, id="base64-ids")])
def test_tempo_otlp_json_is_read_with_hex_or_base64_ids(encode: bool) -> None:
    """Tempo /api/traces/<id> answers OTLP-JSON; older versions base64-encode ids."""
    trace_hex, span_hex = "ab" * 16, "cd" * 8
    (span,) = parse_tempo(_tempo_doc(trace_hex, span_hex, encode))
    assert (span.trace_id, span.span_id, span.parent_id) == (trace_hex, span_hex, None)
    assert span.kind == "server" and span.duration_us == 100_000
    assert span.budget_ms == 900 and span.cancelled and span.tracestate == "meshchaos=r"


def test_tempo_answer_without_batches_raises() -> None:
    with pytest.raises(EvidenceError, match="not a tempo trace answer"):
        parse_tempo({"data": []})
