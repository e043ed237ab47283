"""Lay out a trace as a waterfall: one bar per span, with the marks a timeout story needs.

Input is one trace of a probe's ``traces`` (``probes/results.py``): ``{"trace_id",
"spans": [{"span_id", "parent_id", "service", "name", "kind", "start_us", "duration_us",
"budget_ms", "deadline_us", "status", "status_code", "response_flags", "cancelled",
"sidecar"}]}``. Each span becomes a
:class:`Bar` with its place on a shared time axis (percent of the trace's extent), the
deadline the hop had, whether its timeout fired, whether its work was cancelled, and
whether it went on after its caller had already answered or given up (the span ends
after its parent does: orphan work).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Bar", "Waterfall", "layout_trace"]

# A timer fired at this span: Envoy's response flag UT (§1.1, §1.2), or an app that says
# it stopped on its deadline. A bare 504 is not enough: callers pass a 504 on.
_TIMEOUT_FLAG = "UT"
_TIMEOUT_WORDS = ("timeout", "deadline")


@dataclass(frozen=True)
class Bar:
    """One span on the waterfall; positions are percent of the trace's time extent."""

    span_id: str
    label: str
    depth: int
    left: float
    width: float
    start_ms: float
    duration_ms: float
    status: str
    deadline: float | None
    budget_ms: float | None
    timeout_fired: bool
    cancelled: bool
    orphan_from: float | None


@dataclass(frozen=True)
class Waterfall:
    """A laid-out trace: its id, its extent in ms and its bars in tree order."""

    trace_id: str
    extent_ms: float
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class _Span:
    span_id: str
    parent_id: str | None
    label: str
    start: float
    end: float
    status: str
    flags: str
    deadline: float | None
    budget_ms: float | None
    cancelled: bool


def layout_trace(trace: Mapping[str, Any]) -> Waterfall:
    """Lay out one trace; spans without ids or times are left out."""
    spans = [s for s in (_span(raw) for raw in trace.get("spans") or []) if s is not None]
    trace_id = str(trace.get("trace_id", "?"))
    if not spans:
        return Waterfall(trace_id=trace_id, extent_ms=0.0, bars=())
    origin = min(s.start for s in spans)
    horizon = max([s.end for s in spans] + [s.deadline for s in spans if s.deadline]) - origin
    extent = max(horizon, 1.0)
    by_id = {s.span_id: s for s in spans}
    bars = [_bar(span, depth, origin, extent, by_id) for span, depth in _tree_order(spans, by_id)]
    return Waterfall(trace_id=trace_id, extent_ms=extent / 1000.0, bars=tuple(bars))


def _span(raw: Any) -> _Span | None:
    if not isinstance(raw, Mapping):
        return None
    start = _number(raw, "start_us", "start", "startTime")
    duration = _number(raw, "duration_us", "duration")
    span_id = raw.get("span_id") or raw.get("spanID")
    if start is None or duration is None or not span_id:
        return None
    budget = _number(raw, "budget_ms", "budget")
    deadline = _number(raw, "deadline_us")
    if deadline is None and budget is not None and budget > 0:
        deadline = start + budget * 1000.0
    service = str(raw.get("service", "?"))
    sidecar = " (sidecar)" if raw.get("sidecar") else ""
    parent = raw.get("parent_id", raw.get("parent"))
    flags = str(raw.get("response_flags") or "")
    flags = "" if flags == "-" else flags
    code = raw.get("status_code")
    status = " ".join(str(x) for x in (code, flags, raw.get("status")) if x not in (None, ""))
    return _Span(span_id=str(span_id), parent_id=str(parent) if parent else None,
                 label=f"{service}{sidecar} · {raw.get('name', '')}", start=start,
                 end=start + max(duration, 0.0), status=status, flags=flags,
                 deadline=deadline, budget_ms=budget, cancelled=bool(raw.get("cancelled")))


def _number(raw: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _tree_order(spans: list[_Span], by_id: dict[str, _Span]) -> list[tuple[_Span, int]]:
    children: dict[str | None, list[_Span]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in by_id else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[_Span, int]] = []
    stack = [(s, 0) for s in sorted(children.get(None, []), key=lambda s: -s.start)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:  # a cycle in broken traces must not loop forever
            continue
        seen.add(span.span_id)
        ordered.append((span, depth))
        kids = sorted(children.get(span.span_id, []), key=lambda s: -s.start)
        stack.extend((kid, depth + 1) for kid in kids)
    return ordered


def _bar(span: _Span, depth: int, origin: float, extent: float,
         by_id: dict[str, _Span]) -> Bar:
    parent = by_id.get(span.parent_id) if span.parent_id else None
    # Work that ends after its caller's span ended went on after the caller left.
    orphan = parent is not None and span.end > parent.end
    return Bar(span_id=span.span_id, label=span.label, depth=depth,
               left=_pct(span.start - origin, extent),
               width=max(_pct(span.end - span.start, extent), 0.3),
               start_ms=(span.start - origin) / 1000.0,
               duration_ms=(span.end - span.start) / 1000.0, status=span.status,
               deadline=_pct(span.deadline - origin, extent) if span.deadline else None,
               budget_ms=span.budget_ms, timeout_fired=_timed_out(span),
               cancelled=span.cancelled,
               orphan_from=_pct(parent.end - origin, extent) if orphan and parent else None)


def _timed_out(span: _Span) -> bool:
    if _TIMEOUT_FLAG in re.split(r"[^A-Z]+", span.flags) or \
            _TIMEOUT_FLAG in re.split(r"[^A-Za-z]+", span.status):
        return True
    lowered = span.status.lower()
    return any(word in lowered for word in _TIMEOUT_WORDS)


def _pct(value: float, extent: float) -> float:
    return round(min(max(value / extent * 100.0, 0.0), 100.0), 3)
