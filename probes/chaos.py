"""Chaos Toolkit actions: apply and remove Chaos Mesh objects, the same way on both targets.

Manifests come from ``fixtures/chaos`` (or any path) and go through the official
Kubernetes client (``CustomObjectsApi``), so the local mesh and a real cluster
with Chaos Mesh see identical requests. Designed around the traps of
chaostoolkit-kubernetes 0.39, whose chaosmesh actions are not used:

- they add a random ``target`` and write a non-standard ``metadata.ns``: here the
  object is the reviewed manifest, with only the documented overrides;
- they take no duration: here every object has one (``probes.safety.stamp``);
- they misspell the bandwidth block: here manifests are checked against the CRD
  schemas and Chaos Mesh's webhook rules in the test suite;
- ``create_custom_object`` returns a 409 body as success: here a 409 is a leftover
  and the object is created again under a fresh name; a create that returns no
  object with a uid is an error;
- ``delete_custom_object`` raises on 404: here 404 is "already gone";
- nothing waits for injection: here an injection counts only once Chaos Mesh
  reports ``AllInjected=True`` (and "no pod is selected" fails at once).

Usage in an experiment::

    {"type": "action", "name": "slow-pricing",
     "provider": {"type": "python", "module": "probes.chaos", "func": "apply_chaos",
                  "arguments": {"manifest": "delay-target.yaml", "duration": "60s"}}}
    ...
    "rollbacks": [{"type": "action", "name": "remove-chaos",
                   "provider": {"type": "python", "module": "probes.chaos",
                                "func": "remove_run_chaos"}}]
"""

from __future__ import annotations

import copy
import logging
import secrets as _secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from localmesh.yamldoc import safe_load
from probes import config, safety, services, vsedit
from probes.coreapi import core_get_json
from probes.errors import (
    ChaosError,
    ChaosNotInjected,
    ChaosNotRemoved,
    ChaosNotSelected,
    ConfigurationError,
    SafetyError,
)
from probes.kube import api as _api
from probes.kube import api_exception as _api_exception
from probes.kube import reason as _reason
from probes.kube import run_id as _run_id
from probes.kube import status_of as _status_of

__all__ = ["apply_chaos", "remove_chaos", "remove_run_chaos", "remove_suite_chaos"]

logger = logging.getLogger("chaostoolkit")

GROUP, VERSION = "chaos-mesh.org", "v1alpha1"
PLURALS = {"NetworkChaos": "networkchaos", "PodChaos": "podchaos", "HTTPChaos": "httpchaos"}
# Chaos Mesh's HTTPChaos and Istio's sidecar do not compose (docs/fidelity.md §5.5): said in
# the run's notes whenever a run applies one on a cluster.
HTTPCHAOS_ISTIO_NOTE = (
    "HTTPChaos on a cluster with Istio sidecars may have no effect: chaos-tproxy and "
    "istio-proxy both intercept the pod's traffic, and with mTLS the tproxy sees encrypted "
    "bytes it cannot parse, so it passes them through unchanged (chaos-mesh/chaos-mesh#3873, "
    "#4389, #3904; docs/fidelity.md §5.5). Check the effect on the callers, not only "
    "AllInjected; see runbooks/notes/httpchaos.md.")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chaos"
# Status polls start fast and back off: injection on the local mesh takes tens of ms, a
# real Chaos Mesh takes seconds, and a fixed 0.2 s poll made every apply/remove wait it.
_POLL_FIRST_S = 0.02
_POLL_S = 0.2
_REQUEST_TIMEOUT_S = 10
_CREATE_ATTEMPTS = 3
Obj = dict[str, Any]
Configuration = Mapping[str, Any] | None


# -- building the object ----------------------------------------------------------------

