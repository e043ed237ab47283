"""Names the way the Deployment and ReplicaSet controllers make them."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

__all__ = ["pod_name", "replicaset_name", "template_hash"]

# Kubernetes' rand.String alphabet: no vowels (no accidental words), no 0/1/3 (no look-alikes).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict[str, Any]) -> str:
    """10 hex digits that change whenever the pod template changes."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def replicaset_name(deployment: str, pod_template_hash: str) -> str:
    return f"{deployment}-{pod_template_hash}"


def pod_name(replicaset: str) -> str:
    """``<replicaset>-<5 random lowercase alnum>``, as the ReplicaSet controller's generateName."""
    return f"{replicaset}-" + "".join(secrets.choice(_ALPHABET) for _ in range(5))
