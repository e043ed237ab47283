"""Read back the access-log lines of requests a probe sent, once the logs stopped growing
(probes that judge sidecar lines only, without waiting for traces)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from probes.deadline import Deadline
from probes.errors import EvidenceError
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.collect import merge_lines, sleep_past
from probes.evidence.kube import read_access_log_settings, read_proxy_logs
from probes.evidence.request import (
    LogIndex,
    RequestEvidence,
    SentRequest,
    attach_uncorrelated_calls,
    uncorrelated_calls,
)
from probes.evidence.settle import poll_interval
from probes.target import Target

__all__ = ["read_back_logs"]


def read_back_logs(target: Target, sent: Sequence[SentRequest],
                   deadline: Deadline) -> tuple[list[RequestEvidence], int]:
    """The requests' lines once the logs stopped growing.

    A sidecar writes a request's line when its stream ends, which for every line of a
    request is before the probe had its answer, and flushes it a little later (the local
    mesh every 50 ms, a cluster's Envoy on its flush interval): read after the export lag,
    then again until two reads agree (at most twice the lag plus a second).
    """
    if not sent:
        raise EvidenceError("no request was sent, so there is nothing to read back")
    lag = target.span_export_lag_s
    answered = max(r.started_us / 1e6 + (r.latency_ms or 0.0) / 1000 for r in sent)
    first = min(r.started_us for r in sent) / 1e6
    client = target.api_client()
    try:
        mesh = read_access_log_settings(client, timeout_s=min(5.0, deadline.check(
            "reading mesh")), why="no sidecar evidence to read")
        time.sleep(min(max(0.0, answered + lag - time.time()), deadline.remaining() / 4))
        stop = time.monotonic() + min(2 * lag + 1.0, deadline.check("reading logs") * 0.6)
        previous = -1
        waited_for_foreign = False
        records: list[AccessLogRecord] = []
        while True:
            since = math.ceil(time.time() - first) + 5
            fresh, _ = read_proxy_logs(client, target.namespace, mesh.log_format,
                                       since_seconds=since,
                                       timeout_s=min(10.0, deadline.check("reading logs")))
            records = merge_lines(records, fresh)  # a pod killed meanwhile takes its log along
            index = LogIndex(records)
            evidence = [RequestEvidence.build(r, (), index.for_request(r)) for r in sent]
            found = sum(len(ev.logs) for ev in evidence)
            pending = uncorrelated_calls(evidence, records)
            if pending and not waited_for_foreign:
                sleep_past(pending, deadline)  # let those lines settle, then read again
                waited_for_foreign = True
                continue
            if (found and found == previous) or time.monotonic() >= stop:
                break
            previous = found
            time.sleep(poll_interval(lag))
    finally:
        client.close()
    if not records:
        raise EvidenceError(f"no access-log line could be read from the istio-proxy "
                            f"containers of namespace '{target.namespace}'")
    attach_uncorrelated_calls(evidence, records)
    return evidence, index.count
