"""Spans and the bounded, indexed store that keeps them.

Spans are indexed by trace id and by service; when the store holds more than
``max_spans`` spans the oldest traces are dropped whole, so a query never sees
half a trace because of the bound. A span re-sent by an exporter retry (same
trace and span id) replaces the earlier copy instead of doubling it. Every trace
carries a version (a store-wide sequence number taken at its last change), so the
query API can answer a poll of an unchanged trace from its cache, or with 304.

A lock guards every access: the receiver and the query API run on one loop, but
tests and tools may read from other threads.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Span", "SpanEvent", "TraceQuery", "TraceStore"]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Span:
    """One finished span, ids as lowercase hex, times in epoch nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # server|client|internal|producer|consumer, "" when unspecified
    start_ns: int
    end_ns: int
    service: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    status_code: str = "UNSET"  # UNSET|OK|ERROR
    status_message: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class TraceQuery:
    """A search like Jaeger's: traces with at least one span matching every criterion."""

    service: str
    operation: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    start_ns: int | None = None
    end_ns: int | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    limit: int = 100

    def matches(self, span: Span, tag_of: Callable[[Span, str], str | None]) -> bool:
        if span.service != self.service or (self.operation and span.name != self.operation):
            return False
        if self.start_ns is not None and span.start_ns < self.start_ns:
            return False
        if self.end_ns is not None and span.start_ns > self.end_ns:
            return False
        if self.min_duration_ns is not None and span.duration_ns < self.min_duration_ns:
            return False
        if self.max_duration_ns is not None and span.duration_ns > self.max_duration_ns:
            return False
        return all(tag_of(span, key) == value for key, value in self.tags.items())


def _start(span: Span) -> int:
    return span.start_ns


class TraceStore:
    """Bounded in-memory span store, indexed by trace id and service."""

    def __init__(self, max_spans: int = 200_000) -> None:
        if max_spans < 1:
            raise ValueError(f"max_spans must be positive, not {max_spans}")
        self.max_spans = max_spans
        self._traces: OrderedDict[str, dict[str, Span]] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._sequence = 0
        self._by_service: dict[str, set[str]] = {}
        self._operations: dict[str, dict[str, str]] = {}
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def add(self, spans: Iterable[Span]) -> int:
        """Store spans; returns how many were new."""
        added = 0
        with self._lock:
            for span in spans:
                trace = self._traces.setdefault(span.trace_id, {})
                if span.span_id not in trace:
                    added += 1
                    self._count += 1
                trace[span.span_id] = span
                self._sequence += 1
                self._versions[span.trace_id] = self._sequence
                self._by_service.setdefault(span.service, set()).add(span.trace_id)
                self._operations.setdefault(span.service, {})[span.name] = span.kind
            self._evict()
        return added

    def _evict(self) -> None:
        while self._count > self.max_spans and len(self._traces) > 1:
            trace_id, spans = self._traces.popitem(last=False)
            self._versions.pop(trace_id, None)
            self._count -= len(spans)
            for service in {s.service for s in spans.values()}:
                self._by_service.get(service, set()).discard(trace_id)

    def trace(self, trace_id: str) -> list[Span] | None:
        """The spans of one trace, by start time (None when unknown)."""
        with self._lock:
            spans = self._traces.get(trace_id.lower().rjust(32, "0"))
            return sorted(spans.values(), key=_start) if spans else None

    def versioned(self, trace_ids: Iterable[str]) -> list[tuple[str, int, list[Span]]]:
        """``(trace id, version, spans by start time)`` of each known trace among ``trace_ids``.

        The version changes whenever a span of the trace is added or replaced, so
        ``(trace id, version)`` names one exact content of the trace.
        """
        found = []
        with self._lock:
            for raw in trace_ids:
                trace_id = raw.lower().rjust(32, "0")
                spans = self._traces.get(trace_id)
                if spans:
                    found.append((trace_id, self._versions[trace_id], list(spans.values())))
        return [(t, v, sorted(spans, key=_start)) for t, v, spans in found]

    def services(self) -> list[str]:
        with self._lock:
            return sorted(self._operations)

    def operations(self, service: str) -> list[tuple[str, str]]:
        """(operation name, span kind) pairs seen for a service, sorted by name."""
        with self._lock:
            return sorted(self._operations.get(service, {}).items())

    def find(self, query: TraceQuery,
             tag_of: Callable[[Span, str], str | None]) -> list[list[Span]]:
        """Traces with a matching span, most recent first, at most ``query.limit``.

        ``tag_of(span, key)`` reads one tag as text (the query API decides which
        tags a span has).
        """
        with self._lock:
            candidates = [list(self._traces[t].values())
                          for t in self._by_service.get(query.service, ()) if t in self._traces]
        found = [(min(s.start_ns for s in spans), spans) for spans in candidates
                 if any(query.matches(s, tag_of) for s in spans)]
        limit = query.limit if query.limit > 0 else len(found)
        newest = heapq.nlargest(limit, found, key=lambda item: item[0])
        return [sorted(spans, key=lambda s: s.start_ns) for _, spans in newest]
