"""Per-request evidence: the probe's own request, its trace and its access-log lines by hop.

The probe knows exactly what it sent (trace id, parent id, tracestate, B3 ids,
x-request-id), so evidence is correlated by those ids, never by time windows:
a log line belongs to the request when its traceparent carries the trace id or its
x-request-id equals the one sent (ignoring the 14th hex character, which Envoy's
UUID extension may rewrite to pack the trace decision, docs/fidelity.md §3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from probes.errors import ConfigurationError, EvidenceError
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.spans import Span

__all__ = [
    "CallTree",
    "HopEvidence",
    "LogIndex",
    "RequestEvidence",
    "SentRequest",
    "attach_uncorrelated_calls",
    "mask_request_id",
    "uncorrelated_calls",
]


@dataclass(frozen=True)
class CallTree:
    """Who calls whom: ``entry`` is called by the ingress; ``calls[h]`` are h's callees."""

    entry: str
    calls: Mapping[str, tuple[str, ...]]

    def hops(self) -> list[str]:
        """Every hop, breadth-first from the entry (the order breaks are reported in)."""
        return list(self._order)

    @cached_property
    def _order(self) -> tuple[str, ...]:
        order, queue = [], [self.entry]
        while queue:
            hop = queue.pop(0)
            if hop not in order:
                order.append(hop)
                queue.extend(self.calls.get(hop, ()))
        return tuple(order)

    @cached_property
    def _callers(self) -> dict[str, str]:
        return {c: h for h, callees in reversed(list(self.calls.items())) for c in callees}

    def caller(self, hop: str) -> str | None:
        return self._callers.get(hop)

    def below(self, hop: str) -> list[str]:
        """Every hop under ``hop`` (its callees, their callees, …)."""
        out: list[str] = []
        queue = list(self.calls.get(hop, ()))
        while queue:
            nxt = queue.pop(0)
            if nxt not in out:
                out.append(nxt)
                queue.extend(self.calls.get(nxt, ()))
        return out

    def edges(self) -> list[tuple[str, str]]:
        return list(self._edges)

    def describe(self) -> dict[str, Any]:
        """The tree as the ``call_tree`` key spells it (for reports and for reuse)."""
        return {"entry": self.entry,
                "calls": {h: list(c) for h, c in self.calls.items() if c}}

    @cached_property
    def _edges(self) -> tuple[tuple[str, str], ...]:
        return tuple((h, c) for h in self._order for c in self.calls.get(h, ()))

    @classmethod
    def from_config(cls, value: Mapping[str, object] | None) -> CallTree | None:
        """``{"entry": "frontend", "calls": {"frontend": ["orders"], …}}`` → an expectation.

        Probes take it as the ``call_tree`` argument or the ``call_tree`` configuration key;
        without one (None) the tree is whatever the evidence shows (:meth:`observe`).
        """
        if not value:
            return None
        calls = value.get("calls") or {}
        if not isinstance(calls, Mapping) or "entry" not in value:
            raise ConfigurationError(f"call_tree must be {{'entry': str, 'calls': {{hop: [callee, "
                                     f"...]}}}}, got {dict(value)!r}")
        return cls(str(value["entry"]), {str(k): tuple(str(c) for c in v)
                                         for k, v in calls.items()})

    @classmethod
    def observe(cls, evidence: Sequence[RequestEvidence], *, namespace: str | None = None,
                expected: CallTree | None = None) -> CallTree:
        """The call tree the sidecars recorded for these requests, plus ``expected``'s edges.

        An edge is an outbound access-log line or outbound sidecar span of one hop towards
        another service (its upstream cluster names it), so any entry name, depth and
        fan-out is found, apps with no spans of their own included. The entry is the hop
        nobody called whose inbound evidence starts first. Hops of another namespace (the
        ingress gateway's sidecar spans in ``istio-system``) are left out.
        """
        calls: dict[str, list[str]] = {}
        first_in: dict[str, int] = {}

        def add(caller: str, callee: str | None) -> None:
            if callee and callee != caller and callee not in calls.setdefault(caller, []):
                calls[caller].append(callee)

        foreign = _foreign_hops(evidence, namespace)
        for ev in evidence:
            for name, hop in ev.hops.items():
                if name in foreign:
                    continue
                for record in hop.logs_out:
                    add(name, record.upstream_service)
                for span in (*hop.sidecar_out, *hop.sidecar_attempts):
                    add(name, span.upstream_service)
                starts = [r.start_us for r in hop.logs_in if r.start_us] + \
                    [s.start_us for s in (*hop.sidecar_in, *hop.app_server)]
                if starts:
                    first_in[name] = min(first_in.get(name, starts[0]), *starts)
        if expected is not None:
            for caller, callee in expected.edges():
                add(caller, callee)
        called = {c for callees in calls.values() for c in callees}
        roots = sorted((h for h in first_in if h not in called), key=first_in.__getitem__)
        if expected is not None:
            entry = expected.entry
        elif roots:
            entry = roots[0]
        elif first_in:
            entry = min(first_in, key=first_in.__getitem__)
        else:
            raise EvidenceError("no hop of the namespace recorded any of the probe's requests "
                                "(no inbound access-log line or sidecar span carries their "
                                "trace id or x-request-id): nothing to judge")
        return cls(entry, {h: tuple(c) for h, c in calls.items() if c})


