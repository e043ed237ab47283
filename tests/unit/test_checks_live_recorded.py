"""Checks on evidence recorded from the live local mesh (tests/data/evidence/live-*).

These cases were captured from a real run of the local mesh (its sidecars' istio-proxy
logs through the Kubernetes API, its trace store through the Jaeger query API), so they
hold what the hand-written cases cannot: real timings, retries and per-attempt spans.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from probes.checks import cancellation, deadlines, tracing
from probes.evidence.recorded import read_recorded
from probes.evidence.request import RequestEvidence
from tests.reference_chain import REFERENCE_CHAIN

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"
MEASURABLE = ["same-trace", "parent-links", "new-parent-per-call", "sampled", "request-id",
              "retries"]


def evidence(case: str) -> list[RequestEvidence]:
    return read_recorded(DATA / case).evidence()


def test_slow_leaf_with_timeouts_and_retries_is_judged_correct_by_every_probe() -> None:
    """pricing takes 800 ms: inventory gives up on its own deadline (0 DC, §1.6), orders'
    sidecar retries inventory (§1.3) and frontend's retries orders. A correct chain under
    timeouts and retries must pass every rule (no crying wolf)."""
    ev = evidence("live-timeout-retried")
    assert [c.name for c in tracing.evaluate(ev, REFERENCE_CHAIN, MEASURABLE) if not c.passed] == []
    assert [c.name for c in deadlines.evaluate(ev, REFERENCE_CHAIN) if not c.passed] == []
    checks, orphans = cancellation.evaluate(ev, REFERENCE_CHAIN)
    assert checks[0].passed and orphans.requests == {}


def test_a_caller_giving_up_on_its_own_deadline_is_a_cancellation_point() -> None:
    """§1.6: the caller app leaving shows as 0 DC at its outbound sidecar."""
    (ev,) = evidence("live-timeout-retried")
    found = cancellation.find_timeouts(ev, REFERENCE_CHAIN)
    own = [t for t in found if t.how == "own deadline (0 DC)"]
    assert {(t.caller, t.callee) for t in own} == {("inventory", "pricing")}
    # The retries of a try that timed out per try end 504 URX upstream: a timeout too (§1.2).
    assert {t.how for t in found} <= {"own deadline (0 DC)", "504 URX (per-try timeouts)"}


def test_each_run_of_a_retried_hop_has_its_own_budget() -> None:
    (ev,) = evidence("live-timeout-retried")
    assert len(deadlines.invocations(ev.hop("inventory"))) >= 2


def test_live_reuse_parent_twin_is_named() -> None:
    """W3C-L2 processing model: outgoing requests MUST carry an updated parent-id."""
    checks = tracing.evaluate(evidence("live-reuse-parent"), REFERENCE_CHAIN, MEASURABLE)
    failed = {c.name: c.hop for c in checks if not c.passed}
    assert failed == {"parent-links": "orders", "new-parent-per-call": "orders"}


def test_live_client_leaving_a_correct_chain_leaves_no_orphans() -> None:
    """§6: the caller leaving cancels every hop below it within the grace period."""
    checks, orphans = cancellation.evaluate(evidence("live-client-gone-correct"),
                                            REFERENCE_CHAIN, client_timeout_ms=200)
    assert checks[0].passed and orphans.requests == {}


def test_live_no_cancel_twin_leaves_orphan_work_at_orders() -> None:
    """§6: no-cancel never notices its caller leaving; its work and its calls go on."""
    checks, orphans = cancellation.evaluate(evidence("live-client-gone-no-cancel"),
                                            REFERENCE_CHAIN, client_timeout_ms=200)
    assert not checks[0].passed and checks[0].hop == "orders"
    assert orphans.requests.get("orders") == 1 and orphans.work_ms["orders"] > 300


@pytest.mark.parametrize("rule", ["tracestate", "b3"])
def test_the_local_mesh_records_no_tracestate_or_b3_evidence_yet(rule: str) -> None:
    """The recording's trace store kept no tracestate and its chain echoed no B3 header, so
    these rules name what is missing instead of passing silently."""
    (check,) = tracing.evaluate(evidence("live-timeout-retried"), REFERENCE_CHAIN, [rule])
    assert check.verdict == "not judged" and not check.passed
    assert check.observed.startswith("not judged: ")
