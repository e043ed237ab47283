"""TraceStore bounds and indexes (docs/architecture.md: ``TraceStore(max_spans=200_000)``)."""

from __future__ import annotations

import json

import pytest

from localmesh.tracestore import Span, TraceStore
from localmesh.tracestore.jaeger import RenderedTraces, tag_value
from localmesh.tracestore.model import TraceQuery


def _span(trace: int, span: int, *, service: str = "orders", start: int = 0,
          parent: int = 0, name: str = "GET /orders") -> Span:
    return Span(trace_id=f"{trace:032x}", span_id=f"{span:016x}",
                parent_span_id=f"{parent:016x}" if parent else "", name=name, kind="server",
                start_ns=start, end_ns=start + 1_000_000, service=service)


def test_oldest_traces_are_evicted_whole_past_the_bound() -> None:
    """Past max_spans the oldest trace goes, all its spans at once (no half traces)."""
    store = TraceStore(max_spans=4)
    store.add([_span(1, 1), _span(1, 2, parent=1)])
    store.add([_span(2, 3), _span(2, 4, parent=3)])
    store.add([_span(3, 5)])
    assert store.trace(f"{1:032x}") is None
    assert [s.span_id for s in store.trace(f"{2:032x}") or []] == [f"{3:016x}", f"{4:016x}"]
    assert len(store) == 3
    found = store.find(TraceQuery(service="orders"), tag_value)
    assert {spans[0].trace_id for spans in found} == {f"{2:032x}", f"{3:032x}"}


def test_a_span_sent_twice_is_stored_once() -> None:
    """An exporter retry re-sends spans; the store keeps one copy per span id."""
    store = TraceStore()
    assert store.add([_span(1, 1)]) == 1
    assert store.add([_span(1, 1)]) == 0
    assert len(store) == 1 and len(store.trace(f"{1:032x}") or []) == 1


def test_trace_ids_without_leading_zeros_are_found() -> None:
    """Jaeger prints ids without leading zeros; lookups pad them back to 32 hex."""
    store = TraceStore()
    store.add([_span(0xABC, 1)])
    assert store.trace("abc") is not None and store.trace("ABC") is not None


def test_services_and_operations_are_indexed() -> None:
    """Every service and its operations (with span kinds) are listed."""
    store = TraceStore()
    store.add([_span(1, 1), _span(1, 2, service="leaf", name="GET /price")])
    assert store.services() == ["leaf", "orders"]
    assert store.operations("leaf") == [("GET /price", "server")]


def test_a_store_must_hold_at_least_one_span() -> None:
    """A bound below one is a configuration error, said at construction."""
    with pytest.raises(ValueError, match="max_spans must be positive, not 0"):
        TraceStore(max_spans=0)


def test_tag_search_sees_span_process_and_log_tags() -> None:
    """Jaeger's tag search matches span tags, process tags and log fields."""
    from localmesh.tracestore import SpanEvent

    store = TraceStore()
    store.add([Span(trace_id=f"{1:032x}", span_id=f"{1:016x}", parent_span_id="",
                    name="GET /orders", kind="client", start_ns=1, end_ns=2, service="orders",
                    attributes={"http.status_code": 504, "retry": True},
                    events=(SpanEvent("work.cancelled", 1, {"reason": "deadline"}),),
                    status_code="ERROR", resource={"k8s.pod.name": "orders-1"})])

    def hits(**tags: str) -> int:
        return len(store.find(TraceQuery(service="orders", tags=tags), tag_value))

    assert hits(**{"http.status_code": "504", "retry": "true"}) == 1
    assert hits(**{"span.kind": "client", "error": "true", "otel.status_code": "ERROR"}) == 1
    assert hits(**{"k8s.pod.name": "orders-1", "reason": "deadline"}) == 1
    assert hits(event="work.cancelled") == 1
    assert hits(**{"http.status_code": "200"}) == 0
    assert hits(**{"span.kind": "server"}) == 0


def test_a_trace_version_changes_with_each_new_span_and_only_then() -> None:
    """The query API caches rendered traces by (trace id, version)."""
    store = TraceStore()
    store.add([_span(1, 1)])
    [(trace_id, version, spans)] = store.versioned([f"{1:032x}", f"{2:032x}"])
    assert (trace_id, len(spans)) == (f"{1:032x}", 1)
    assert store.versioned(["1"])[0][1] == version  # reading changes nothing
    store.add([_span(2, 2)])
    assert store.versioned(["1"])[0][1] == version  # another trace's span is not this one's
    store.add([_span(1, 3, parent=1, start=5)])
    [(_, newer, spans)] = store.versioned(["1"])
    assert newer != version and [s.span_id for s in spans] == [f"{1:016x}", f"{3:016x}"]


def test_rendered_traces_are_cached_per_version_within_a_byte_bound() -> None:
    """A poll of an unchanged trace reuses its rendered answer; the cache never grows past
    its bound (least recently read traces go first)."""
    store = TraceStore()
    for trace in range(1, 4):
        store.add([_span(trace, trace)])
    rendered = RenderedTraces(max_bytes=10**6)
    [(t1, v1, spans1)] = store.versioned(["1"])
    first = rendered.document(t1, v1, spans1)
    assert rendered.document(t1, v1, spans1) is first
    assert json.loads(first)["spans"][0]["spanID"] == f"{1:016x}"
    store.add([_span(1, 9, parent=1)])
    [(_, v2, spans2)] = store.versioned(["1"])
    assert len(json.loads(rendered.document(t1, v2, spans2))["spans"]) == 2

    small = RenderedTraces(max_bytes=len(first) * 2)
    for t, v, spans in store.versioned(["1", "2", "3"]):
        small.document(t, v, spans)
    assert small.size <= small.max_bytes