def _resolve_manifest(manifest: str) -> Path:
    path = Path(manifest)
    for candidate in (path, FIXTURES / path, FIXTURES / f"{manifest}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigurationError(f"chaos manifest '{manifest}' not found (looked in the working "
                             f"directory and '{FIXTURES}')")


def _load(manifest: str) -> tuple[Obj, str]:
    path = _resolve_manifest(manifest)
    try:
        obj = safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read chaos manifest '{path}': {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind") not in PLURALS:
        raise ConfigurationError(f"chaos manifest '{path}' must hold one NetworkChaos, "
                                 f"PodChaos or HTTPChaos object, not "
                                 f"'{(obj or {}).get('kind')}'")
    return obj, path.stem


def _retarget(obj: Obj, old_ns: str, namespace: str) -> None:
    """Move the object and every selector that pointed at its old namespace."""
    obj["metadata"]["namespace"] = namespace
    spec = obj["spec"]
    # An HTTPChaos ``target`` is Request|Response, not a selector block.
    target = spec.get("target") if isinstance(spec.get("target"), Mapping) else {}
    for block in (spec, target):
        selector = block.get("selector")
        if selector is not None and selector.get("namespaces") in (None, [], [old_ns]):
            selector["namespaces"] = [namespace]


def _build(manifest: str, run_id: str, *, duration: str | None,
           selector: Mapping[str, Any] | None, namespace: str) -> Obj:
    """The run's object from a reviewed manifest, moved to ``namespace`` (its selectors
    too) with the documented overrides; nothing is read from the cluster here."""
    obj, stem = _load(manifest)
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    old_ns = str(meta.get("namespace") or namespace)
    _retarget(obj, old_ns, namespace)
    if selector is not None:
        if not isinstance(selector, Mapping):
            raise ConfigurationError(f"argument 'selector' must be a Chaos Mesh selector "
                                     f"mapping, not '{selector}'")
        obj["spec"]["selector"] = dict(selector)
    if duration:
        obj["spec"]["duration"] = str(duration)
    meta["name"] = f"{meta.get('name') or stem}-{run_id}"
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        meta.pop(key, None)
    obj.pop("status", None)
    safety.stamp(obj, run_id=run_id, manifest=stem)
    return obj


def _aim(api_client: Any, obj: Obj, *, service: str, peer: str, latency: str,
         latency_factor: float, caller: str) -> str:
    """Point the object at the named services' pods (their Services' selectors as the
    cluster holds them) and derive the delay from the route timeout; returns what was
    derived, for the run's log (empty when nothing was)."""
    namespace = obj["metadata"]["namespace"]
    label = f"{obj['kind']} '{obj['metadata']['name']}'"
    spec = obj["spec"]
    if service:
        spec["selector"] = services.pod_selector(api_client, namespace, service, "service")
        if obj["kind"] == "HTTPChaos":
            _aim_port(api_client, obj, service)
    if peer:
        if not isinstance(spec.get("target"), Mapping):
            raise ConfigurationError(f"{label}: argument 'peer' needs a manifest with "
                                     "spec.target (a partition), this one has none")
        spec["target"] = {**spec["target"], "selector": services.pod_selector(
            api_client, namespace, peer, "peer")}
    if latency_factor and latency:
        raise ConfigurationError(f"{label}: pass 'latency' or 'latency_factor', not both")
    if latency_factor:
        if not service:
            raise ConfigurationError(f"{label}: 'latency_factor' needs 'service' (the "
                                     "service whose route timeout it multiplies)")
        budget = services.route_budget(api_client, namespace, service, caller)
        latency = f"{round(latency_factor * budget.budget_ms)}ms"
        derived = budget.explain(latency_factor)
    else:
        derived = ""
    if latency:
        if "delay" not in spec and obj["kind"] != "HTTPChaos":  # an HTTPChaos action adds one
            raise ConfigurationError(f"{label}: 'latency' applies to a delay, this manifest's "
                                     f"action is '{spec.get('action')}'")
        # HTTPChaos's delay is the duration itself; NetworkChaos's a block with a latency
        spec["delay"] = latency if obj["kind"] == "HTTPChaos" else {**spec["delay"],
                                                                     "latency": latency}
    return derived


def _aim_port(api_client: Any, obj: Obj, service: str) -> None:
    """An HTTPChaos aimed at a service intercepts that service's container port."""
    port = services.target_port(api_client, obj["metadata"]["namespace"], service, "service")
    if port is None:
        logger.warning("%s '%s': Service '%s' names its targetPort; keeping spec.port %s",
                       obj["kind"], obj["metadata"]["name"], service, obj["spec"].get("port"))
    else:
        obj["spec"]["port"] = port


# -- the actions ------------------------------------------------------------------------

def apply_chaos(manifest: str, duration: str = "", selector: dict[str, Any] | None = None,
                namespace: str = "", service: str = "", peer: str = "", latency: str = "",
                latency_factor: float = 0.0, caller: str = "", wait_timeout: float = 30.0,
                configuration: Configuration = None, secrets: Any = None) -> dict[str, Any]:
    """Apply a Chaos Mesh manifest for this run and wait until it is injected.

    ``manifest``: a file in fixtures/chaos (``delay-target.yaml``) or a path: a
    reviewed template whose kind, action and magnitudes are kept. It is moved to
    ``namespace`` (default: the ``namespace`` configuration key) and aimed with:
    ``service`` (the pods behind that Service, by its ``spec.selector`` as the cluster
    holds it; experiments pass ``${target_service}``), ``peer`` (the same for a
    partition's ``spec.target``), ``latency`` (a Go duration for a delay) or
    ``latency_factor`` (the delay is that multiple of the route timeout towards
    ``service``; ``caller`` names the calling service for the explanation), ``duration``,
    or a whole ``selector``. The object is named ``<name>-<run id>``, labelled for the
    run and checked against the namespace allowlist before anything is sent. Waits (at
    most ``wait_timeout`` s) for ``AllInjected=True``; "no pod is selected" fails at once.

    Returns ``{"name", "namespace", "kind", "run_id", "applied", "dry_run",
    "records": [{"id", "selectorKey", "phase"}], "injected_at", "duration",
    "manifest", "derived", "notes"}``; ``notes`` are for the report's run notes (an
    HTTPChaos on the ``kubernetes`` target gets the Istio limit of docs/fidelity.md §5.5).
    An HTTPChaos aimed with ``service`` also takes that Service's container port.
    """
    run_id = _run_id(configuration)
    settings = config.resolve(configuration)
    obj = _build(manifest, run_id, duration=duration or None, selector=selector,
                 namespace=namespace or settings.namespace)
    kind, meta = obj["kind"], obj["metadata"]
    safety.check_namespaces(safety.namespaces_of(obj), configuration,
                            f"{kind} '{meta['name']}'")
    dry_run = safety.is_dry_run(configuration)
    if dry_run and not (service or peer or latency_factor):
        return _dry_run_result(obj, run_id, "", settings.target)
    with _api(configuration) as api_client:
        derived = _aim(api_client, obj, service=service, peer=peer, latency=latency,
                       latency_factor=latency_factor, caller=caller)
        if derived:
            logger.info("%s '%s': %s", kind, meta["name"], derived)
        if dry_run:
            return _dry_run_result(obj, run_id, derived, settings.target)
        created = _create_unique(api_client, obj)
        try:
            status = _wait_injected(api_client, created, wait_timeout)
        except ChaosError:
            _delete_quietly(api_client, created)
            raise
    records = (status.get("experiment") or {}).get("containerRecords") or []
    return {**_result(obj, run_id, derived, settings.target), "applied": True,
            "records": [{k: r.get(k) for k in ("id", "selectorKey", "phase")} for r in records],
            "injected_at": datetime.now(UTC).isoformat()}


def _notes(obj: Obj, target: str) -> list[str]:
    """What the report must say about this injection (reports/verdict.py run notes)."""
    return [HTTPCHAOS_ISTIO_NOTE] if obj["kind"] == "HTTPChaos" and target != "local" else []


def _result(obj: Obj, run_id: str, derived: str, target: str) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"name": meta["name"], "namespace": meta["namespace"], "kind": obj["kind"],
            "run_id": run_id, "duration": obj["spec"]["duration"], "records": [],
            "injected_at": None, "applied": False, "dry_run": False, "derived": derived,
            "notes": _notes(obj, target),
            "manifest": yaml.safe_dump(_applied_form(obj), sort_keys=False)}


def _applied_form(obj: Obj) -> Obj:
    """The object as it was sent: what the cluster added (status, uid, …) left out."""
    meta = {k: v for k, v in obj["metadata"].items()
            if k in ("name", "namespace", "labels", "annotations")}
    return {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": obj["kind"],
            "metadata": meta, "spec": obj["spec"]}


def _dry_run_result(obj: Obj, run_id: str, derived: str, target: str) -> dict[str, Any]:
    result = _result(obj, run_id, derived, target)
    print(f"# dry run: would apply\n---\n{result['manifest']}", flush=True)
    return {**result, "dry_run": True}


def remove_chaos(name: str = "", manifest: str = "", namespace: str = "",
                 kind: str = "NetworkChaos", wait_timeout: float = 30.0,
                 configuration: Configuration = None, secrets: Any = None) -> dict[str, Any]:
    """Remove one chaos object (by ``name``) or this run's objects of a ``manifest``.

    Waits until the objects are gone (Chaos Mesh recovers before it drops its
    finalizer). An object that is already gone is fine; one the suite did not create
    (no ``app.kubernetes.io/managed-by: meshchaos`` label) is refused. Returns
    ``{"removed": [{"kind", "namespace", "name"}], "already_gone": [...], "dry_run"}``.
    """
    if bool(name) == bool(manifest):
        raise ConfigurationError("remove_chaos needs exactly one of 'name' or 'manifest'")
    namespace = namespace or config.resolve(configuration).namespace
    if name:
        if kind not in PLURALS:
            raise ConfigurationError(f"kind '{kind}' is not one of {sorted(PLURALS)}")
        targets = [{"kind": kind, "metadata": {"name": name, "namespace": namespace}}]
        return _remove(targets, wait_timeout, configuration)
    stem = _resolve_manifest(manifest).stem
    selector = safety.label_selector(str((configuration or {}).get("run_id") or ""), stem)
    if not (configuration or {}).get("run_id"):
        raise ConfigurationError("remove_chaos by manifest needs the run_id of the safety "
                                 "control (or pass 'name')")
    return _remove_labelled(selector, namespace, wait_timeout, configuration)


def remove_run_chaos(wait_timeout: float = 60.0, configuration: Configuration = None,
                     secrets: Any = None) -> dict[str, Any]:
    """Remove every chaos object labelled with this run's id, in every namespace, and put
    back every VirtualService a route fault of the run edited (``probes.routefaults``)."""
    run_id = str((configuration or {}).get("run_id") or "")
    if not run_id:
        raise ConfigurationError("remove_run_chaos needs configuration 'run_id' (set by the "
                                 "probes.controls.safety control)")
    return _remove_labelled(safety.label_selector(run_id), "", wait_timeout, configuration)


def remove_suite_chaos(run_id: str = "", namespace: str = "", wait_timeout: float = 60.0,
                       configuration: Configuration = None,
                       secrets: Any = None) -> dict[str, Any]:
    """Remove every chaos object the suite created (all namespaces unless one is given)."""
    return _remove_labelled(safety.label_selector(run_id), namespace, wait_timeout,
                            configuration)


# -- internals --------------------------------------------------------------------------

def _create_unique(api_client: Any, obj: Obj) -> Obj:
    """Create the object; on 409 (a leftover with that name) retry under a fresh name."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    meta, base = obj["metadata"], obj["metadata"]["name"]
    plural = PLURALS[obj["kind"]]
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            created: Any = api.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], plural, obj,
                _request_timeout=_REQUEST_TIMEOUT_S)
        except _api_exception() as exc:
            if _status_of(exc) != 409 or attempt == _CREATE_ATTEMPTS - 1:
                raise ChaosError(f"could not create {obj['kind']} '{meta['namespace']}/"
                                 f"{meta['name']}': {_reason(exc)}") from exc
            meta["name"] = f"{base}-{_secrets.token_hex(2)}"
            logger.warning("%s '%s' already exists (a leftover); retrying as '%s'",
                           obj["kind"], base, meta["name"])
            continue
        if created.get("kind") != obj["kind"] or not (created.get("metadata") or {}).get("uid"):
            raise ChaosError(f"creating {obj['kind']} '{meta['name']}' returned no object: "
                             f"{created}")
        return dict(created)
    raise AssertionError("unreachable: the loop returns or raises")


def _conditions(status: Mapping[str, Any]) -> dict[str, str]:
    return {c.get("type", ""): c.get("status", "") for c in status.get("conditions") or []}


def _no_pod_selected(api_client: Any, obj: Obj) -> str | None:
    """The "no pod is selected" Failed event of the object, if Chaos Mesh reported one."""
    meta = obj["metadata"]
    events = core_get_json(api_client, f"/api/v1/namespaces/{quote(meta['namespace'])}/events",
                           query={"fieldSelector": f"involvedObject.name={meta['name']}"},
                           timeout_s=_REQUEST_TIMEOUT_S)
    for event in events.get("items") or ():
        message = str(event.get("message") or "")
        if event.get("reason") == "Failed" and "no pod is selected" in message:
            return message
    return None


def _wait_injected(api_client: Any, obj: Obj, wait_timeout: float) -> Obj:
    """Poll until ``AllInjected=True``; fail at once when no pod is selected."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    meta, plural = obj["metadata"], PLURALS[obj["kind"]]
    label = f"{obj['kind']} '{meta['namespace']}/{meta['name']}'"
    deadline = time.monotonic() + wait_timeout
    status: Obj = {}
    pause = _POLL_FIRST_S
    while True:
        current: Any = api.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural,
                                                   meta["name"],
                                                   _request_timeout=_REQUEST_TIMEOUT_S)
        status = current.get("status") or {}
        if _conditions(status).get("AllInjected") == "True":
            return status
        # Selected is "False" once the controller found no pod (records nil, §5.4); an
        # absent condition only means it has not reconciled yet: no events to look up.
        if _conditions(status).get("Selected") == "False":
            message = _no_pod_selected(api_client, obj)
            if message:
                raise ChaosNotSelected(f"{label} selected no pod: {message}")
        if time.monotonic() >= deadline:
            raise ChaosNotInjected(f"{label} did not reach condition AllInjected=True within "
                                   f"{wait_timeout:g}s; last status: {_summary(status)}")
        time.sleep(pause)
        pause = min(_POLL_S, pause * 2)


