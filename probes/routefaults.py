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

from probes import config, kube, safety, services
from probes.errors import ChaosError, ConfigurationError, SafetyError

__all__ = ["ORIGINAL_ANNOTATION", "apply_route_fault", "restore_route_faults",
           "restore_with"]

logger = logging.getLogger("chaostoolkit")

GROUP, VERSION, PLURAL = "networking.istio.io", "v1", "virtualservices"
ORIGINAL_ANNOTATION = "meshchaos.io/original"
MANIFEST = "route-fault"
_WRITE_ATTEMPTS = 4
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


def _crd_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def _read(api: Any, namespace: str, name: str) -> Obj:
    try:
        current: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                        _request_timeout=10)
    except kube.api_exception() as exc:
        if kube.status_of(exc) == 404:
            raise ConfigurationError(f"VirtualService '{namespace}/{name}' not found: a route "
                                     "fault edits a VirtualService the mesh has") from exc
        raise ChaosError(f"could not read VirtualService '{namespace}/{name}': "
                         f"{kube.reason(exc)}") from exc
    return dict(current)


def _replace(api: Any, obj: Obj) -> Obj:
    meta = obj["metadata"]
    try:
        written: Any = api.replace_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], obj, _request_timeout=10)
    except kube.api_exception() as exc:
        if kube.status_of(exc) == 409:
            raise _Conflict from exc
        raise ChaosError(f"could not write VirtualService '{meta['namespace']}/"
                         f"{meta['name']}': {kube.reason(exc)}") from exc
    return dict(written)


class _Conflict(Exception):
    """The object changed between our read and our write (409): read it again."""


def _kept(vs: Obj) -> Obj:
    meta = vs.get("metadata") or {}
    return {"spec": copy.deepcopy(vs.get("spec") or {}),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {})}


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
        api = _crd_api(api_client)
        for _ in range(_WRITE_ATTEMPTS):
            vs = _read(api, namespace, virtual_service)
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
                _kept(vs), sort_keys=True)
            edited_meta.setdefault("labels", {}).update({
                safety.MANAGED_BY_LABEL: safety.MANAGED_BY, safety.RUN_ID_LABEL: run_id,
                safety.MANIFEST_LABEL: MANIFEST})
            edited["spec"]["http"][index]["fault"] = fault
            try:
                _replace(api, edited)
            except _Conflict:
                continue
            break
        else:
            raise ChaosError(f"{label} kept changing: {_WRITE_ATTEMPTS} writes conflicted")
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
        return {"restored": restore_with(api_client, selector, namespace), "dry_run": False}


def restore_with(api_client: Any, selector: str, namespace: str = "") -> list[dict[str, str]]:
    """Restore the VirtualServices matching ``selector`` from their kept original."""
    api = _crd_api(api_client)
    if not selector.endswith(f"{safety.MANIFEST_LABEL}={MANIFEST}"):
        selector = f"{selector},{safety.MANIFEST_LABEL}={MANIFEST}"
    listing: Any
    try:
        if namespace:
            listing = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                        label_selector=selector,
                                                        _request_timeout=10)
        else:
            listing = api.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                     label_selector=selector,
                                                     _request_timeout=10)
    except kube.api_exception() as exc:
        if kube.status_of(exc) not in (403, 404):
            raise ChaosError(f"could not list VirtualServices labelled '{selector}': "
                             f"{kube.reason(exc)}") from exc
        # No Istio v1 API (404: then no route fault was applied through it either) or no
        # right to list across namespaces (403: restore_route_faults with a namespace can).
        # The chaos objects' cleanup must go on either way.
        logger.warning("cannot list VirtualServices labelled '%s' (%s); no route fault to "
                       "restore", selector, kube.status_of(exc))
        return []
    restored = []
    for item in listing.get("items") or []:
        meta = item["metadata"]
        restored.append(_restore_one(api, meta["namespace"], meta["name"]))
    return restored


def _restore_one(api: Any, namespace: str, name: str) -> dict[str, str]:
    label = f"VirtualService '{namespace}/{name}'"
    for _ in range(_WRITE_ATTEMPTS):
        vs = _read(api, namespace, name)
        meta = vs["metadata"]
        raw = (meta.get("annotations") or {}).get(ORIGINAL_ANNOTATION)
        if raw is None:
            break  # restored by someone else meanwhile
        try:
            kept = json.loads(raw)
            spec, labels, annotations = kept["spec"], kept["labels"], kept["annotations"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ChaosError(f"cannot restore {label}: its {ORIGINAL_ANNOTATION} annotation "
                             f"is not what apply_route_fault wrote ({exc})") from exc
        restored = {**vs, "spec": spec,
                    "metadata": {**meta, "labels": labels, "annotations": annotations}}
        try:
            _replace(api, restored)
        except _Conflict:
            continue
        logger.info("%s restored as it was before the run", label)
        break
    else:
        raise ChaosError(f"{label} kept changing: {_WRITE_ATTEMPTS} restores conflicted")
    return {"kind": "VirtualService", "namespace": namespace, "name": name}
