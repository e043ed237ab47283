"""Trace documents (Jaeger JSON, Tempo OTLP-JSON) → :class:`Span` records.

Both shapes are normalised to one record with what the checks need: ids, service,
hop, kind, time in µs, attributes, events, status, tracestate, and whether the span
was made by a sidecar (``component=proxy``, architecture.md "Spans") or by the app
(the chain's telemetry contract).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from probes.errors import EvidenceError

__all__ = ["Span", "SpanEvent", "parse_jaeger", "parse_tempo"]


@dataclass(frozen=True)
class SpanEvent:
    """A span event (Jaeger ``logs[]``, OTLP ``events[]``)."""

    time_us: int
    name: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Span:
    """One span, whoever emitted it (derived properties are cached: checks read them often)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    name: str
    kind: str
    start_us: int
    duration_us: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...]
    status: str  # "ok" | "error" | "unset"
    status_message: str
    tracestate: str | None

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us

    @cached_property
    def sidecar(self) -> bool:
        return self.attributes.get("component") == "proxy"

    @cached_property
    def hop(self) -> str:
        """The chain hop (service name without namespace) the span belongs to."""
        for key in ("meshchaos.hop", "istio.canonical_service"):
            value = self.attributes.get(key)
            if value:
                return str(value)
        return self.service.split(".", 1)[0]

    @cached_property
    def direction(self) -> str | None:
        """``inbound``/``outbound`` for sidecar spans; ``attempt`` for the child CLIENT span an
        outbound sidecar emits per upstream attempt (it carries no direction of its own)."""
        value = self.attributes.get("meshchaos.direction")
        if value:
            return str(value)
        if self.sidecar and self.kind == "client":
            return "attempt"
        return None

    @cached_property
    def upstream_service(self) -> str | None:
        """The service an outbound/attempt sidecar span called (``outbound|8080|v1|orders.…``)."""
        cluster = str(self.attributes.get("upstream_cluster", ""))
        if not cluster.startswith("outbound|"):
            return None
        return cluster.rsplit("|", 1)[-1].split(".", 1)[0] or None

    @cached_property
    def budget_ms(self) -> float | None:
        """Budget the span was given: app ``meshchaos.budget_ms`` or sidecar expected timeout."""
        for key in ("meshchaos.budget_ms", "meshchaos.expected_rq_timeout_ms"):
            value = self.attributes.get(key)
            if value is not None:
                return _number(value)
        return None

    @cached_property
    def cancelled(self) -> bool:
        return (self.status_message.startswith("cancelled")
                or any(e.name in ("work.cancelled", "call.cancelled") for e in self.events))

    def header(self, name: str) -> str | None:
        """An echoed request header (``http.request.header.<name>``, OTel semconv)."""
        value = self.attributes.get(f"http.request.header.{name}")
        if isinstance(value, str) and value.startswith("["):
            # Jaeger renders an array attribute as its JSON text.
            try:
                value = json.loads(value)
            except ValueError:
                return value
        if isinstance(value, list):
            return str(value[0]) if value else None
        return str(value) if value is not None else None


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _status(tags: Mapping[str, Any]) -> tuple[str, str]:
    code = str(tags.get("otel.status_code", "")).lower()
    message = str(tags.get("otel.status_description", "") or "")
    if code == "error" or tags.get("error") in (True, "true"):
        return "error", message
    return ("ok" if code == "ok" else "unset"), message


def parse_jaeger(doc: Mapping[str, Any]) -> list[Span]:
    """Parse a Jaeger query-API answer ``{"data": [{"traceID", "spans", "processes"}]}``."""
    data = doc.get("data")
    if not isinstance(data, list):
        raise EvidenceError(f"not a jaeger traces answer: 'data' is {type(data).__name__}")
    spans: list[Span] = []
    for trace in data:
        processes = trace.get("processes") or {}
        for raw in trace.get("spans") or ():
            spans.append(_jaeger_span(raw, processes))
    return spans