def _summary(status: Mapping[str, Any]) -> str:
    """A short, readable last status: conditions plus each record's phase and last event."""
    records = (status.get("experiment") or {}).get("containerRecords")
    parts = [f"conditions {_conditions(status) or '{}'}"]
    if records is None:
        parts.append("records nil")
    for r in records or []:
        last = (r.get("events") or [{}])[-1]
        parts.append(f"{r.get('id')} {r.get('phase')}"
                     + (f" ({last.get('message')})" if last.get("message") else ""))
    return "; ".join(parts)


def _delete_quietly(api_client: Any, obj: Obj) -> None:
    """Take back an object whose injection failed, so it cannot inject later unseen."""
    try:
        _remove_with(api_client, [obj], wait_timeout=10.0)
    except ChaosError:
        logger.warning("could not remove %s '%s' after a failed injection", obj["kind"],
                       obj["metadata"]["name"], exc_info=True)


def _remove(targets: list[Obj], wait_timeout: float,
            configuration: Configuration) -> dict[str, Any]:
    if safety.is_dry_run(configuration):
        for t in targets:
            print(f"# dry run: would delete {t['kind']} {t['metadata']['namespace']}/"
                  f"{t['metadata']['name']}", flush=True)
        return {"removed": [], "already_gone": [], "dry_run": True,
                "would_remove": [_ref(t) for t in targets]}
    with _api(configuration) as api_client:
        return _remove_with(api_client, targets, wait_timeout)


