"""Wait until the traces of a batch of requests have settled: no work still running.

Spans are exported when they end, in batches: the local mesh's sidecars post 20 ms after
a span ends (60 ms after their previous POST when busy), the chain's apps every 50 ms
(``OTEL_BSP_SCHEDULE_DELAY``). So a span that ended
at ``t`` is in the trace store by ``t + EXPORT_LAG_S``. A trace has *settled* when a poll
made at least ``EXPORT_LAG_S`` after both the last answer the probe got and the latest
span end the trace shows returns the same spans as the poll before it, and

- every span's parent is in the trace (the root's parent is the probe's own span id):
  a missing parent is a span that has not ended yet, e.g. the outbound sidecar span of a
  call whose attempts have already been logged;
- every inbound sidecar span of a hop of the call tree that reached its app has an app
  SERVER span under it: the app finished that run (docs/fidelity.md §1.6: a caller
  leaving ends the sidecar's stream at once, the app's run ends when the app stops).

Work that ends before the probe's last answer is then all in; work that outlives it (an
orphan) shows as an inbound sidecar span without its app run, and once that run's span
arrives the wait starts again from its end. This replaces fixed sleeps: a correct chain
settles as soon as its spans can all have been exported, a defective one as soon as its
orphans end, and the wait is bounded by ``wait_s``. Polls are batched (one search for
every pending trace) and conditional, so polling often costs little.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from probes.evidence.request import SentRequest
from probes.evidence.spans import Span
from probes.evidence.traceapi import TraceReader

__all__ = ["DEFAULT_SETTLE_S", "EXPORT_LAG_S", "Settled", "answered_at", "app_hops",
           "poll_interval", "settled", "wait_settled"]

# Inbound flags that say the app never got the request (no upstream, connect failure, §1.6).
_APP_NOT_REACHED = frozenset({"UF", "UH", "NR", "NC", "UO", "URX", "UC"})

# The longest export delay of the local mesh (a busy sidecar: 60 ms) plus room for the
# encode, the POST and the store's ingest on a busy machine. Targets carry their own
# (``Target.span_export_lag_s``: a cluster's exporters flush every 5 s).
EXPORT_LAG_S = 0.12
POLL_S = 0.025


def poll_interval(lag_s: float) -> float:
    """How often to poll for a target with this export lag: a fifth of it, at least
    ``POLL_S`` (the local store every 25 ms, a cluster's trace backend every 1.4 s)."""
    return max(POLL_S, lag_s / 5)


def settled(spans: Sequence[Span], root_parent: str, hops: Iterable[str]) -> bool:
    """Whether one trace shows no work still running (rules in the module docstring).

    ``hops`` are the hops whose apps emit spans: only there does an inbound sidecar span
    without its app SERVER span mean a run still in flight (an app that exports no span
    never leaves one, and its trace is whole once its sidecars' spans are in).
    """
    if not spans:
        return False
    ids = {s.span_id for s in spans}
    if any(s.parent_id and s.parent_id != root_parent and s.parent_id not in ids
           for s in spans):
        return False
    judged = set(hops)
    finished = {s.parent_id for s in spans if not s.sidecar and s.kind == "server"}
    for span in spans:
        if not (span.sidecar and span.direction == "inbound" and span.hop in judged):
            continue
        flags = set(str(span.attributes.get("response_flags", "")).split(","))
        if not flags & _APP_NOT_REACHED and span.span_id not in finished:
            return False
    return True


def app_hops(traces: Iterable[Sequence[Span]]) -> set[str]:
    """The hops whose apps emitted a SERVER span in any of these traces."""
    return {s.hop for spans in traces for s in spans if not s.sidecar and s.kind == "server"}


def answered_at(sent: Sequence[SentRequest]) -> float:
    """Epoch seconds of the last answer (or give-up) among the probe's requests."""
    return max((_answered(r) for r in sent), default=0.0)


def _answered(request: SentRequest) -> float:
    return request.started_us / 1e6 + (request.latency_ms or 0.0) / 1000


@dataclass
class Settled:
    """The sampled requests' traces as last read, and whether all of them settled."""

    complete: bool
    traces: dict[str, list[Span]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.complete


def wait_settled(reader: TraceReader, sent: Sequence[SentRequest],
                 hops: Iterable[str] | None = None, *, wait_s: float, poll_s: float = POLL_S,
                 lag_s: float = EXPORT_LAG_S, hold_s: float = 0.0) -> Settled:
    """Poll the sampled requests' traces until all have settled, at most ``wait_s``.

    Returns the traces (the last read of each) and whether they settled; a trace still
    unsettled at the end is left for the checks to judge as it is (its evidence says
    what ran past the deadline so far). Each trace's lag runs from its own request's
    answer. Unsampled requests have no trace to wait for, but the wait still lasts until
    their answers' spans could have arrived: their evidence is that none did.

    ``hold_s`` keeps each trace open that long after its answer (plus the lag) even when
    it looks settled: work still running leaves no span until it ends, so a probe that
    looks for work outliving its caller (an orphan) must watch for a while to see it end.
    ``hops``: hops known to emit app spans, beyond those the traces show.
    """
    known = set(hops or ())
    requests = {r.trace_id: r for r in sent if r.sampled}
    traces: dict[str, list[Span]] = {t: [] for t in requests}
    previous: dict[str, frozenset[str]] = {}
    done: set[str] = set()
    # Fixed batches in send order: an unchanged batch is answered 304 on the next poll.
    order = list(requests)
    batches = [order[i:i + reader.batch_size] for i in range(0, len(order), reader.batch_size)]
    end = time.monotonic() + wait_s
    # No trace can be complete before its answer's spans could be exported: the first
    # poll comes one poll before the earliest such moment (the next one confirms).
    _sleep_until_wall(min((_answered(r) for r in requests.values()), default=0.0)
                      + hold_s + lag_s - poll_s, end)
    while True:
        # The time before the read, not after: what a read returns is as of some moment
        # after this, so a trace judged settled "lag after its last span" truly was.
        now = time.time()
        for batch in batches:
            if any(t not in done for t in batch):
                traces.update(reader.fetch_many(batch))
        # Apps that emit spans are learnt from the batch itself: one hop's span in any
        # request says its runs leave spans, so a run missing elsewhere is still running.
        expected = known | app_hops(traces.values())
        for trace_id, request in requests.items():
            if trace_id in done:
                continue
            spans = traces[trace_id]
            ids = frozenset(s.span_id for s in spans)
            latest = max((s.end_us for s in spans), default=0) / 1e6
            if (now >= max(_answered(request) + hold_s, latest) + lag_s
                    and previous.get(trace_id) == ids
                    and settled(spans, request.parent_id, expected)):
                done.add(trace_id)
            previous[trace_id] = ids
        if len(done) == len(requests) and now >= answered_at(sent) + hold_s + lag_s:
            return Settled(True, traces)
        if time.monotonic() >= end:
            return Settled(False, traces)
        time.sleep(min(poll_s, max(0.0, end - time.monotonic())))


def _sleep_until_wall(when: float, end_monotonic: float) -> None:
    delay = min(when - time.time(), end_monotonic - time.monotonic())
    if delay > 0:
        time.sleep(delay)


DEFAULT_SETTLE_S = 8.0