def _jaeger_span(raw: Mapping[str, Any], processes: Mapping[str, Any]) -> Span:
    # Plain loops: this runs once per span of every trace read (benchmarks/bench_probes.py).
    tags = {t["key"]: t.get("value") for t in raw.get("tags") or ()}
    parent = None
    for ref in raw.get("references") or ():
        if ref.get("refType", "CHILD_OF") == "CHILD_OF":
            parent = ref["spanID"]
            break
    process = processes.get(raw.get("processID", ""), {})
    status, message = _status(tags)
    events = tuple(_jaeger_event(log) for log in raw.get("logs") or ())
    return Span(trace_id=str(raw["traceID"]).rjust(32, "0"), span_id=str(raw["spanID"]),
                parent_id=parent, service=str(process.get("serviceName", "")),
                name=str(raw.get("operationName", "")), kind=str(tags.get("span.kind", "")),
                start_us=int(raw.get("startTime", 0)), duration_us=int(raw.get("duration", 0)),
                attributes=tags, events=events, status=status, status_message=message,
                tracestate=_tracestate(tags, raw))


def _jaeger_event(log: Mapping[str, Any]) -> SpanEvent:
    fields = {f["key"]: f.get("value") for f in log.get("fields") or ()}
    name = fields.get("event", fields.get("message", ""))
    return SpanEvent(int(log.get("timestamp", 0)), str(name), fields)


def _tracestate(tags: Mapping[str, Any], raw: Mapping[str, Any]) -> str | None:
    # Jaeger's OTLP translator keeps the W3C tracestate as the tag "w3c.tracestate".
    value = tags.get("w3c.tracestate", raw.get("traceState"))
    return str(value) if value else None


_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def parse_tempo(doc: Mapping[str, Any]) -> list[Span]:
    """Parse Tempo's ``/api/traces/<id>`` answer (OTLP-JSON ``batches`` or ``resourceSpans``)."""
    batches = doc.get("batches", doc.get("resourceSpans"))
    if not isinstance(batches, list):
        raise EvidenceError("not a tempo trace answer: no 'batches' or 'resourceSpans'")
    spans: list[Span] = []
    for batch in batches:
        resource = _otlp_attributes(batch.get("resource", {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope in batch.get("scopeSpans", batch.get("instrumentationLibrarySpans")) or ():
            spans.extend(_tempo_span(raw, service) for raw in scope.get("spans") or ())
    return spans


def _tempo_span(raw: Mapping[str, Any], service: str) -> Span:
    attributes = _otlp_attributes(raw.get("attributes"))
    kind = raw.get("kind", 0)
    kind_name = (_KINDS.get(kind, "") if isinstance(kind, int)
                 else str(kind).removeprefix("SPAN_KIND_").lower())
    status = raw.get("status") or {}
    code = str(status.get("code", ""))
    start = int(raw.get("startTimeUnixNano", 0)) // 1000
    end = int(raw.get("endTimeUnixNano", 0)) // 1000
    events = tuple(SpanEvent(int(e.get("timeUnixNano", 0)) // 1000, str(e.get("name", "")),
                             _otlp_attributes(e.get("attributes")))
                   for e in raw.get("events") or ())
    attributes.setdefault("span.kind", kind_name)
    parent = raw.get("parentSpanId")
    return Span(trace_id=_otlp_id(raw.get("traceId"), 32), span_id=_otlp_id(raw.get("spanId"), 16),
                parent_id=_otlp_id(parent, 16) if parent else None, service=service,
                name=str(raw.get("name", "")), kind=kind_name, start_us=start,
                duration_us=max(0, end - start), attributes=attributes, events=events,
                status="error" if code in ("2", "STATUS_CODE_ERROR") else
                "ok" if code in ("1", "STATUS_CODE_OK") else "unset",
                status_message=str(status.get("message", "")),
                tracestate=raw.get("traceState") or None)


def _otlp_id(value: Any, hex_len: int) -> str:
    """OTLP-JSON ids are hex (spec) but Tempo answers base64 (protobuf JSON) in older versions."""
    text = str(value or "")
    if len(text) == hex_len and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    try:
        return base64.b64decode(text, validate=True).hex()
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError(f"span id {text!r} is neither hex nor base64") from exc


def _otlp_attributes(items: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        out[str(item.get("key"))] = _otlp_value(item.get("value") or {})
    return out


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values") or ()]
    return None
