"""The VirtualServices a route fault edits: read, written back on conflict, restored.

A route fault (:mod:`probes.routefaults`) edits an object the application owns, so the
object's own ``spec``, ``labels`` and ``annotations`` are kept in the annotation
``meshchaos.io/original`` and written back exactly by :func:`restore_with`, which the run's
rollback, the safety control's cleanup and ``meshchaos abort`` all use (docs/fidelity.md
§2.4). Not an activity module: these take a Kubernetes API client.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from probes import kube, safety
from probes.errors import ChaosError, ConfigurationError

__all__ = ["GROUP", "MANIFEST", "ORIGINAL_ANNOTATION", "PLURAL", "VERSION", "WRITE_ATTEMPTS",
           "Conflict", "crd_api", "kept", "read", "replace", "restore_with"]

logger = logging.getLogger("chaostoolkit")

GROUP, VERSION, PLURAL = "networking.istio.io", "v1", "virtualservices"
ORIGINAL_ANNOTATION = "meshchaos.io/original"
MANIFEST = "route-fault"
WRITE_ATTEMPTS = 4
Obj = dict[str, Any]


def crd_api(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


def read(api: Any, namespace: str, name: str) -> Obj:
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


def replace(api: Any, obj: Obj) -> Obj:
    meta = obj["metadata"]
    try:
        written: Any = api.replace_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], obj, _request_timeout=10)
    except kube.api_exception() as exc:
        if kube.status_of(exc) == 409:
            raise Conflict from exc
        raise ChaosError(f"could not write VirtualService '{meta['namespace']}/"
                         f"{meta['name']}': {kube.reason(exc)}") from exc
    return dict(written)


class Conflict(ChaosError):
    """The object changed between our read and our write (409): read it again (callers
    retry it; it leaves this module only when every attempt conflicted)."""


def kept(vs: Obj) -> Obj:
    meta = vs.get("metadata") or {}
    return {"spec": copy.deepcopy(vs.get("spec") or {}),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {})}


def restore_with(api_client: Any, selector: str, namespace: str = "") -> list[dict[str, str]]:
    """Restore the VirtualServices matching ``selector`` from their kept original."""
    api = crd_api(api_client)
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
    for _ in range(WRITE_ATTEMPTS):
        vs = read(api, namespace, name)
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
            replace(api, restored)
        except Conflict:
            continue
        logger.info("%s restored as it was before the run", label)
        break
    else:
        raise ChaosError(f"{label} kept changing: {WRITE_ATTEMPTS} restores conflicted")
    return {"kind": "VirtualService", "namespace": namespace, "name": name}
