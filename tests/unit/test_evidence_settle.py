"""Probes wait until a trace has settled (no run still in flight) instead of sleeping.

Spans are exported when they end (OTel SDK span processors; architecture.md "Spans"), so a
span whose parent is missing, or an inbound sidecar span without its app SERVER span, is
work still running (docs/fidelity.md §1.6: a caller leaving ends the sidecar's stream at
once, the app's run ends when the app stops). Exporters send in batches (the local mesh's
sidecars every 200 ms), so nothing counts as settled before the spans that ended last could
have been exported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from probes.evidence.request import SentRequest
from probes.evidence.settle import POLL_S, poll_interval, settled, wait_settled
from probes.evidence.spans import Span
from probes.evidence.traceapi import TraceReader
from probes.traffic import fresh_headers
from tests.data.evidence.fakecluster import serving

HOPS = ["frontend", "orders"]
ROOT_PARENT = "a" * 16


def span(span_id: str, parent: str | None, hop: str, *, sidecar: bool, kind: str = "server",
         direction: str | None = "inbound", flags: str = "-", end_us: int = 1) -> Span:
    attributes: dict[str, Any] = {"meshchaos.hop": hop}
    if sidecar:
        attributes.update({"component": "proxy", "response_flags": flags})
        if direction:
            attributes["meshchaos.direction"] = direction
    return Span("t" * 32, span_id, parent, hop, f"{hop} op", kind, 0, end_us, attributes, (),
                "unset", "", None)


def whole_chain(end_us: int = 1) -> list[Span]:
    """frontend → orders, every run ended; the orders app's run ended at ``end_us``."""
    return [span("1", ROOT_PARENT, "frontend", sidecar=True),
            span("2", "1", "frontend", sidecar=False),
            span("3", "2", "frontend", sidecar=True, kind="client", direction="outbound"),
            span("4", "3", "orders", sidecar=True),
            span("5", "4", "orders", sidecar=False, end_us=end_us)]


def test_a_trace_whose_every_run_ended_has_settled() -> None:
    assert settled(whole_chain(), ROOT_PARENT, HOPS)


def test_an_empty_trace_has_not_settled() -> None:
    assert not settled([], ROOT_PARENT, HOPS)


def test_a_call_still_in_flight_leaves_its_callee_without_a_parent() -> None:
    """The outbound sidecar span ends with the call: its callee's spans arrive first."""
    spans = [s for s in whole_chain() if s.span_id != "3"]
    assert not settled(spans, ROOT_PARENT, HOPS)


def test_an_app_still_running_after_its_caller_left_has_not_settled() -> None:
    """The inbound sidecar span ended (0 DC) but the app's SERVER span is not there yet."""
    spans = [s for s in whole_chain() if s.span_id != "5"]
    assert not settled(spans, ROOT_PARENT, HOPS)


def test_an_inbound_span_that_never_reached_its_app_needs_no_app_span() -> None:
    """503 UF: the app was down (§1.6), so no app run will ever end."""
    spans = [s for s in whole_chain() if s.span_id != "5"]
    spans[-1] = span("4", "3", "orders", sidecar=True, flags="UF,URX")
    assert settled(spans, ROOT_PARENT, HOPS)


def test_hops_outside_the_call_tree_are_not_waited_for() -> None:
    """The ingress gateway has a sidecar and no app."""
    spans = [*whole_chain(), span("9", "1", "istio-ingressgateway", sidecar=True)]
    assert settled(spans, ROOT_PARENT, HOPS)


class _Traces:
    """A Jaeger-style trace API whose traces gain their last span after a few polls."""

    def __init__(self, complete_after: int) -> None:
        self.polls = 0
        self.complete_after = complete_after
        self.last_end_us = 1  # when the last app run of each trace ended
        self.polled_at: list[float] = []

    def document(self, trace_ids: list[str]) -> dict[str, Any]:
        self.polls += 1
        self.polled_at.append(time.time())
        whole = whole_chain(self.last_end_us)
        spans = whole if self.polls > self.complete_after else whole[:-1]
        return {"data": [{"traceID": t, "processes": {"p1": {"serviceName": "x"}},
                          "spans": [_jaeger(s, t) for s in spans]} for t in trace_ids]}


