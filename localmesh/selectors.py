"""Kubernetes label and field selectors.

Two forms: the query-string form (``app=orders,tier!=db,env in (a,b),!canary``)
used by list calls, and the structured ``LabelSelector`` form
(``matchLabels`` + ``matchExpressions``) used in object specs, Chaos Mesh's
``labelSelectors``/``expressionSelectors`` among them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from localmesh.errors import BadRequest

__all__ = [
    "LabelPredicate",
    "field_value",
    "match_expressions",
    "match_labels",
    "parse_field_selector",
    "parse_label_selector",
]

LabelPredicate = Callable[[Mapping[str, str]], bool]

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top_level(selector: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _term(term: str) -> LabelPredicate:
    set_match = _SET_RE.match(term)
    if set_match:
        key, op, raw = set_match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if not key:
                break
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda labels: key not in labels
    if re.fullmatch(r"[\w./-]+", term):
        return lambda labels: term in labels
    raise BadRequest(f"unable to parse requirement: '{term}'")


def parse_label_selector(selector: str | None) -> LabelPredicate:
    """Compile a query-string label selector; an empty one matches everything."""
    if not selector:
        return lambda labels: True
    terms = [_term(t) for t in _split_top_level(selector)]
    return lambda labels: all(t(labels) for t in terms)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """Read a dotted field path such as ``status.phase`` as a string ('' when absent)."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    return "" if node is None else str(node)


def parse_field_selector(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a field selector (``metadata.name=x,status.phase!=Running``)."""
    if not selector:
        return lambda obj: True
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_top_level(selector):
        negate = "!=" in term
        op = "!=" if negate else ("==" if "==" in term else "=")
        if op not in term:
            raise BadRequest(f"invalid field selector: '{term}'")
        path, value = (s.strip() for s in term.split(op, 1))

        def check(obj: Mapping[str, Any], p: str = path, v: str = value, n: bool = negate) -> bool:
            return (field_value(obj, p) == v) != n

        checks.append(check)
    return lambda obj: all(c(obj) for c in checks)


def match_labels(required: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """True when every required key/value pair is among the labels."""
    return all(labels.get(k) == v for k, v in (required or {}).items())


def match_expressions(
    expressions: list[Mapping[str, Any]] | None, labels: Mapping[str, str]
) -> bool:
    """Evaluate ``LabelSelectorRequirement`` items (In, NotIn, Exists, DoesNotExist)."""
    for expr in expressions or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise BadRequest(f"unknown label selector operator '{op}' for key '{key}'")
    return True