def _namespace_of(span: Span) -> str:
    """A sidecar span's namespace: its service name is ``<service>.<namespace>`` (Istio's
    canonical service), else the ``istio.namespace`` tag."""
    if "." in span.service:
        return span.service.split(".", 1)[1]
    return str(span.attributes.get("istio.namespace") or "")


def _foreign_hops(evidence: Sequence[RequestEvidence], namespace: str | None) -> set[str]:
    """Hops whose sidecar spans say they live in another namespace than the one judged."""
    if not namespace:
        return set()
    foreign: set[str] = set()
    for ev in evidence:
        for name, hop in ev.hops.items():
            spans = (*hop.sidecar_in, *hop.sidecar_out, *hop.sidecar_attempts)
            places = {_namespace_of(s) for s in spans} - {""}
            if places and namespace not in places and not hop.logs_in and not hop.logs_out:
                foreign.add(name)
    return foreign


def mask_request_id(request_id: str | None) -> str | None:
    """Blank the UUID's version nibble (index 14), which Envoy may rewrite (§3)."""
    if not request_id or len(request_id) < 15:
        return request_id
    return request_id[:14] + "_" + request_id[15:]


@dataclass(frozen=True)
class SentRequest:
    """What the probe sent and got back for one request."""

    trace_id: str
    parent_id: str
    sampled: bool
    tracestate: str
    request_id: str
    b3_trace_id: str | None = None
    b3_span_id: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    started_us: int = 0
    error: str | None = None


@dataclass
class HopEvidence:
    """One hop's spans and access-log lines for one request."""

    hop: str
    app_server: list[Span] = field(default_factory=list)
    app_client: list[Span] = field(default_factory=list)
    sidecar_in: list[Span] = field(default_factory=list)
    sidecar_out: list[Span] = field(default_factory=list)
    sidecar_attempts: list[Span] = field(default_factory=list)
    logs_in: list[AccessLogRecord] = field(default_factory=list)
    logs_out: list[AccessLogRecord] = field(default_factory=list)
    budget_memo: tuple[Any, ...] | None = None  # runs with budgets, see checks.deadlines

    @property
    def seen(self) -> bool:
        return bool(self.app_server or self.sidecar_in or self.logs_in)


class LogIndex:
    """All parsed access-log lines, indexed by trace id and masked request id."""

    def __init__(self, records: Iterable[AccessLogRecord]) -> None:
        self.by_trace: dict[str, list[AccessLogRecord]] = defaultdict(list)
        self.by_request: dict[str, list[AccessLogRecord]] = defaultdict(list)
        self.count = 0
        for record in records:
            self.count += 1
            if record.trace_id:
                self.by_trace[record.trace_id].append(record)
            masked = mask_request_id(record.request_id)
            if masked:
                self.by_request[masked].append(record)

    def for_request(self, sent: SentRequest) -> list[AccessLogRecord]:
        seen: dict[int, AccessLogRecord] = {}
        for record in self.by_trace.get(sent.trace_id, ()):
            seen[id(record)] = record
        for record in self.by_request.get(mask_request_id(sent.request_id) or "", ()):
            seen[id(record)] = record
        return sorted(seen.values(), key=lambda r: r.start_us or 0)