def _jaeger(s: Span, trace_id: str) -> dict[str, Any]:
    refs = [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": s.parent_id}]
    tags = [{"key": k, "type": "string", "value": v} for k, v in s.attributes.items()]
    tags.append({"key": "span.kind", "type": "string", "value": s.kind})
    return {"traceID": trace_id, "spanID": s.span_id, "operationName": s.name,
            "references": refs, "startTime": 0, "duration": s.duration_us, "tags": tags,
            "logs": [],
            "processID": "p1", "warnings": None}


@pytest.fixture
def trace_api() -> Iterator[tuple[str, _Traces]]:
    traces = _Traces(complete_after=3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            ids = parse_qs(url.query).get("traceID") or [url.path.rsplit("/", 1)[-1]]
            body = json.dumps(traces.document(ids)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, traces


def _sent(answered: float = 0.0, *, sampled: bool = True) -> SentRequest:
    """A request whose answer came at epoch second ``answered`` (0: long ago)."""
    _, sent = fresh_headers("test", sampled=sampled)
    return replace(sent, parent_id=ROOT_PARENT, started_us=int(answered * 1e6), latency_ms=0.0)


def test_waiting_stops_once_the_trace_settled_and_stayed_so_for_one_more_poll(
        trace_api: tuple[str, _Traces]) -> None:
    url, traces = trace_api
    with TraceReader(url) as reader:
        result = wait_settled(reader, [_sent()], HOPS, wait_s=5.0, poll_s=0.01)
    assert result.complete
    assert traces.polls == 5  # 3 incomplete, then settled twice in a row
    assert [s.span_id for s in next(iter(result.traces.values()))] == ["1", "2", "3", "4", "5"]


def test_every_pending_trace_is_read_in_one_search_per_poll(
        trace_api: tuple[str, _Traces]) -> None:
    """Jaeger's GET /api/traces?traceID=a&traceID=b: one round trip for the whole batch."""
    url, traces = trace_api
    with TraceReader(url) as reader:
        result = wait_settled(reader, [_sent(), _sent(), _sent()], HOPS, wait_s=5.0, poll_s=0.01)
    assert result.complete and len(result.traces) == 3
    assert traces.polls == 5


def test_a_whole_trace_is_not_settled_before_its_last_spans_could_be_exported(
        trace_api: tuple[str, _Traces]) -> None:
    """Spans that ended just before the answer may still sit in an exporter's batch."""
    url, traces = trace_api
    traces.complete_after = 0
    answered = time.time()
    with TraceReader(url) as reader:
        assert wait_settled(reader, [_sent(answered)], HOPS, wait_s=5.0, poll_s=0.01,
                            lag_s=0.3)
    assert traces.polled_at[0] >= answered + 0.3 - 0.01  # no poll while nothing could be whole
    assert traces.polled_at[-1] >= answered + 0.3


def test_a_run_that_ended_after_the_answer_restarts_the_wait_from_its_end(
        trace_api: tuple[str, _Traces]) -> None:
    """An orphan's app run ends late: spans of its calls that ended with it may follow."""
    url, traces = trace_api
    traces.complete_after = 0
    answered = time.time() - 1.0
    ended = time.time() + 0.2
    traces.last_end_us = int(ended * 1e6)
    with TraceReader(url) as reader:
        assert wait_settled(reader, [_sent(answered)], HOPS, wait_s=5.0, poll_s=0.01,
                            lag_s=0.3)
    assert traces.polled_at[-1] >= ended + 0.3


def test_a_hold_keeps_a_settled_looking_trace_open_to_see_work_that_outlived_its_caller(
        trace_api: tuple[str, _Traces]) -> None:
    """Work still running leaves no span until it ends (an orphan below a caller that gave
    up looks like nothing at all), so the orphan-work probe holds each trace open."""
    url, traces = trace_api
    traces.complete_after = 0
    answered = time.time()
    with TraceReader(url) as reader:
        assert wait_settled(reader, [_sent(answered)], HOPS, wait_s=5.0, poll_s=0.01,
                            lag_s=0.05, hold_s=0.3)
    assert traces.polled_at[0] >= answered + 0.35 - 0.01
    assert traces.polled_at[-1] >= answered + 0.35


def test_unsampled_requests_alone_still_wait_for_the_export(
        trace_api: tuple[str, _Traces]) -> None:
    """Their evidence is that no span arrived, which means something only after the lag."""
    url, traces = trace_api
    answered = time.time()
    with TraceReader(url) as reader:
        result = wait_settled(reader, [_sent(answered, sampled=False)], HOPS, wait_s=5.0,
                              lag_s=0.2)
    assert result.complete and result.traces == {}
    assert traces.polls == 0 and time.time() >= answered + 0.2


def test_waiting_gives_up_after_wait_s_on_a_trace_that_never_settles(
        trace_api: tuple[str, _Traces]) -> None:
    url, traces = trace_api
    traces.complete_after = 10**6
    with TraceReader(url) as reader:
        assert not wait_settled(reader, [_sent()], HOPS, wait_s=0.2, poll_s=0.02)
    assert 2 <= traces.polls <= 20


def test_polls_are_spaced_by_a_fifth_of_the_export_lag_and_never_tighter_than_25_ms() -> None:
    """A cluster's trace backend (lag 7 s) is polled every 1.4 s, the local store every 25 ms."""
    assert poll_interval(7.0) == pytest.approx(1.4)
    assert poll_interval(0.12) == POLL_S == 0.025
