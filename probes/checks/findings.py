"""Findings (one broken rule in one request) and their aggregation into a :class:`Check`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probes.results import Check, Evidence

__all__ = ["Finding", "aggregate"]


@dataclass(frozen=True)
class Finding:
    """One violation: where, what was seen, and the evidence that shows it."""

    hop: str | None
    observed: str
    trace_ids: tuple[str, ...] = ()
    log_lines: tuple[str, ...] = ()


def aggregate(name: str, rule: str, expected: Any,
              per_request: Sequence[Sequence[Finding]]) -> Check:
    """One check over N requests: it passes when no request produced a finding.

    The observation names the first violation (requests are in send order, findings in
    breadth-first hop order, so this is the first hop where the rule broke).
    """
    failing = [f for f in per_request if f]
    if not failing:
        return Check(name, True, expected, f"held for {len(per_request)} requests", rule=rule)
    first = failing[0][0]
    trace_ids = tuple(t for findings in failing[:5] for f in findings for t in f.trace_ids)
    lines = tuple(line for f in failing[0] for line in f.log_lines)
    observed = f"{first.observed} ({len(failing)}/{len(per_request)} requests)"
    if len(per_request) == 1:
        observed = first.observed
    return Check(name, False, expected, observed, hop=first.hop, rule=rule,
                 evidence=Evidence(trace_ids, lines))
