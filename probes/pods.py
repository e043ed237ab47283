"""Probe: are the pods behind a Service (named by a configuration key) ready or not?

The pods are found by the Service's own ``spec.selector``, as the cluster holds it, so an
experiment names a service (``${side_service}``) instead of a label it would have to
guess. Readiness is the pod's ``Ready`` condition, which a Chaos Mesh ``pod-failure``
turns False while the fault lasts. Usage::

    {"type": "probe", "name": "confirm-the-side-service-is-not-ready",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.pods", "func": "service_pods_ready",
                  "arguments": {"service": "${side_service}", "ready": false}}}
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from probes import services
from probes.coreapi import core_get_json
from probes.deadline import Deadline
from probes.errors import ConfigurationError, EvidenceError
from probes.results import Check, probe_result
from probes.target import resolve_target

__all__ = ["service_pods_ready"]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def service_pods_ready(service: str = "", ready: bool = True, timeout_s: float = 10.0,
                       configuration: dict[str, Any] | None = None,
                       secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that every pod behind ``service`` is Ready (``ready: true``) or that none is
    (``ready: false``). Returns the probe result dict; ``measurements.pods`` maps each pod
    to its readiness. A Service with no pods is an error: there is nothing to judge."""
    if not service:
        raise ConfigurationError("service_pods_ready needs 'service' (e.g. \"${side_service}\")")
    deadline = Deadline(timeout_s, "service_pods_ready")
    target = resolve_target(configuration)
    client = target.api_client()
    try:
        selector = services.pod_selector(client, target.namespace, service, "service")
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector["labelSelectors"].items()))
        listing = core_get_json(client, f"/api/v1/namespaces/{quote(target.namespace)}/pods",
                                query={"labelSelector": labels},
                                timeout_s=deadline.check("reading pods"))
    finally:
        client.close()
    pods = {str(p["metadata"]["name"]): _ready(p) for p in listing.get("items") or ()}
    if not pods:
        raise EvidenceError(f"Service '{target.namespace}/{service}' selects no pod "
                            f"(selector {labels})")
    wrong = sorted(name for name, is_ready in pods.items() if is_ready != ready)
    want = "Ready" if ready else "not Ready"
    observed = (f"all {len(pods)} pod(s) {want}" if not wrong else
                f"{len(wrong)}/{len(pods)} pod(s) not as expected: {', '.join(wrong)}")
    check = Check("pods-ready" if ready else "pods-not-ready", not wrong,
                  f"every pod of {service} {want}", observed, hop=service,
                  rule="a pod's Ready condition says whether it takes traffic")
    return probe_result("service-pods", [check], measurements={"pods": pods})
