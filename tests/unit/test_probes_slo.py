"""Steady-state and recovery probes on a loopback ingress; the SLO checks themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.checks.slo import latency_summary, slo_checks, status_mix
from probes.errors import ConfigurationError
from probes.evidence.request import SentRequest
from probes.slo import recovery_time, steady_state
from tests.data.evidence.fakecluster import Fake, serve


def _sent(status: int | None, latency: float) -> SentRequest:
    return SentRequest("a" * 32, "b" * 16, True, "meshchaos=r", "id", status=status,
                       latency_ms=latency)


def test_percentiles_are_nearest_rank_of_observed_values() -> None:
    summary = latency_summary([_sent(200, float(v)) for v in range(1, 101)])
    assert summary == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}


def test_status_mix_counts_transport_errors_apart() -> None:
    assert status_mix([_sent(200, 1), _sent(None, 1), _sent(504, 1), _sent(200, 1)]) == {
        "200": 2, "504": 1, "error": 1}


def test_slo_checks_fail_on_success_ratio_latency_and_budget() -> None:
    """Steady state: success ratio, p99 and each request within the caller's budget."""
    requests = [_sent(200, 10.0)] * 98 + [_sent(504, 900.0), _sent(None, 1000.0)]
    checks = {c.name: c for c in slo_checks(requests, min_success=0.99, max_p99_ms=500,
                                            budget_ms=800)}
    assert not checks["success-ratio"].passed and checks["success-ratio"].observed == 0.98
    assert not checks["latency-p99"].passed
    assert not checks["within-budget"].passed
    assert "2/100" in str(checks["within-budget"].observed)


def test_steady_state_passes_a_healthy_ingress(tmp_path: Path) -> None:
    with serve(tmp_path) as running:
        result = steady_state(rate=20, duration_s=0.5, slo={"max_p99_ms": 2000,
                                                           "budget_ms": 2000},
                              configuration=running.configuration())
    assert result["passed"] is True, result["reason"]
    assert result["measurements"]["statuses"] == {"200": 10}


def test_steady_state_fails_when_requests_exceed_the_budget(tmp_path: Path) -> None:
    with serve(tmp_path, Fake(delay_s=0.15)) as running:
        result = steady_state(rate=10, duration_s=0.3, slo={"budget_ms": 50, "timeout_s": 2},
                              configuration=running.configuration())
    assert result["passed"] is False and "within-budget" in result["reason"]


def test_unknown_slo_keys_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown slo key"):
        steady_state(slo={"p99": 1}, configuration={"target": "kubernetes",
                                                    "ingress_url": "http://x",
                                                    "traces_url": "http://y"})


def test_recovery_time_waits_for_consecutive_successes(tmp_path: Path) -> None:
    with serve(tmp_path, Fake(fail_first=3)) as running:
        result = recovery_time(consecutive=3, max_wait_s=10, interval_s=0.01,
                               configuration=running.configuration())
    assert result["passed"] is True
    assert result["measurements"]["polls"] == 6
    assert result["measurements"]["recovery_s"] > 0


def test_recovery_time_not_reached_is_a_measured_failure(tmp_path: Path) -> None:
    with serve(tmp_path, Fake(status=503)) as running:
        result = recovery_time(consecutive=2, max_wait_s=0.5, interval_s=0.05,
                               configuration=running.configuration())
    assert result["passed"] is False and result["measurements"]["recovery_s"] is None
