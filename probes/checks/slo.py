"""Steady-state / SLO rules over the probe's own requests (no trace or log needed)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from probes.evidence.request import SentRequest
from probes.results import Check, Evidence

__all__ = ["RULES", "latency_summary", "slo_checks", "status_mix"]

RULES = {
    "success-ratio": "steady state: at least min_success of the requests answer 2xx",
    "latency-p99": "steady state: the 99th latency percentile stays under max_p99_ms",
    "within-budget": "each request ends within the caller's budget (the client's own deadline)",
}


def status_mix(requests: Sequence[SentRequest]) -> dict[str, int]:
    """Count answers by status code; transport failures count under ``error``."""
    mix = Counter("error" if r.status is None else str(r.status) for r in requests)
    return dict(sorted(mix.items()))


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def latency_summary(requests: Sequence[SentRequest]) -> dict[str, float]:
    values = [r.latency_ms for r in requests if r.latency_ms is not None]
    if not values:
        return {}
    return {"p50": _percentile(values, 50), "p90": _percentile(values, 90),
            "p99": _percentile(values, 99), "max": round(max(values), 3)}


def slo_checks(requests: Sequence[SentRequest], *, min_success: float,
               max_p99_ms: float | None, budget_ms: float | None) -> list[Check]:
    """The steady-state checks over a finished load run (requests in send order)."""
    total = len(requests)
    ok = [r for r in requests if r.status is not None and 200 <= r.status < 300]
    bad = [r for r in requests if r not in ok][:5]
    checks = [Check("success-ratio", len(ok) >= min_success * total,
                    f">= {min_success:.4f}", round(len(ok) / total, 4) if total else 0.0,
                    rule=RULES["success-ratio"],
                    evidence=Evidence(tuple(r.trace_id for r in bad)))]
    summary = latency_summary(requests)
    if max_p99_ms is not None:
        p99 = summary.get("p99", math.inf)
        checks.append(Check("latency-p99", p99 <= max_p99_ms, f"<= {max_p99_ms} ms", p99,
                            rule=RULES["latency-p99"]))
    if budget_ms is not None:
        late = [r for r in requests if r.latency_ms is None or r.latency_ms > budget_ms]
        observed: Any = (f"{len(late)}/{total} requests exceeded {budget_ms} ms" if late
                         else f"all {total} within {budget_ms} ms")
        checks.append(Check("within-budget", not late, f"every request <= {budget_ms} ms",
                            observed, rule=RULES["within-budget"],
                            evidence=Evidence(tuple(r.trace_id for r in late[:10]))))
    return checks
