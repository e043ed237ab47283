"""Chaos Toolkit actions: a VirtualService fault on a route the mesh already has, for one run.

Istio's fault injection lives in the VirtualService (``http[].fault``), not in an object of
its own, so "applying" it means editing an object the application owns, and "removing" it
means putting that object back as it was. Both sides go through the official Kubernetes
client, so the local mesh and a cluster see the same requests (docs/fidelity.md §2.4):

- :func:`apply_route_fault` reads the VirtualService, keeps its ``spec``, ``labels`` and
  ``annotations`` in the annotation ``meshchaos.io/original`` (JSON), adds the suite's labels
  (``app.kubernetes.io/managed-by: meshchaos``, ``meshchaos.io/run-id``,
  ``meshchaos.io/manifest: route-fault``) and sets ``fault`` on one ``http`` route. A
  VirtualService that already carries a fault of the suite is refused: restoring two runs'
  edits out of order would lose the original.
- :func:`restore_route_faults` finds every VirtualService labelled with the run (or the
  suite) and writes back exactly the kept ``spec``, ``labels`` and ``annotations``.
  ``probes.chaos.remove_run_chaos`` (the safety control's cleanup, on every outcome and on
  SIGINT/SIGTERM) and ``remove_suite_chaos`` (``meshchaos abort``) call it too, so a fault
  never outlives its run.

The caller's sidecar applies the fault before its router: the delay does not count against
that route's own timeout (it counts against the callers above), and an abort is never
retried (docs/fidelity.md §2.4).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from probes import config, kube, safety, services, vsedit
from probes.errors import ChaosError, ConfigurationError, SafetyError
from probes.vsedit import MANIFEST, ORIGINAL_ANNOTATION

__all__ = ["apply_route_fault", "restore_route_faults"]

logger = logging.getLogger("chaostoolkit")

Obj = dict[str, Any]
Configuration = Mapping[str, Any] | None


def _percentage(value: float, what: str) -> dict[str, float]:
    number = float(value)
    if not 0.0 <= number <= 100.0:
        raise ConfigurationError(f"argument '{what}' is {value!r}, not a percentage in "
                                 "[0, 100]")
    return {"value": number}


def _fault(delay: str, delay_percent: float, abort_status: int,
           abort_percent: float) -> dict[str, Any]:
    """The ``HTTPFaultInjection`` block, in Istio's own fields."""
    fault: dict[str, Any] = {}
    if delay:
        fault["delay"] = {"fixedDelay": str(delay),
                          "percentage": _percentage(delay_percent, "delay_percent")}
    if abort_status:
        if not 200 <= int(abort_status) < 600:
            raise ConfigurationError(f"argument 'abort_status' is {abort_status!r}, not an "
                                     "HTTP status in [200, 600) (Envoy refuses others)")
        fault["abort"] = {"httpStatus": int(abort_status),
                          "percentage": _percentage(abort_percent, "abort_percent")}
    if not fault:
        raise ConfigurationError("apply_route_fault needs 'delay', 'abort_status' or both")
    return fault


def _route_index(vs: Obj, route: str) -> int:
    """The ``http`` route named ``route`` (its ``name``, or its index), default the first."""
    http = (vs.get("spec") or {}).get("http") or []
    label = f"VirtualService '{vs['metadata']['namespace']}/{vs['metadata']['name']}'"
    if not http:
        raise ConfigurationError(f"{label} has no http route to put a fault on")
    if not route:
        return 0
    for i, entry in enumerate(http):
        if entry.get("name") == route:
            return i
    if route.isdigit() and int(route) < len(http):
        return int(route)
    names = [str(e.get("name") or i) for i, e in enumerate(http)]
    raise ConfigurationError(f"{label} has no http route '{route}' (it has: "
                             f"{', '.join(names)})")


