"""The ``scale`` subresource: a workload's replicas seen as an ``autoscaling/v1`` Scale.

``kubectl scale`` and the client's ``*_scale`` calls read and write this view; a write
changes only ``spec.replicas`` of the workload.
"""

from __future__ import annotations

from typing import Any

import jsonpatch

from localmesh.documents import KubeObject
from localmesh.errors import BadRequest, Invalid

__all__ = ["apply_scale_change", "scale_of"]



def scale_of(obj: KubeObject) -> KubeObject:
    """The Scale view of a Deployment or ReplicaSet."""
    meta = obj["metadata"]
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        "spec": {"replicas": int(spec.get("replicas", 1))},
        "status": {"replicas": int(status.get("replicas", 0)),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))},
    }


def apply_scale_change(obj: KubeObject, change: Any, patch_type: str | None) -> int:
    """The replicas a Scale write asks for (PUT body when patch_type is None, else a patch)."""
    scale = scale_of(obj)
    if patch_type is None:
        new = change
    elif patch_type == "json":
        try:
            new = jsonpatch.apply_patch(scale, change)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Invalid(f"the json patch could not be applied to the scale: {exc}") from exc
    else:
        if not isinstance(change, dict):
            raise BadRequest("merge patch must be an object")
        new = {**scale, "spec": {**scale["spec"], **(change.get("spec") or {})}}
    replicas = (new.get("spec") or {}).get("replicas") if isinstance(new, dict) else None
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise Invalid(f"Scale '{obj['metadata']['name']}': spec.replicas {replicas!r} must be "
                      "greater than or equal to 0", field="spec.replicas",
                      name=obj["metadata"]["name"])
    return replicas

