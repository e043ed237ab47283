"""Probe: when a caller times out, the work below it stops (no orphan work).

Drive requests that time out — pass the ``path``/``headers`` that make the chain slow,
or run while a delay fault is active — then, for every ``504 UT`` at a caller's
sidecar, check that each hop below stops within ``grace_ms``: its inbound sidecar logs
``0 DC``/``DR`` or its span ends, and no downstream request completes after the
deadline (docs/fidelity.md §1.1, §1.6, §6). Usage::

    {"type": "probe", "name": "no-orphan-work",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.cancellation", "func": "orphan_work",
                  "arguments": {"requests": 3, "grace_ms": 100}}}
"""

from __future__ import annotations

from typing import Any

from probes import _common
from probes.checks import cancellation as rules
from probes.config import resolve
from probes.deadline import Deadline
from probes.evidence.collect import collect
from probes.evidence.request import CallTree
from probes.results import probe_result
from probes.target import resolve_target

__all__ = ["orphan_work"]

# An orphan runs until a timeout below the probe stops it: the chain's longest route
# timeout is 2 s (frontend -> orders, fixtures/k8s/20-traffic.yaml), plus export time.
SETTLE_S = 3.0


def orphan_work(requests: int = 3, path: str = "", headers: dict[str, str] | None = None,
                call_tree: dict[str, Any] | None = None, grace_ms: float = 100.0,
                client_timeout_ms: float | None = None, timeout_s: float = 60.0,
                configuration: dict[str, Any] | None = None,
                secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Count orphaned requests and orphan work time per hop after caller timeouts.

    Timeouts are every ``504 UT`` at a caller's sidecar and, when ``client_timeout_ms`` is
    set, the probe itself giving up on its request (a user leaving): then every hop of the
    chain must stop within ``grace_ms`` of that moment. The probe watches the traces for
    twice ``grace_ms`` (plus the span export lag) after each answer: a run leaves no span
    until it ends, so an orphan is seen when it ends within that window or while a hop's
    inbound span still waits for its app run; one that runs on unseen past both passes.

    Returns the probe result dict (``$.passed``; ``measurements.orphaned_requests`` and
    ``measurements.orphan_work_ms`` per hop); the check is ``not judged``
    (the result inconclusive) when no request timed out, since then there was nothing to
    cancel. Judged from the sidecars' lines (a hop's call still open after its own caller
    left, a request below completing late) and from app spans where there are any.
    """
    deadline = Deadline(timeout_s, "orphan_work")
    target = resolve_target(configuration)
    expected = CallTree.from_config(call_tree or resolve(configuration).call_tree)
    request_timeout = client_timeout_ms / 1000 if client_timeout_ms else 30.0
    sent = _common.send_requests(target.entry_url(path), configuration, requests,
                                 target.request_headers(headers), timeout_s=request_timeout,
                                 deadline=deadline, exact_timeout=client_timeout_ms is not None)
    # Orphans finish *after* the caller gave up, and a run leaves no span before it ends:
    # the traces stay open for twice the grace after each answer, so work overstaying the
    # grace by up to as much again is seen ending; a run seen still in flight then (an
    # inbound span without its app run) is waited for, up to SETTLE_S.
    gathered = collect(target, sent, expected, deadline, trace_wait_s=SETTLE_S,
                       hold_s=2 * grace_ms / 1000)
    judged, orphans = rules.evaluate(gathered.requests, gathered.tree, grace_ms,
                                     client_timeout_ms)
    results = _common.with_expected_calls(judged, gathered.requests, expected,
                                          target.namespace)
    return probe_result("orphan-work", results,
                        traces=_common.sample_traces(gathered.requests, results),
                        measurements={"requests": len(sent), "grace_ms": grace_ms,
                                      "evidence_s": round(gathered.seconds, 3),
                                      "orphaned_requests": orphans.requests,
                                      "orphan_work_ms": orphans.work_ms,
                                      "call_tree": gathered.tree.describe(),
                                      "statuses": sorted({str(r.status) for r in sent})})
