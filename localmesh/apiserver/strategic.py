"""Strategic merge patch for built-in kinds, the default patch type of ``kubectl patch``.

Like a JSON merge patch, except that lists whose Go field carries a ``patchMergeKey``
are merged item by item on that key instead of being replaced: patching one
container's image keeps the other containers, its ports and env. The ``$patch:
delete`` directive removes a keyed item; ``$setElementOrder/…`` directives are
accepted and ignored (item order is kept as stored, new items appended).
Custom resources have no Go struct tags, so their strategic patches stay JSON
merge patches.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["strategic_merge"]

# Field name -> merge key, from the patchMergeKey tags of core/v1 and apps/v1 types.
_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath",
    "imagePullSecrets": "name", "conditions": "type", "hostAliases": "ip",
}
# ports: containerPort on containers, port on services.
_PORT_KEYS = ("containerPort", "port")


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for key in _PORT_KEYS:
            if all(isinstance(i, dict) and key in i for i in items):
                return key
        return None
    return _MERGE_KEYS.get(field)


def _merge_list(field: str, target: Any, patch: list[Any]) -> list[Any]:
    current = target if isinstance(target, list) else []
    key = _merge_key(field, current + patch)
    if key is None or not all(isinstance(i, dict) for i in current + patch):
        return [i for i in copy.deepcopy(patch)
                if not (isinstance(i, dict) and i.get("$patch") == "delete")]
    merged = copy.deepcopy(current)
    for item in patch:
        index = next((n for n, old in enumerate(merged) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge({}, item))
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def strategic_merge(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to ``target`` (neither argument is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for field, value in patch.items():
        if field.startswith("$"):
            continue  # directives ($setElementOrder/…, $retainKeys) only order or prune
        if value is None:
            result.pop(field, None)
        elif isinstance(value, list):
            result[field] = _merge_list(field, result.get(field), value)
        else:
            result[field] = strategic_merge(result.get(field), value)
    return result
