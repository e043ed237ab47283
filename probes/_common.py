"""Plumbing shared by the probe modules (private: not an activity module)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from probes.checks.topology import expected_calls
from probes.deadline import Deadline
from probes.errors import ConfigurationError
from probes.evidence.request import CallTree, RequestEvidence
from probes.results import Check, waterfall
from probes.traffic import Load, send_load

__all__ = ["run_id", "sample_traces", "send_requests", "with_expected_calls"]

MAX_WATERFALLS = 3
# Probe requests start 10 ms apart: together, not as one burst in the same millisecond.
# Under a fault each answer can take seconds, so a slower pace only adds idle time to
# every probe (at 20/s the last of five requests started 0.2 s after the first).
PROBE_RATE = 100.0


def with_expected_calls(results: Sequence[Check], evidence: Sequence[RequestEvidence],
                        expected: CallTree | None, namespace: str) -> list[Check]:
    """The probe's checks, plus ``expected-calls`` when the user gave a ``call_tree``."""
    if expected is None:
        return list(results)
    return [*results, expected_calls(evidence, expected, namespace)]


def run_id(configuration: Mapping[str, Any] | None) -> str:
    return str((configuration or {}).get("run_id") or "probe")


def send_requests(url: str, configuration: Mapping[str, Any] | None, count: int,
                  headers: Mapping[str, str] | None, timeout_s: float, deadline: Deadline,
                  concurrency: int = 8, exact_timeout: bool = False) -> list[Any]:
    """Send ``count`` requests, up to ``concurrency`` at a time (paced at ``PROBE_RATE``),
    each with its own trace context. A few concurrent requests are a light load for any
    chain, and under a fault each request may take a second: rounds of two made probes
    take seconds.

    Each request's timeout is cut so that all rounds together use at most half of what
    the probe has left: the evidence still has to be read afterwards.
    """
    rounds = math.ceil(count / concurrency)
    share = deadline.check("sending requests") / 2 / rounds
    if exact_timeout and share < timeout_s:
        raise ConfigurationError(f"{deadline.what}: timeout_s {deadline.seconds:g} is too short "
                                 f"for {count} requests of {timeout_s:g} s each")
    # An exact timeout is the user leaving at that moment (orphan_work's client_timeout_ms):
    # kept as asked, also below the 50 ms floor that only guards a share cut too small.
    per_request = timeout_s if exact_timeout else max(0.05, min(timeout_s, share))
    load = Load(url=url, run_id=run_id(configuration), count=count, rate=PROBE_RATE,
                duration_s=max(1.0, count / PROBE_RATE + 1), concurrency=concurrency,
                timeout_s=per_request, headers=dict(headers or {}))
    return send_load(load)


def sample_traces(evidence: Sequence[RequestEvidence],
                  checks: Sequence[Check]) -> list[dict[str, Any]]:
    """Waterfalls for the first failing requests (or one passing one as a sample)."""
    failing = {t for c in checks if not c.passed for t in c.evidence.trace_ids}
    chosen = [e for e in evidence if e.sent.trace_id in failing][:MAX_WATERFALLS]
    if not chosen:
        chosen = [e for e in evidence if e.spans][:1]
    return [waterfall(e.sent.trace_id, e.spans) for e in chosen]
