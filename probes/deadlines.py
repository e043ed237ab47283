"""Probes: deadline propagation along the chain and a static VirtualService audit.

Dynamic (``deadline_propagation``): per hop, the budget it was given never exceeds what
its caller had left, shrinks by at least the time spent, no call starts after a hop's
deadline, and a budget the mesh strips on the way is reported with the switch that
keeps it (docs/fidelity.md §1.5, §1.7). Static (``virtual_service_audit``): timeout
inversion along the call tree and retries that cannot fit the route timeout (§1.2, §2.1).
Usage::

    {"type": "probe", "name": "deadline-shrinks-per-hop",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.deadlines",
                  "func": "deadline_propagation", "arguments": {"requests": 5}}}
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from probes import _common
from probes.checks import deadlines as rules
from probes.config import resolve
from probes.deadline import Deadline
from probes.errors import ConfigurationError
from probes.evidence.collect import collect
from probes.evidence.kube import read_routes
from probes.evidence.request import CallTree
from probes.evidence.routes import Route
from probes.results import probe_result
from probes.target import Target, resolve_target

__all__ = ["deadline_propagation", "virtual_service_audit"]


def deadline_propagation(requests: int = 5, path: str = "",
                         headers: dict[str, str] | None = None,
                         call_tree: dict[str, Any] | None = None, tolerance_ms: float = 2.0,
                         require: list[str] | None = None, timeout_s: float = 60.0,
                         configuration: dict[str, Any] | None = None,
                         secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that each hop's budget shrinks along the chain and is never exceeded.

    Judged from the sidecars (each hop's inbound ``x-envoy-expected-rq-timeout-ms`` against
    the budget of every call it made, matched per request) and, where the apps export
    them, from app spans (``meshchaos.budget_ms``, ``meshchaos.timeout_sent_ms``).
    ``tolerance_ms`` absorbs the logs' millisecond resolution. Requests go to ``path``
    (default: the ``entry_path`` key). ``require``: the rules the verdict rests on
    (default :data:`probes.checks.deadlines.CORE`); when one judged nothing (e.g. no hop
    was given a budget) the result is inconclusive. Returns the probe result dict.
    """
    deadline = Deadline(timeout_s, "deadline_propagation")
    target = resolve_target(configuration)
    expected = CallTree.from_config(call_tree or resolve(configuration).call_tree)
    sent = _common.send_requests(target.entry_url(path), configuration, requests,
                                 target.request_headers(headers), timeout_s=30.0,
                                 deadline=deadline)
    gathered = collect(target, sent, expected, deadline)
    routes = _routes(target, deadline)
    results = _common.with_expected_calls(
        rules.evaluate(gathered.requests, gathered.tree, tolerance_ms=tolerance_ms,
                       target=target.kind, routes=routes),
        gathered.requests, expected, target.namespace)
    return probe_result("deadline-propagation", results,
                        traces=_common.sample_traces(gathered.requests, results),
                        require=rules.CORE if require is None else require,
                        measurements={"requests": len(sent),
                                      "evidence_s": round(gathered.seconds, 3),
                                      "call_tree": gathered.tree.describe(),
                                      "honor_app_envoy_headers":
                                          gathered.mesh.honor_app_envoy_headers,
                                      "statuses": sorted({str(r.status) for r in sent})})


def _routes(target: Target, deadline: Deadline) -> list[Route]:
    client = target.api_client()
    try:
        return read_routes(client, target.namespace,
                           timeout_s=min(10.0, deadline.check("reading virtualservices")))
    finally:
        client.close()


def virtual_service_audit(requests: int = 3, path: str = "",
                          call_tree: dict[str, Any] | None = None, timeout_s: float = 20.0,
                          configuration: dict[str, Any] | None = None,
                          secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Audit the namespace's VirtualServices: timeout inversion, retries vs route timeout.

    The call tree is ``call_tree`` (or the key of that name) when given, else the evidence
    of ``requests`` probe requests. Returns the probe result
    dict; ``measurements.routes`` lists what was read.
    """
    deadline = Deadline(timeout_s, "virtual_service_audit")
    target = resolve_target(configuration)
    expected = CallTree.from_config(call_tree or resolve(configuration).call_tree)
    if expected is None and requests:
        sent = _common.send_requests(target.entry_url(path), configuration, requests,
                                     target.request_headers(None), timeout_s=10.0,
                                     deadline=deadline)
        gathered = collect(target, sent, expected, deadline)
        tree, budgets = gathered.tree, rules.observed_budgets(gathered.requests)
    elif expected is not None:
        tree, budgets = expected, {}
    else:
        raise ConfigurationError("virtual_service_audit with requests 0 needs call_tree: "
                                 "without traffic there is no evidence of who calls whom")
    routes = _routes(target, deadline)
    return probe_result("virtual-service-audit", rules.evaluate_routes(routes, tree, budgets),
                        measurements={"routes": [asdict(r) for r in routes],
                                      "call_tree": tree.describe(),
                                      "observed_budgets_ms": budgets})