@dataclass
class RequestEvidence:
    """Everything known about one probe request, grouped by hop."""

    sent: SentRequest
    spans: Sequence[Span]
    logs: Sequence[AccessLogRecord]
    hops: dict[str, HopEvidence] = field(default_factory=dict)
    by_id: dict[str, Span] = field(default_factory=dict)
    by_parent: dict[str, list[Span]] = field(default_factory=dict)

    @classmethod
    def build(cls, sent: SentRequest, spans: Sequence[Span],
              logs: Sequence[AccessLogRecord]) -> RequestEvidence:
        evidence = cls(sent, spans, logs)
        for span in spans:
            evidence.by_id[span.span_id] = span
            if span.parent_id:
                evidence.by_parent.setdefault(span.parent_id, []).append(span)
            hop = evidence.hop(span.hop)
            if span.sidecar:
                direction = span.direction
                (hop.sidecar_out if direction == "outbound" else
                 hop.sidecar_attempts if direction == "attempt" else hop.sidecar_in).append(span)
            elif span.kind == "server":
                hop.app_server.append(span)
            elif span.kind == "client":
                hop.app_client.append(span)
        for record in logs:
            hop = evidence.hop(record.hop)
            (hop.logs_out if record.direction == "outbound" else hop.logs_in).append(record)
        return evidence

    def hop(self, name: str) -> HopEvidence:
        found = self.hops.get(name)
        if found is None:
            found = self.hops[name] = HopEvidence(name)
        return found

    def in_trace(self, hop: str) -> bool:
        return bool(self.hop(hop).app_server or self.hop(hop).sidecar_in)

    def nearest_app_ancestor(self, span: Span) -> Span | None:
        """Walk up through sidecar spans to the first app span (bounded by the span count)."""
        current = self.by_id.get(span.parent_id or "")
        for _ in range(len(self.spans)):
            if current is None or not current.sidecar:
                return current
            current = self.by_id.get(current.parent_id or "")
        return None

    def children(self, span_id: str) -> list[Span]:
        return self.by_parent.get(span_id, [])

    def subtree(self, span_id: str) -> frozenset[str]:
        """The ids of ``span_id`` and every span below it."""
        found = {span_id}
        queue = [span_id]
        while queue:
            for child in self.by_parent.get(queue.pop(), ()):
                if child.span_id not in found:
                    found.add(child.span_id)
                    queue.append(child.span_id)
        return frozenset(found)

    def log_lines(self, *hops: str) -> list[str]:
        return [r.line for h in hops for r in self.hop(h).logs_in + self.hop(h).logs_out]


def attach_uncorrelated_calls(evidence: Sequence[RequestEvidence],
                              records: Iterable[AccessLogRecord]) -> None:
    """Give each request the outbound calls its hops made with context of their own.

    A hop that drops the trace context *and* ``x-request-id`` makes calls that carry none
    of the probe's ids: its outbound sidecar starts a new trace and a new request id, so
    nothing correlates those lines with the request. They are still the request's calls
    when the same pod made them while serving it (inside its inbound line's time) with a
    request id no inbound line of that pod ever carried, nor a trace id one did (the call
    continued no other request through the hop). Such a line is added to the hop's
    outbound lines, marked by its foreign ids, so the topology has the edge and the
    continuity rules the break. A line that carries a trace id or request id some inbound
    line of that pod had continues another request (another client's, served meanwhile),
    and is left alone. Another client's request still in flight has not written its
    inbound line yet: read the logs again once such lines are old enough
    (:func:`uncorrelated_calls` finds them; :mod:`probes.evidence.collect` reads again).
    """
    for hop, record in _uncorrelated(evidence, records):
        hop.logs_out.append(record)


def uncorrelated_calls(evidence: Sequence[RequestEvidence],
                       records: Iterable[AccessLogRecord]) -> list[AccessLogRecord]:
    """The lines :func:`attach_uncorrelated_calls` would give to some request."""
    return list({id(r): r for _, r in _uncorrelated(evidence, records)}.values())


def _uncorrelated(evidence: Sequence[RequestEvidence], records: Iterable[AccessLogRecord],
                  ) -> Iterator[tuple[HopEvidence, AccessLogRecord]]:
    records = list(records)
    carried: dict[str, set[str]] = defaultdict(set)  # ids some inbound line of the pod had
    for record in records:
        if record.direction == "inbound":
            carried[record.pod].update(_ids(record))
    known = {id(r) for ev in evidence for r in ev.logs}
    for record in records:
        if (record.direction != "outbound" or id(record) in known or record.start_us is None
                or carried[record.pod] & _ids(record)):
            continue
        for ev in evidence:
            hop = ev.hops.get(record.hop)
            if hop is not None and any(_during(record, inbound) for inbound in hop.logs_in
                                       if inbound.pod == record.pod):
                yield hop, record


def _ids(record: AccessLogRecord) -> set[str]:
    """The request's identities a line shows: its trace id and its masked x-request-id."""
    found = {record.trace_id or "", mask_request_id(record.request_id) or ""}
    return found - {""}


def _during(call: AccessLogRecord, inbound: AccessLogRecord) -> bool:
    start, end = inbound.start_us, inbound.end_us
    return start is not None and end is not None and start <= (call.start_us or 0) <= end
