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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from probes.evidence.spans import Span

__all__ = ["Check", "Evidence", "probe_result", "summarise_reason", "waterfall"]

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
    """One verdict: rule checked, what was expected, what was observed, where."""

    name: str
    passed: bool
    expected: Any
    observed: Any
    hop: str | None = None
    rule: str = ""
    evidence: Evidence = field(default_factory=Evidence)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "expected": self.expected,
                "observed": self.observed, "hop": self.hop, "rule": self.rule,
                "evidence": self.evidence.to_json()}


def summarise_reason(probe: str, checks: Sequence[Check]) -> str:
    """Return one line: the first failing check, or how many checks passed."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return f"{probe}: all {len(checks)} checks passed"
    first = failed[0]
    where = f" at {first.hop}" if first.hop else ""
    more = f" (+{len(failed) - 1} more failing)" if len(failed) > 1 else ""
    return f"{probe}: {first.name}{where}: {first.observed}{more}"


def probe_result(probe: str, checks: Iterable[Check], *,
                 traces: Sequence[dict[str, Any]] = (),
                 measurements: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the JSON result of a probe from its checks.

    An empty check list is never a pass: a probe that checked nothing raises instead,
    so this guards against a silent "passed" from a bug upstream.
    """
    checks = list(checks)
    passed = bool(checks) and all(c.passed for c in checks)
    return {"probe": probe, "passed": passed, "reason": summarise_reason(probe, checks),
            "checks": [c.to_json() for c in checks], "traces": list(traces),
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
