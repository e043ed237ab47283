"""The suite's safety rules for chaos objects, independent of any cluster client.

Every chaos object the suite creates:

- carries ``app.kubernetes.io/managed-by: meshchaos`` and ``meshchaos.io/run-id``
  (plus ``meshchaos.io/manifest``, the fixture it came from), so a run's objects
  and all of the suite's objects can be found and removed by label;
- has a ``spec.duration``, so a forgotten object ends by itself;
- lives in, and selects pods only in, allowed namespaces: never ``kube-system``,
  ``istio-system`` or ``chaos-mesh``, and only those in ``allowed_namespaces``
  (configuration; default: the ``namespace`` key's value).

``dry_run`` (configuration) turns every chaos action into a print of the
manifest it would apply.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Iterable, Mapping
from typing import Any

from probes import config
from probes.errors import SafetyError

__all__ = [
    "DEFAULT_DURATION",
    "FORBIDDEN_NAMESPACES",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MANIFEST_LABEL",
    "RUN_ID_LABEL",
    "allowed_namespaces",
    "check_namespaces",
    "is_dry_run",
    "label_selector",
    "namespaces_of",
    "new_run_id",
    "stamp",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshchaos"
RUN_ID_LABEL = "meshchaos.io/run-id"
MANIFEST_LABEL = "meshchaos.io/manifest"
FORBIDDEN_NAMESPACES = frozenset({"kube-system", "istio-system", "chaos-mesh"})
DEFAULT_DURATION = "60s"

Configuration = Mapping[str, Any] | None


def new_run_id() -> str:
    """A fresh run id: 8 lowercase hex digits, valid as a label value and a name suffix."""
    return _secrets.token_hex(4)


def is_dry_run(configuration: Configuration) -> bool:
    """True when the ``dry_run`` configuration key is set (bool or "true"/"1"/"yes")."""
    return config.resolve(configuration).dry_run


def allowed_namespaces(configuration: Configuration) -> list[str]:
    """The namespaces chaos may touch: ``allowed_namespaces`` (a list or a comma string),
    else the ``namespace`` under test alone."""
    return list(config.resolve(configuration).allowed_namespaces)


def check_namespaces(namespaces: Iterable[str], configuration: Configuration,
                     what: str) -> None:
    """Refuse (SafetyError) when any namespace is forbidden or outside the allowlist."""
    allowed = allowed_namespaces(configuration)
    for namespace in sorted(set(namespaces)):
        if namespace in FORBIDDEN_NAMESPACES:
            raise SafetyError(f"refusing {what}: namespace '{namespace}' is never a chaos "
                              f"target (forbidden: {', '.join(sorted(FORBIDDEN_NAMESPACES))})")
        if namespace not in allowed:
            raise SafetyError(f"refusing {what}: namespace '{namespace}' is not in "
                              f"allowed_namespaces {allowed}")


def namespaces_of(obj: Mapping[str, Any]) -> set[str]:
    """Every namespace a chaos object lives in or selects pods from (selector and target)."""
    own = str((obj.get("metadata") or {}).get("namespace") or "default")
    found = {own}
    spec = obj.get("spec") or {}
    # A NetworkChaos target is a selector block; an HTTPChaos target is Request|Response.
    target = spec.get("target")
    for block in (spec, target if isinstance(target, Mapping) else {}):
        selector = block.get("selector") or {}
        found |= set(selector.get("namespaces") or [])
        found |= set((selector.get("pods") or {}).keys())
    return found


def stamp(obj: dict[str, Any], *, run_id: str, manifest: str) -> None:
    """Add the suite's labels and make sure the object has a duration."""
    labels = obj.setdefault("metadata", {}).setdefault("labels", {})
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    labels[RUN_ID_LABEL] = run_id
    labels[MANIFEST_LABEL] = manifest
    spec = obj.setdefault("spec", {})
    if not spec.get("duration"):
        spec["duration"] = DEFAULT_DURATION


def label_selector(run_id: str = "", manifest: str = "") -> str:
    """The label selector of the suite's objects, narrowed to a run and a manifest if given."""
    terms = [f"{MANAGED_BY_LABEL}={MANAGED_BY}"]
    if run_id:
        terms.append(f"{RUN_ID_LABEL}={run_id}")
    if manifest:
        terms.append(f"{MANIFEST_LABEL}={manifest}")
    return ",".join(terms)
