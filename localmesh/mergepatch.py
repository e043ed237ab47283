"""JSON merge patch (RFC 7396 §2 ``MergePatch``), as both the API server's
``application/merge-patch+json`` and HTTPChaos ``patch.body`` of type JSON apply it."""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """Objects merge key by key, ``null`` removes a key, any other patch value replaces the
    target whole. The result shares the values it did not change with ``target`` and the
    values it took with ``patch``: a caller that keeps it copies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
