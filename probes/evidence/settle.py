"""Wait until the traces of a batch of requests have settled: no work still running.

Spans are exported when they end, so a trace that looks whole may still have work in
flight: a call left running after its caller gave up, a retry, an app that did not notice
its caller leave. A trace has *settled* when two polls in a row return the same spans and

- every span's parent is in the trace (the root's parent is the probe's own span id):
  a missing parent is a span that has not ended yet, e.g. the outbound sidecar span of a
  call whose attempts have already been logged;
- every inbound sidecar span of a hop of the call tree that reached its app has an app
  SERVER span under it: the app finished that run (mesh-semantics.md §1.6: a caller
  leaving ends the sidecar's stream at once, the app's run ends when the app stops).

This replaces fixed sleeps: a correct chain settles as soon as its spans are exported, a
defective one as soon as its orphans end, and the wait is bounded by ``wait_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from probes.deadline import Deadline
from probes.evidence.request import CallTree, SentRequest
from probes.evidence.spans import Span
from probes.evidence.traceapi import TraceReader
from probes.target import Target

__all__ = ["COLLECT_WAIT_S", "settle", "settled", "wait_settled"]

# Inbound flags that say the app never got the request (no upstream, connect failure, §1.6).
_APP_NOT_REACHED = frozenset({"UF", "UH", "NR", "NC", "UO", "URX", "UC"})


def settled(spans: Sequence[Span], root_parent: str, hops: Iterable[str]) -> bool:
    """Whether one trace shows no work still running (rules in the module docstring)."""
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


def wait_settled(reader: TraceReader, sent: Sequence[SentRequest], hops: Iterable[str], *,
                 wait_s: float, poll_s: float = 0.1) -> bool:
    """Poll the sampled requests' traces until all have settled, at most ``wait_s``.

    Returns whether they settled; a trace still unsettled at the end is left for the
    checks to judge as it is (its evidence says what ran past the deadline so far).
    """
    expected = list(hops)
    pending = {r.trace_id: r.parent_id for r in sent if r.sampled}
    previous: dict[str, int] = {}
    end = time.monotonic() + wait_s
    while pending:
        for trace_id, root_parent in list(pending.items()):
            spans = reader.fetch(trace_id)
            if settled(spans, root_parent, expected) and previous.get(trace_id) == len(spans):
                del pending[trace_id]
            previous[trace_id] = len(spans)
        if not pending:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(min(poll_s, max(0.0, end - time.monotonic())))
    return True


# After settling, collect() only needs one read of each trace.
COLLECT_WAIT_S = 0.2
DEFAULT_SETTLE_S = 8.0


def settle(target: Target, sent: Sequence[SentRequest], tree: CallTree, deadline: Deadline,
           wait_s: float = DEFAULT_SETTLE_S) -> bool:
    """:func:`wait_settled` against the target's trace API, within the probe's deadline."""
    wait = min(wait_s, deadline.check("waiting for the traces to settle") * 0.5)
    with TraceReader(target.traces_url, target.traces_api) as reader:
        return wait_settled(reader, sent, tree.hops(), wait_s=wait)