def _remove_labelled(selector: str, namespace: str, wait_timeout: float,
                     configuration: Configuration) -> dict[str, Any]:
    if safety.is_dry_run(configuration):
        print(f"# dry run: would delete chaos objects labelled '{selector}'", flush=True)
        return {"removed": [], "already_gone": [], "dry_run": True, "selector": selector}
    with _api(configuration) as api_client:
        targets = _list_labelled(api_client, selector, namespace)
        result = {**_remove_with(api_client, targets, wait_timeout), "selector": selector}
        if safety.MANIFEST_LABEL not in selector:
            # A run's VirtualService faults are its chaos too: put those objects back.
            result["removed"] += vsedit.restore_with(api_client, selector, namespace)
        return result


def _list_labelled(api_client: Any, selector: str, namespace: str) -> list[Obj]:
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    found: list[Obj] = []
    for kind, plural in PLURALS.items():
        listing: Any
        if namespace:
            listing = api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=selector,
                _request_timeout=_REQUEST_TIMEOUT_S)
        else:
            listing = api.list_cluster_custom_object(GROUP, VERSION, plural,
                                                     label_selector=selector,
                                                     _request_timeout=_REQUEST_TIMEOUT_S)
        found += [{**item, "kind": kind} for item in listing.get("items") or []]
    return found


