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

import time
from typing import Any
from urllib.parse import quote

from probes import services
from probes.coreapi import core_get_json
from probes.deadline import Deadline
from probes.errors import ConfigurationError, EvidenceError
from probes.results import Check, probe_result
from probes.target import resolve_target

__all__ = ["service_pods_ready", "workload_replaced"]


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
        labels, items = services.service_pods(client, target.namespace, service, "service",
                                              timeout_s=deadline.check("reading pods"))
    finally:
        client.close()
    pods = {str(p["metadata"]["name"]): services.is_ready(p) for p in items}
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


def workload_replaced(app: str = "", ready_timeout_s: float = 15.0,
                      configuration: dict[str, Any] | None = None,
                      secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that a pod labelled ``app=<app>`` other than those this run's PodChaos acted on
    is Ready (waiting up to ``ready_timeout_s``): the controller replaced the killed pod and
    the new one serves. For a workload without a Service (a queue's consumer), where
    :func:`service_pods_ready` cannot find the pods. Returns the probe result dict."""
    if not app:
        raise ConfigurationError("workload_replaced needs 'app' (e.g. \"${consumer_service}\")")
    deadline = Deadline(ready_timeout_s + 5.0, "workload_replaced")
    target = resolve_target(configuration)
    run_id = str((configuration or {}).get("run_id") or "")
    if not run_id:
        raise ConfigurationError("workload_replaced needs the run id (the safety control "
                                 "sets it): it looks for the pods this run's chaos acted on")
    client = target.api_client()
    try:
        killed = _run_pod_chaos_targets(client, run_id, target.namespace)
        if not killed:
            raise EvidenceError(f"run '{run_id}' has no PodChaos that acted on a pod: nothing "
                                f"of {app} was killed, so nothing can be replaced")
        while True:
            listing = core_get_json(client, f"/api/v1/namespaces/{quote(target.namespace)}/pods",
                                    query={"labelSelector": f"app={app}"},
                                    timeout_s=deadline.check("reading pods"))
            fresh = {str(p["metadata"]["name"]): services.is_ready(p)
                     for p in listing.get("items") or ()
                     if f"{target.namespace}/{p['metadata']['name']}" not in killed}
            if any(fresh.values()) or deadline.remaining() < 5.0:
                break
            time.sleep(0.2)
    finally:
        client.close()
    ok = any(fresh.values())
    observed = (f"replacement {', '.join(n for n, r in fresh.items() if r)} Ready" if ok else
                f"no Ready pod of app={app} besides {', '.join(sorted(killed))} "
                f"after {ready_timeout_s:g} s (others: {fresh or 'none'})")
    check = Check("workload-replaced", ok, f"a pod of {app} other than the killed one, Ready",
                  observed, hop=app, rule="a killed pod is replaced by its controller and the "
                  "new one becomes Ready")
    return probe_result("workload-replaced", [check],
                        measurements={"killed": sorted(killed), "replacements": fresh})


def _run_pod_chaos_targets(api_client: Any, run_id: str, namespace: str) -> set[str]:
    """``namespace/pod`` of every pod this run's PodChaos objects acted on (their status
    records), e.g. the pod a pod-kill killed."""
    from kubernetes import client

    from probes.safety import RUN_ID_LABEL

    listing: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "chaos-mesh.org", "v1alpha1", namespace, "podchaos",
        label_selector=f"{RUN_ID_LABEL}={run_id}", _request_timeout=10)
    return {str(r.get("id")) for o in listing.get("items") or ()
            for r in ((o.get("status") or {}).get("experiment") or {}).get("containerRecords")
            or () if r.get("id")}
