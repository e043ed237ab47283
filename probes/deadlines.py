"""Probes: deadline propagation along the chain and a static VirtualService audit.

Dynamic (``deadline_propagation``): per hop, the budget it was given never exceeds what
its caller had left, shrinks by at least the time spent, no call starts after a hop's
deadline, and a budget the mesh strips on the way is reported with the switch that
keeps it (mesh-semantics.md §1.5, §1.7). Static (``virtual_service_audit``): timeout
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
from probes.deadline import Deadline
from probes.evidence.collect import collect
from probes.evidence.kube import read_routes
from probes.evidence.request import CallTree
from probes.results import probe_result
from probes.target import resolve_target

__all__ = ["deadline_propagation", "virtual_service_audit"]


def deadline_propagation(requests: int = 5, path: str = "/",
                         headers: dict[str, str] | None = None,
                         call_tree: dict[str, Any] | None = None, tolerance_ms: float = 2.0,
                         timeout_s: float = 60.0, configuration: dict[str, Any] | None = None,
                         secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that each hop's budget shrinks along the chain and is never exceeded.

    A hop's budget is its app span's ``meshchaos.budget_ms`` (else the inbound
    ``x-envoy-expected-rq-timeout-ms``). ``tolerance_ms`` absorbs integer-ms rounding.
    Returns the probe result dict (``$.passed``); raises ``EvidenceError`` when no budget
    is visible anywhere.
    """
    deadline = Deadline(timeout_s, "deadline_propagation")
    target = resolve_target(configuration)
    tree = CallTree.from_config(call_tree or (configuration or {}).get("call_tree"))
    sent = _common.send_requests(target.ingress_url + path, configuration, requests, headers,
                                 timeout_s=30.0, deadline=deadline)
    gathered = collect(target, sent, tree, deadline)
    results = rules.evaluate(gathered.requests, tree, tolerance_ms=tolerance_ms,
                             target=target.kind)
    return probe_result("deadline-propagation", results,
                        traces=_common.sample_traces(gathered.requests, results),
                        measurements={"requests": len(sent),
                                      "evidence_s": round(gathered.seconds, 3),
                                      "honor_app_envoy_headers":
                                          gathered.mesh.honor_app_envoy_headers,
                                      "statuses": sorted({str(r.status) for r in sent})})


def virtual_service_audit(call_tree: dict[str, Any] | None = None, timeout_s: float = 20.0,
                          configuration: dict[str, Any] | None = None,
                          secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Audit the namespace's VirtualServices: timeout inversion, retries vs route timeout.

    Returns the probe result dict; ``measurements.routes`` lists what was read.
    """
    deadline = Deadline(timeout_s, "virtual_service_audit")
    target = resolve_target(configuration)
    tree = CallTree.from_config(call_tree or (configuration or {}).get("call_tree"))
    client = target.api_client()
    try:
        routes = read_routes(client, target.namespace,
                             timeout_s=min(10.0, deadline.check("reading virtualservices")))
    finally:
        client.close()
    return probe_result("virtual-service-audit", rules.evaluate_routes(routes, tree),
                        measurements={"routes": [asdict(r) for r in routes]})
