"""The trace-continuity probe end to end: own traffic → loopback target → verdict."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from chaoslib.hypothesis import within_tolerance

from probes.errors import EvidenceError, ProbeError
from probes.evidence.kube import read_mesh_settings
from probes.target import resolve_target
from probes.tracing import trace_continuity
from tests.data.evidence.fakecluster import Fake, serve

TOLERANCE = {"type": "jsonpath", "path": "$.passed", "expect": True}


def run(tmp_path: Path, case: str, **kwargs: object) -> dict[str, object]:
    # timeout_s bounds the wait for a trace that stays partial (a broken chain) to 0.6 x 8 s
    with serve(tmp_path, Fake(case=case)) as running:
        return trace_continuity(requests=1, timeout_s=8,
                                configuration=running.configuration(run_id="run-1"),
                                **kwargs)  # type: ignore[arg-type]


def test_correct_chain_passes_and_the_tolerance_judges_it_true(tmp_path: Path) -> None:
    """Results: a JSON dict that {"type": "jsonpath", "path": "$.passed"} judges."""
    result = run(tmp_path, "correct")
    assert result["passed"] is True, result["reason"]
    assert within_tolerance(TOLERANCE, result)
    json.dumps(result)  # JSON-serialisable, as a journal needs
    (waterfall,) = result["traces"]  # type: ignore[misc]
    assert {s["service"] for s in waterfall["spans"] if not s["sidecar"]} == {
        "frontend", "orders", "inventory", "pricing", "ratings"}


def test_dropped_traceparent_fails_with_the_hop_in_the_reason(tmp_path: Path) -> None:
    """§3: a hop that does not forward traceparent breaks the trace at that hop."""
    result = run(tmp_path, "drop-traceparent")
    assert result["passed"] is False and not within_tolerance(TOLERANCE, result)
    assert "same-trace at orders" in str(result["reason"])
    failing = [c for c in result["checks"] if not c["passed"]]  # type: ignore[union-attr]
    assert failing[0]["evidence"]["trace_ids"] and failing[0]["rule"]


def test_a_trace_that_never_appears_is_could_not_measure(tmp_path: Path) -> None:
    """"Could not measure" (trace not found after a bounded wait) raises a ProbeError."""
    fake = Fake(case="correct")
    with serve(tmp_path, fake) as running:
        config = running.configuration()
        config["traces_url"] = running.url + "/api/v1"  # the fake answers 404 there
        with pytest.raises(EvidenceError, match="none of 1 sampled traces"):
            trace_continuity(requests=1, timeout_s=4, configuration=config)


def test_the_probe_enforces_its_own_deadline(tmp_path: Path) -> None:
    """Chaos Toolkit does not enforce ``timeout`` for python providers: the probe does."""
    with serve(tmp_path, Fake(case="correct", delay_s=5)) as running:
        # The Kubernetes client loads its models on first use (seconds, once per process).
        client = resolve_target(running.configuration()).api_client()
        read_mesh_settings(client)
        client.close()
        begin = time.monotonic()
        # A verdict or "could not measure" are both fine; overrunning the deadline is not.
        with contextlib.suppress(ProbeError):
            trace_continuity(requests=1, timeout_s=2, configuration=running.configuration())
        assert time.monotonic() - begin < 3.5  # not the 5 s the ingress would take


def test_a_mesh_without_access_log_is_could_not_measure(tmp_path: Path) -> None:
    """§2.3: the access log is off by default (accessLogFile ""): no sidecar evidence."""
    with serve(tmp_path, Fake(case="correct", mesh_yaml="enableTracing: true\n")) as running, \
            pytest.raises(EvidenceError, match="access log is off"):
        trace_continuity(requests=1, timeout_s=8, configuration=running.configuration())


@pytest.mark.parametrize("case", ["correct", "reuse-parent"])
def test_the_tempo_api_gives_the_same_verdict_as_jaeger(tmp_path: Path, case: str) -> None:
    """Configuration traces_api=tempo: /api/traces/<id> answers OTLP-JSON (architecture.md)."""
    with serve(tmp_path, Fake(case=case, tempo=True)) as running:
        result = trace_continuity(requests=1, timeout_s=8, configuration=running.configuration(
            run_id="run-1", traces_api="tempo"))
    assert result["passed"] is (case == "correct"), result["reason"]
    if case == "reuse-parent":
        assert "at orders" in str(result["reason"])