def apply_route_fault(virtual_service: str, route: str = "", delay: str = "",
                      delay_percent: float = 100.0, delay_factor: float = 0.0,
                      caller: str = "", abort_status: int = 0, abort_percent: float = 100.0,
                      namespace: str = "", settle_s: float = 1.0,
                      configuration: Configuration = None,
                      secrets: Any = None) -> dict[str, Any]:
    """Put a fault on one route of VirtualService ``namespace/virtual_service`` for this run.

    ``route``: the ``http`` route's ``name`` (or index), default the first. ``delay``: a
    ``fixedDelay`` (Go duration), or ``delay_factor``: that multiple of the route timeout of
    the VirtualService's first route towards ``virtual_service`` (read as
    ``probes.services.route_budget`` reads it; ``caller`` names the calling service for the
    explanation). ``abort_status`` with ``abort_percent``. The object's ``spec``, labels
    and annotations are kept in its ``meshchaos.io/original`` annotation for the restore.
    Waits ``settle_s`` for the push to reach the sidecars (istiod takes about a second).

    Returns ``{"kind", "namespace", "name", "route", "fault", "run_id", "applied",
    "injected_at", "dry_run", "derived"}``: ``injected_at`` is when the API server had
    accepted the edit and ``settle_s`` had passed (Istio reports no injection condition by
    default, so the experiment's effect probe must show the fault is felt).
    """
    run_id = kube.run_id(configuration)
    namespace = namespace or config.resolve(configuration).namespace
    label = f"VirtualService '{namespace}/{virtual_service}'"
    safety.check_namespaces([namespace], configuration, f"a fault on {label}")
    if delay and delay_factor:
        raise ConfigurationError(f"{label}: pass 'delay' or 'delay_factor', not both")
    with kube.api(configuration) as api_client:
        derived = ""
        if delay_factor:
            budget = services.route_budget(api_client, namespace, virtual_service, caller)
            delay = f"{round(delay_factor * budget.budget_ms)}ms"
            derived = budget.explain(delay_factor)
            logger.info("%s: %s", label, derived)
        fault = _fault(delay, delay_percent, abort_status, abort_percent)
        result = {"kind": "VirtualService", "namespace": namespace, "name": virtual_service,
                  "fault": fault, "run_id": run_id, "applied": False, "injected_at": None,
                  "dry_run": safety.is_dry_run(configuration), "derived": derived}
        if result["dry_run"]:
            print(f"# dry run: would set http[{route or 0}].fault of {label} to "
                  f"{json.dumps(fault)}", flush=True)
            return {**result, "route": route}
        api = vsedit.crd_api(api_client)
        for _ in range(vsedit.WRITE_ATTEMPTS):
            vs = vsedit.read(api, namespace, virtual_service)
            meta = vs["metadata"]
            if ORIGINAL_ANNOTATION in (meta.get("annotations") or {}):
                owner = (meta.get("labels") or {}).get(safety.RUN_ID_LABEL, "?")
                raise SafetyError(f"refusing a fault on {label}: it already carries one of "
                                  f"run '{owner}' (restore it first: `meshchaos abort "
                                  f"--run-id {owner}`)")
            index = _route_index(vs, route)
            edited = copy.deepcopy(vs)
            edited_meta = edited["metadata"]
            edited_meta.setdefault("annotations", {})[ORIGINAL_ANNOTATION] = json.dumps(
                vsedit.kept(vs), sort_keys=True)
            edited_meta.setdefault("labels", {}).update({
                safety.MANAGED_BY_LABEL: safety.MANAGED_BY, safety.RUN_ID_LABEL: run_id,
                safety.MANIFEST_LABEL: MANIFEST})
            edited["spec"]["http"][index]["fault"] = fault
            try:
                vsedit.replace(api, edited)
            except vsedit.Conflict:
                continue
            break
        else:
            raise ChaosError(f"{label} kept changing: {vsedit.WRITE_ATTEMPTS} writes conflicted")
    # Istio reports no injection condition by default (its status reporting is off), so the
    # fault counts as in place once the API server took it and the push had time to land;
    # the experiment's effect probe is the proof that the callers feel it.
    time.sleep(max(float(settle_s), 0.0))
    name = str(vs["spec"]["http"][index].get("name") or index)
    logger.info("%s: route '%s' now has fault %s (run '%s')", label, name, json.dumps(fault),
                run_id)
    return {**result, "route": name, "applied": True,
            "injected_at": datetime.now(UTC).isoformat()}


def restore_route_faults(run_id: str = "", namespace: str = "",
                         configuration: Configuration = None,
                         secrets: Any = None) -> dict[str, Any]:
    """Put back every VirtualService a route fault of the run (``run_id``, default this
    run's) edited; with neither, those of the whole suite. Returns ``{"restored": [...],
    "dry_run"}``."""
    run_id = run_id or str((configuration or {}).get("run_id") or "")
    selector = safety.label_selector(run_id, MANIFEST)
    if safety.is_dry_run(configuration):
        print(f"# dry run: would restore VirtualServices labelled '{selector}'", flush=True)
        return {"restored": [], "dry_run": True}
    with kube.api(configuration) as api_client:
        return {"restored": vsedit.restore_with(api_client, selector, namespace), "dry_run": False}