def _ref(obj: Mapping[str, Any]) -> dict[str, str]:
    return {"kind": obj["kind"], "namespace": obj["metadata"]["namespace"],
            "name": obj["metadata"]["name"]}


def _remove_with(api_client: Any, targets: list[Obj], wait_timeout: float) -> dict[str, Any]:
    """Delete each object (404 = already gone) and wait until all are gone."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    removed, already_gone, waiting = [], [], []
    for obj in targets:
        ref = _ref(obj)
        labels = (obj["metadata"].get("labels") or {}) if "labels" in obj["metadata"] \
            else _labels_or_none(api, ref)
        if labels is None:
            already_gone.append(ref)
            continue
        if labels.get(safety.MANAGED_BY_LABEL) != safety.MANAGED_BY:
            raise SafetyError(f"refusing to delete {ref['kind']} '{ref['namespace']}/"
                              f"{ref['name']}': it is not labelled "
                              f"{safety.MANAGED_BY_LABEL}={safety.MANAGED_BY}")
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, ref["namespace"],
                                                PLURALS[ref["kind"]], ref["name"],
                                                _request_timeout=_REQUEST_TIMEOUT_S)
        except _api_exception() as exc:
            if _status_of(exc) != 404:
                raise ChaosError(f"could not delete {ref['kind']} '{ref['namespace']}/"
                                 f"{ref['name']}': {_reason(exc)}") from exc
            already_gone.append(ref)
            continue
        waiting.append(ref)
    deadline = time.monotonic() + wait_timeout
    for ref in waiting:
        _wait_gone(api, ref, deadline, wait_timeout)
        removed.append(ref)
    return {"removed": removed, "already_gone": already_gone, "dry_run": False}


def _read_or_none(api: Any, ref: Mapping[str, str], doing: str = "") -> Obj | None:
    """The object named by ``ref``; None when it is gone (404)."""
    try:
        current: Any = api.get_namespaced_custom_object(GROUP, VERSION, ref["namespace"],
                                                        PLURALS[ref["kind"]], ref["name"],
                                                        _request_timeout=_REQUEST_TIMEOUT_S)
    except _api_exception() as exc:
        if _status_of(exc) == 404:
            return None
        raise ChaosError(f"could not read {ref['kind']} '{ref['namespace']}/{ref['name']}'"
                         f"{doing}: {_reason(exc)}") from exc
    return dict(current)


def _labels_or_none(api: Any, ref: Mapping[str, str]) -> dict[str, str] | None:
    """The labels of an object named by the caller; None when it is already gone."""
    current = _read_or_none(api, ref)
    if current is None:
        return None
    return dict((current.get("metadata") or {}).get("labels") or {})


def _wait_gone(api: Any, ref: Mapping[str, str], deadline: float, wait_timeout: float) -> None:
    status: Obj = {}
    pause = _POLL_FIRST_S
    while True:
        current = _read_or_none(api, ref, " while removing it")
        if current is None:
            return
        status = current.get("status") or {}
        if time.monotonic() >= deadline:
            raise ChaosNotRemoved(f"{ref['kind']} '{ref['namespace']}/{ref['name']}' was "
                                  f"still present {wait_timeout:g}s after its deletion "
                                  f"(finalizer waiting for recovery?); last status: "
                                  f"{_summary(status)}")
        time.sleep(pause)
        pause = min(_POLL_S, pause * 2)
