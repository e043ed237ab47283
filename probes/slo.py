"""Probes: steady state under a bounded load, and recovery time after chaos is removed.

Usage::

    {"type": "probe", "name": "steady-state",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.slo", "func": "steady_state",
                  "arguments": {"rate": 10, "duration_s": 5,
                                "slo": {"min_success": 0.99, "max_p99_ms": 800,
                                        "budget_ms": 1000}}}}
"""

from __future__ import annotations

import time
from typing import Any

from probes import _common
from probes.checks.calls import FAILED_FLAGS
from probes.checks.sidecalls import count_flagged
from probes.checks.slo import latency_summary, slo_checks, status_mix
from probes.deadline import Deadline
from probes.errors import ConfigurationError, MeasurementError
from probes.evidence.readback import read_back_logs
from probes.results import Check, probe_result
from probes.target import resolve_target
from probes.traffic import Load, send_load, send_one

__all__ = ["recovery_time", "steady_state"]

_SLO_KEYS = {"min_success", "max_p99_ms", "budget_ms", "concurrency", "timeout_s"}


def steady_state(rate: float = 10.0, duration_s: float = 5.0, path: str = "",
                 headers: dict[str, str] | None = None, slo: dict[str, Any] | None = None,
                 mesh_effect_on: str = "",
                 configuration: dict[str, Any] | None = None,
                 secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drive a bounded load and judge it: status mix, latency percentiles, budget.

    ``slo`` keys: ``min_success`` (default 0.99), ``max_p99_ms``, ``budget_ms`` (the
    caller's budget each request must end within), ``concurrency`` (default 4, max 64),
    ``timeout_s`` (per request, default: budget or 5 s). Requests go to ``path``
    (default: the ``entry_path`` key) with ``entry_headers`` and ``headers``.

    ``mesh_effect_on``: a service; the load's access-log lines are then read back and
    ``measurements.mesh_effect`` counts the callers' calls to it that failed in the mesh
    (a failure flag, docs/fidelity.md §2.3), even when a retry hid them from the client:
    the evidence an effect probe needs when a fault is absorbed below the entry.
    """
    spec = dict(slo or {})
    unknown = set(spec) - _SLO_KEYS
    if unknown:
        raise ConfigurationError(f"unknown slo key(s) {sorted(unknown)}; known: "
                                 f"{sorted(_SLO_KEYS)}")
    target = resolve_target(configuration)
    budget = spec.get("budget_ms")
    load = Load(url=target.entry_url(path), run_id=_common.run_id(configuration),
                count=max(1, int(rate * duration_s)), rate=rate, duration_s=duration_s,
                concurrency=int(spec.get("concurrency", 4)),
                timeout_s=float(spec.get("timeout_s", (budget or 5000) / 1000 + 1)),
                headers=target.request_headers(headers))
    sent = send_load(load)
    if not sent:
        raise MeasurementError(f"steady_state sent no request to '{load.url}'")
    checks = slo_checks(sent, min_success=float(spec.get("min_success", 0.99)),
                        max_p99_ms=spec.get("max_p99_ms"), budget_ms=budget)
    measurements: dict[str, Any] = {
        "requests": len(sent), "statuses": status_mix(sent), "latency_ms": latency_summary(sent),
        "errors": sorted({r.error for r in sent if r.error})[:5]}
    if mesh_effect_on:
        evidence, _ = read_back_logs(target, sent, Deadline(30.0, "steady_state mesh_effect_on"))
        measurements["mesh_effect"] = count_flagged(evidence, mesh_effect_on,
                                                    FAILED_FLAGS).as_json()
    return probe_result("steady-state", checks, measurements=measurements)


def recovery_time(consecutive: int = 5, max_wait_s: float = 60.0, interval_s: float = 0.2,
                  path: str = "", headers: dict[str, str] | None = None,
                  configuration: dict[str, Any] | None = None,
                  secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Poll until ``consecutive`` requests in a row succeed (2xx), at most ``max_wait_s``.

    ``measurements.recovery_s`` is the time from the call to the first of those successes;
    not recovering in time is a measured failure (``passed: false``), not an error.
    """
    if consecutive <= 0:
        raise ConfigurationError(f"consecutive must be positive, got {consecutive!r}")
    deadline = Deadline(max_wait_s, "recovery_time")
    target = resolve_target(configuration)
    url, rid = target.entry_url(path), _common.run_id(configuration)
    headers = target.request_headers(headers)
    begin = time.monotonic()
    streak_start: float | None = None
    streak, polls, last = 0, 0, None
    while streak < consecutive and not deadline.expired():
        sent_at = time.monotonic()
        last = send_one(url, rid, headers=headers, timeout_s=max(0.1, min(5.0,
                                                                          deadline.remaining())))
        polls += 1
        if last.status is not None and 200 <= last.status < 300:
            streak_start = sent_at if streak == 0 else streak_start
            streak += 1
        else:
            streak, streak_start = 0, None
        time.sleep(min(interval_s, deadline.remaining()))
    recovered = streak >= consecutive and streak_start is not None
    seconds = round((streak_start or 0) - begin, 3) if recovered else None
    observed = (f"{consecutive} consecutive successes after {seconds} s" if recovered else
                f"not recovered after {max_wait_s} s (last: {last.status if last else None} "
                f"{last.error if last else ''})")
    check = Check("recovery", recovered, f"{consecutive} consecutive 2xx within {max_wait_s} s",
                  observed, rule="recovery: the chain answers again once chaos is removed")
    return probe_result("recovery-time", [check],
                        measurements={"recovery_s": seconds, "polls": polls})
