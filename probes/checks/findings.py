"""Findings (one broken rule in one request) and their aggregation into a :class:`Check`.

A rule looks at one request at a time and answers one of three things:

- a list of :class:`Finding` (empty: the rule held) — it was *judged*;
- :class:`Judged`, the same with what it rested on (``sidecar`` and/or ``app`` evidence)
  and the hops it could not judge (``"catalog: no outbound requests seen"``);
- :class:`NotJudged` (or ``None``): there was nothing to evaluate in this request.

:func:`aggregate` counts only the requests that were judged, so a rule never says
"held for N requests" about requests where it looked at nothing; a rule that judged no
request at all is a :class:`Check` whose status is ``not judged``, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from probes.results import Check, Evidence

__all__ = ["Finding", "Judged", "NotJudged", "Outcome", "aggregate"]


@dataclass(frozen=True)
class Finding:
    """One violation: where, what was seen, and the evidence that shows it."""

    hop: str | None
    observed: str
    trace_ids: tuple[str, ...] = ()
    log_lines: tuple[str, ...] = ()


@dataclass
class Judged:
    """A rule's answer for one request that had something to evaluate."""

    findings: list[Finding] = field(default_factory=list)
    basis: set[str] = field(default_factory=set)  # "sidecar", "app"
    skipped: list[str] = field(default_factory=list)  # "<hop>: why it was not judged"

    def __bool__(self) -> bool:  # a Judged is "truthy" when the rule broke, like a list
        return bool(self.findings)


@dataclass(frozen=True)
class NotJudged:
    """Nothing to evaluate in this request, and why."""

    reason: str


Outcome = Sequence[Finding] | Judged | NotJudged | None


def _as_judged(outcome: Outcome) -> Judged | NotJudged:
    if outcome is None:
        return NotJudged("no evidence for this rule")
    if isinstance(outcome, Judged | NotJudged):
        return outcome
    return Judged(list(outcome))


def _first_reasons(reasons: Iterable[str], most: int = 3) -> list[str]:
    return list(dict.fromkeys(reasons))[:most]


def aggregate(name: str, rule: str, expected: Any, per_request: Sequence[Outcome]) -> Check:
    """One check over N requests: it holds when no judged request produced a finding.

    The observation names the first violation (requests are in send order, findings in
    breadth-first hop order, so this is the first hop where the rule broke).
    """
    outcomes = [_as_judged(o) for o in per_request]
    judged = [o for o in outcomes if isinstance(o, Judged)]
    basis = sorted({b for o in judged for b in o.basis})
    skipped = _first_reasons(s for o in judged for s in o.skipped)
    not_judged = [o.reason for o in outcomes if isinstance(o, NotJudged)]
    counts = {"evaluated": len(judged), "held": sum(not o.findings for o in judged),
              "failed": sum(bool(o.findings) for o in judged), "not_judged": len(not_judged)}
    notes = tuple([f"not judged at {s}" for s in skipped]
                  + [f"not judged in {len(not_judged)} request(s): {r}"
                     for r in _first_reasons(not_judged, 1)])
    if not judged:
        reason = not_judged[0] if not_judged else "no request to judge"
        return Check(name, False, expected, f"not judged: {reason}", rule=rule,
                     status="not judged", counts=counts, basis=tuple(basis), notes=notes)
    failing = [o.findings for o in judged if o.findings]
    if not failing:
        return Check(name, True, expected, f"held for {len(judged)} judged requests",
                     rule=rule, counts=counts, basis=tuple(basis), notes=notes)
    first = failing[0][0]
    trace_ids = tuple(t for findings in failing[:5] for f in findings for t in f.trace_ids)
    lines = tuple(line for f in failing[0] for line in f.log_lines)
    observed = first.observed if len(judged) == 1 else \
        f"{first.observed} ({len(failing)}/{len(judged)} judged requests)"
    return Check(name, False, expected, observed, hop=first.hop, rule=rule,
                 evidence=Evidence(trace_ids, lines), status="failed", counts=counts,
                 basis=tuple(basis), notes=notes)
