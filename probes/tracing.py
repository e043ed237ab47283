"""Probe: trace continuity across the chain (docs/fidelity.md §3, §4).

Sends its own requests through the ingress, each with a fresh sampled W3C traceparent,
a tracestate entry, B3 headers and an x-request-id, then reads each request's trace and
access-log lines back and checks every hop kept the context. Usage::

    {"type": "probe", "name": "trace-survives-every-hop",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.tracing", "func": "trace_continuity",
                  "arguments": {"requests": 5}}}
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from probes import _common
from probes.checks.tracing import evaluate, required
from probes.config import resolve
from probes.deadline import Deadline
from probes.evidence.collect import collect
from probes.evidence.request import CallTree
from probes.results import probe_result
from probes.target import resolve_target
from probes.traffic import send_one

__all__ = ["trace_continuity"]


def trace_continuity(requests: int = 5, path: str = "", headers: dict[str, str] | None = None,
                     call_tree: dict[str, Any] | None = None, checks: list[str] | None = None,
                     require: list[str] | None = None, timeout_s: float = 60.0,
                     configuration: dict[str, Any] | None = None,
                     secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that every hop of the chain keeps each request's trace context.

    Rules (``checks``, default all): ``same-trace``, ``parent-links``,
    ``new-parent-per-call``, ``tracestate``, ``sampled``, ``b3``, ``request-id``,
    ``retries``. With ``sampled``, one extra request goes out unsampled (flags 00).
    Requests go to ``path`` (default: the ``entry_path`` key) with ``entry_headers`` and
    ``headers``. The call tree is read from the sidecars' evidence; ``call_tree``
    (``{"entry": "frontend", "calls": {"frontend": ["orders"], ...}}``, or the key of that
    name) adds edges that must be there. ``require``: the rules the verdict rests on
    (default: those any mesh's sidecars can show, :data:`probes.checks.tracing.CORE`);
    when one of them judged nothing the result is inconclusive. Returns the probe result
    dict (``$.passed``).
    """
    deadline = Deadline(timeout_s, "trace_continuity")
    target = resolve_target(configuration)
    expected = CallTree.from_config(call_tree or resolve(configuration).call_tree)
    url, all_headers = target.entry_url(path), target.request_headers(headers)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="meshchaos-unsampled") as pool:
        unsampled = None
        if checks is None or "sampled" in checks:
            # One unsampled request (flags 00), sent alongside the others: every hop must
            # keep the flag and record no span.
            unsampled = pool.submit(send_one, url, _common.run_id(configuration),
                                    headers=all_headers,
                                    sampled=False,
                                    timeout_s=min(10.0, deadline.check("sending requests") / 4))
        sent = _common.send_requests(url, configuration, requests, all_headers,
                                     timeout_s=10.0, deadline=deadline)
        if unsampled is not None:
            sent.append(unsampled.result())
    gathered = collect(target, sent, expected, deadline)
    results = _common.with_expected_calls(evaluate(gathered.requests, gathered.tree, checks),
                                          gathered.requests, expected, target.namespace)
    return probe_result("trace-continuity", results, require=required(checks, require),
                        traces=_common.sample_traces(gathered.requests, results),
                        measurements={"requests": len(sent),
                                      "evidence_s": round(gathered.seconds, 3),
                                      "unsampled_requests": sum(not r.sampled for r in sent),
                                      "log_lines": gathered.log_lines,
                                      "unparsed_log_lines": gathered.unparsed_lines,
                                      "call_tree": gathered.tree.describe(),
                                      "statuses": sorted({str(r.status) for r in sent})})
