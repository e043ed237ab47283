"""Pod selection the way Chaos Mesh does it (docs/fidelity.md §5.1).

All selector fields are ANDed; ``pods`` (``{namespace: [names]}``) overrides the
rest; empty ``namespaces`` means the experiment's own namespace. The mode then
picks among the matches: ``one``, ``all``, ``fixed`` (min(value, n)),
``fixed-percent`` (ceil(n*p/100)), ``random-max-percent`` (p' a uniform integer in
[0, value], ceil(n*p'/100), which may pick none). No match is the error
"no pod is selected". Pods already being deleted are skipped: they are on their
way out and a kill must not pick them again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from localmesh.chaos.units import parse_mode_value
from localmesh.documents import KubeObject
from localmesh.errors import NoPodSelected
from localmesh.selectors import field_value, match_expressions, match_labels
from localmesh.store import ObjectStore

__all__ = ["NoPodSelected", "pick", "select_pods"]



def _matches(pod: KubeObject, selector: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not match_labels(selector.get("labelSelectors"), labels):
        return False
    if not match_expressions(selector.get("expressionSelectors"), labels):
        return False
    if not match_labels(selector.get("annotationSelectors"), meta.get("annotations") or {}):
        return False
    fields = selector.get("fieldSelectors") or {}
    if any(field_value(pod, path) != str(value) for path, value in fields.items()):
        return False
    phases = selector.get("podPhaseSelectors") or []
    if phases and field_value(pod, "status.phase") not in phases:
        return False
    nodes = selector.get("nodes") or []
    if nodes and field_value(pod, "spec.nodeName") not in nodes:
        return False
    # Local pods run on no node, so a node label selector can match none of them.
    return not selector.get("nodeSelectors")


def _candidates(store: ObjectStore, selector: Mapping[str, Any],
                default_ns: str) -> list[KubeObject]:
    named: Mapping[str, list[str]] = selector.get("pods") or {}
    if named:
        found = []
        for namespace, names in named.items():
            found += [p for p in store.list("", "pods", namespace)
                      if p["metadata"]["name"] in names]
    else:
        found = []
        for namespace in selector.get("namespaces") or [default_ns]:
            found += [p for p in store.list("", "pods", namespace) if _matches(p, selector)]
    return [p for p in found if not p["metadata"].get("deletionTimestamp")]


def pick(pods: list[KubeObject], mode: str, value: str,
         rng: random.Random | None = None) -> list[KubeObject]:
    """Apply a selection mode to the matching pods."""
    rng = rng or random.Random()
    number = parse_mode_value(mode, value)
    count = len(pods)
    if mode == "all":
        wanted = count
    elif mode == "one":
        wanted = min(1, count)
    elif mode == "fixed":
        wanted = min(int(number), count)
    elif mode == "fixed-percent":
        wanted = math.ceil(count * number / 100)
    else:  # random-max-percent
        wanted = math.ceil(count * rng.randint(0, int(number)) / 100)  # integer p' (§5.1)
    return rng.sample(pods, min(wanted, count))


def select_pods(store: ObjectStore, selector_spec: Mapping[str, Any], default_ns: str,
                rng: random.Random | None = None) -> list[KubeObject]:
    """Select pods for a spec holding ``selector``, ``mode`` and ``value``; none is an error."""
    matches = _candidates(store, selector_spec.get("selector") or {}, default_ns)
    chosen = pick(matches, str(selector_spec.get("mode") or "one"),
                  str(selector_spec.get("value") or ""), rng)
    if not chosen:
        raise NoPodSelected()
    return sorted(chosen, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
