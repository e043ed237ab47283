"""Gather the evidence of a batch of probe requests from a target (logs + traces).

Traces are read once they have settled (:mod:`probes.evidence.settle`): every span the
requests caused is in, or the wait ran out and the trace is judged as it stands. The
access logs are read after that, so every line of a settled request is there too (a
sidecar writes a request's line when the stream ends, and flushes every 50 ms).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from probes.deadline import Deadline
from probes.errors import EvidenceError
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.gcpause import gc_paused
from probes.evidence.kube import MeshSettings, read_mesh_settings, read_proxy_logs
from probes.evidence.request import (
    CallTree,
    LogIndex,
    RequestEvidence,
    SentRequest,
    attach_uncorrelated_calls,
    uncorrelated_calls,
)
from probes.evidence.settle import DEFAULT_SETTLE_S, poll_interval, wait_settled
from probes.evidence.spans import Span
from probes.evidence.traceapi import TraceReader
from probes.target import Target

__all__ = ["UNCORRELATED_SETTLE_S", "Collected", "collect", "merge_lines", "sleep_past"]


@dataclass
class Collected:
    """The evidence of every request plus what was read to get it."""

    requests: list[RequestEvidence]
    mesh: MeshSettings
    log_lines: int
    unparsed_lines: int
    tree: CallTree
    settled: bool = True  # False: the wait ran out with work still in flight
    seconds: float = 0.0  # wall time spent collecting, the wait for settled traces included


def collect(target: Target, sent: Sequence[SentRequest], expected: CallTree | None,
            deadline: Deadline, *, trace_wait_s: float = DEFAULT_SETTLE_S, logs: bool = True,
            hold_s: float = 0.0) -> Collected:
    """Wait (at most ``trace_wait_s``) until the traces settled, then read the istio-proxy
    logs covering the requests, and read the call tree off them (:meth:`CallTree.observe`;
    ``expected``, when given, adds the edges that must be there). ``hold_s``: see
    :func:`wait_settled`."""
    began = time.monotonic()
    if not sent:
        raise EvidenceError("no request was sent, so there is nothing to read back")
    api_client = target.api_client()
    try:
        mesh = read_mesh_settings(api_client, timeout_s=min(5.0, deadline.check("reading mesh")))
        sampled = [r.trace_id for r in sent if r.sampled]
        with TraceReader(target.traces_url, target.traces_api) as reader:
            lag = target.span_export_lag_s
            # A slow exporter (a cluster's 5 s flush) needs room for two polls past its lag.
            wait = min(max(trace_wait_s, 2 * lag + 1.0),
                       deadline.check("waiting for traces") * 0.6)
            result = wait_settled(reader, sent, wait_s=wait, lag_s=lag,
                                  poll_s=poll_interval(lag), hold_s=hold_s)
            traces = dict(result.traces)
            # Unsampled requests must leave no span: look once, after the sampled ones had
            # all the time they needed to arrive.
            unsampled = [r.trace_id for r in sent if not r.sampled]
            if unsampled:
                traces.update(reader.fetch_many(unsampled))
        if sampled and not any(traces.values()):
            raise EvidenceError(f"none of {len(sampled)} sampled traces (first "
                                f"{sampled[0]}) appeared at '{target.traces_url}' within "
                                f"{wait:.1f} s")
        records: list[AccessLogRecord] = []
        unparsed = 0
        if logs:
            if not mesh.access_log_enabled:
                raise EvidenceError("the mesh access log is off (istio-system/istio "
                                    "accessLogFile is empty): no sidecar evidence to read")
            first = min(r.started_us for r in sent) / 1e6

            def read() -> tuple[list[AccessLogRecord], int]:
                return read_proxy_logs(api_client, target.namespace, mesh.log_format,
                                       since_seconds=math.ceil(time.time() - first) + 5,
                                       timeout_s=min(10.0, deadline.check("reading logs")))

            records, unparsed = read()
            if not records:
                raise EvidenceError(f"no access-log line could be read from the istio-proxy "
                                    f"containers of namespace '{target.namespace}' "
                                    f"({unparsed} unparsed lines)")
            index, evidence = _indexed(sent, traces, records)
            pending = uncorrelated_calls(evidence, records)
            if pending:
                sleep_past(pending, deadline)
                # what the first read had stays (a pod killed meanwhile takes its log along)
                again, unparsed = read()
                records = merge_lines(records, again)
                index, evidence = _indexed(sent, traces, records)
        else:
            index, evidence = _indexed(sent, traces, records)
    finally:
        api_client.close()
    attach_uncorrelated_calls(evidence, records)
    tree = CallTree.observe(evidence, namespace=target.namespace, expected=expected)
    return Collected(evidence, mesh, index.count, unparsed, tree, result.complete,
                     time.monotonic() - began)


# A line :func:`attach_uncorrelated_calls` would give a request (a call with ids no inbound
# line of its pod had) may be another client's call whose inbound line is not written yet:
# a sidecar logs a stream when it ends (docs/fidelity.md §2.3), and that request was still
# in flight through the hop. Such lines are judged on a second read made this long after
# the last of them ended: a hop of the suite's chains answers within milliseconds of its
# last call's end, so another client's inbound line is there by then; a line still without
# one is the request's own.
UNCORRELATED_SETTLE_S = 1.0


def _indexed(sent: Sequence[SentRequest], traces: dict[str, list[Span]],
             records: list[AccessLogRecord]) -> tuple[LogIndex, list[RequestEvidence]]:
    """The lines indexed by request, and each request's evidence from its trace and lines."""
    with gc_paused():
        index = LogIndex(records)
        return index, [RequestEvidence.build(r, traces.get(r.trace_id, []),
                                             index.for_request(r)) for r in sent]


def merge_lines(first: Sequence[AccessLogRecord], later: Sequence[AccessLogRecord],
                ) -> list[AccessLogRecord]:
    """Every line of two reads once (a line is its pod and its text), in the first's order."""
    merged = {(r.pod, r.line): r for r in first}
    for record in later:
        merged.setdefault((record.pod, record.line), record)
    return list(merged.values())


def sleep_past(pending: Sequence[AccessLogRecord], deadline: Deadline) -> None:
    """Sleep until the last of ``pending`` ended ``UNCORRELATED_SETTLE_S`` ago (at most a
    quarter of what the deadline leaves)."""
    last_end = max((r.end_us or r.start_us or 0) for r in pending) / 1e6
    delay = last_end + UNCORRELATED_SETTLE_S - time.time()
    if delay > 0:
        time.sleep(min(delay, deadline.check("waiting for in-flight requests") / 4))
