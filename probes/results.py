"""The result shape every probe returns (JSON-serialisable, judged by ``$.passed``).

A probe result is a plain dict::

    {"probe": "trace-continuity", "passed": false,
     "reason": "orders reused its incoming parent id 3f2a… for its call to inventory",
     "checks": [{"name", "passed", "expected", "observed", "hop", "rule",
                 "evidence": {"trace_ids": [...], "log_lines": [...]}}],
     "traces": [{"trace_id", "spans": [{"span_id", "parent_id", "service", "name", "kind",
                 "start_us", "duration_us", "budget_ms", "deadline_us", "status",
                 "cancelled", "sidecar"}]}],
     "measurements": {...}}

so the Chaos Toolkit tolerance ``{"type": "jsonpath", "path": "$.passed", "expect": true}``
judges it and a report can draw a waterfall for the sampled failing requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from probes.evidence.spans import Span

__all__ = ["Check", "Evidence", "inconclusive_reason", "probe_result", "summarise_reason",
           "waterfall"]

# A report needs a few failing requests to draw, never thousands of them.
MAX_LOG_LINES = 20
MAX_TRACE_IDS = 10


@dataclass(frozen=True)
class Evidence:
    """What a check looked at: trace ids and the raw access-log lines."""

    trace_ids: tuple[str, ...] = ()
    log_lines: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"trace_ids": list(dict.fromkeys(self.trace_ids))[:MAX_TRACE_IDS],
                "log_lines": list(dict.fromkeys(self.log_lines))[:MAX_LOG_LINES]}


@dataclass(frozen=True)
class Check:
    """One verdict: rule checked, what was expected, what was observed, where.

    ``status`` is ``held``, ``failed`` or ``not judged`` (the rule had nothing to evaluate:
    never a pass). ``counts`` says over how many requests (``evaluated``, ``held``,
    ``failed``, ``not_judged``), ``basis`` on what evidence (``sidecar``, ``app``), and
    ``notes`` where it could not look (``not judged at catalog: no outbound requests``).
    """

    name: str
    passed: bool
    expected: Any
    observed: Any
    hop: str | None = None
    rule: str = ""
    evidence: Evidence = field(default_factory=Evidence)
    status: str = ""
    counts: Mapping[str, int] = field(default_factory=dict)
    basis: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return self.status or ("held" if self.passed else "failed")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "status": self.verdict,
                "expected": self.expected, "observed": self.observed, "hop": self.hop,
                "rule": self.rule, "counts": dict(self.counts), "basis": list(self.basis),
                "notes": list(self.notes), "evidence": self.evidence.to_json()}


def summarise_reason(probe: str, checks: Sequence[Check]) -> str:
    """Return one line: the first failing check, else the first rule that judged nothing,
    else how many checks held."""
    failed = [c for c in checks if c.verdict == "failed"]
    if failed:
        first = failed[0]
        where = f" at {first.hop}" if first.hop else ""
        more = f" (+{len(failed) - 1} more failing)" if len(failed) > 1 else ""
        return f"{probe}: {first.name}{where}: {first.observed}{more}"
    unjudged = [c for c in checks if c.verdict == "not judged"]
    held = len(checks) - len(unjudged)
    if unjudged:
        return (f"{probe}: {held} checks held, {len(unjudged)} not judged "
                f"({', '.join(c.name for c in unjudged)})")
    return f"{probe}: all {len(checks)} checks held"


def inconclusive_reason(checks: Sequence[Check], require: Iterable[str] | None) -> str:
    """Why the probe proved nothing, or '' when it did: no check failed, and a rule the
    hypothesis rests on (``require``; default: every check) judged nothing."""
    if any(c.verdict == "failed" for c in checks):
        return ""
    wanted = None if require is None else set(require)
    missing = [c for c in checks if c.verdict == "not judged"
               and (wanted is None or c.name in wanted)]
    if not checks:
        return "no check was run"
    if not missing and all(c.verdict == "not judged" for c in checks):
        missing = list(checks)
    if not missing:
        return ""
    return "; ".join(f"{c.name} {c.observed}" for c in missing)


def probe_result(probe: str, checks: Iterable[Check], *,
                 traces: Sequence[dict[str, Any]] = (),
                 measurements: dict[str, Any] | None = None,
                 require: Iterable[str] | None = None) -> dict[str, Any]:
    """Assemble the JSON result of a probe from its checks.

    ``passed`` is true only when no check failed and every rule in ``require`` (default:
    every check) was judged; when nothing failed but a required rule judged nothing,
    ``passed`` is false and ``inconclusive`` says why, so neither Chaos Toolkit's
    tolerance nor the suite's verdict can read "looked at nothing" as a pass.
    """
    checks = list(checks)
    inconclusive = inconclusive_reason(checks, require)
    passed = bool(checks) and not inconclusive and all(c.verdict != "failed" for c in checks)
    reason = summarise_reason(probe, checks)
    if inconclusive:
        reason = f"{probe}: inconclusive: {inconclusive}"
    return {"probe": probe, "passed": passed, "inconclusive": inconclusive or None,
            "reason": reason, "checks": [c.to_json() for c in checks], "traces": list(traces),
            "measurements": dict(measurements or {})}


def waterfall(trace_id: str, spans: Sequence[Span]) -> dict[str, Any]:
    """What a report needs to draw one trace: spans sorted by start, with budget/deadline."""
    rows = []
    for span in sorted(spans, key=lambda s: (s.start_us, s.span_id)):
        budget = span.budget_ms
        rows.append({"span_id": span.span_id, "parent_id": span.parent_id,
                     "service": span.hop, "name": span.name, "kind": span.kind,
                     "sidecar": span.sidecar, "start_us": span.start_us,
                     "duration_us": span.duration_us, "budget_ms": budget,
                     "deadline_us": span.start_us + int(budget * 1000) if budget else None,
                     "status": span.status, "status_code":
                     span.attributes.get("http.status_code",
                                         span.attributes.get("http.response.status_code")),
                     "response_flags": span.attributes.get("response_flags"),
                     "cancelled": span.cancelled})
    return {"trace_id": trace_id, "spans": rows}
