"""Rules on the calls toward a side service, from the callers' access-log lines alone.

Envoy's fault filter answers an aborted call in the *caller's* sidecar before the router
(docs/fidelity.md §2.4: ``abortWithStatus`` → local reply, flag ``FI``, details
``fault_filter_abort``, no upstream host): the callee never sees it. So the proof that a
VirtualService abort is felt is the caller's outbound line (``503 FI``), and whether the
caller fell back is its own inbound line (2xx within ``x-envoy-expected-rq-timeout-ms``,
§1.5). The live cases were recorded from the local mesh with the reference chain's
``ratings`` route aborted (``live-side-aborted-correct``) and the same with the
``no-fallback`` twin at ``orders`` (``live-side-aborted-no-fallback``).
"""

from __future__ import annotations

from pathlib import Path

from probes.checks import sidecalls, tracing
from probes.evidence.accesslog import parse_lines
from probes.evidence.kube import parse_mesh_config
from probes.evidence.recorded import read_recorded
from probes.evidence.request import RequestEvidence
from tests.reference_chain import REFERENCE_CHAIN
from tests.unit.test_checks_sidecar_only import evidence, line

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"


def recorded(case: str) -> list[RequestEvidence]:
    return read_recorded(DATA / case).evidence()


def test_an_aborted_side_call_is_counted_from_the_callers_outbound_line() -> None:
    """§2.4: the abort is logged ``503 FI`` at orders' sidecar; ratings logged nothing."""
    aborted = recorded("live-side-aborted-correct")
    count = sidecalls.count_flagged(aborted, "ratings", {"FI"})
    assert (count.lines, count.flagged, count.requests, count.flagged_requests) == (1, 1, 1, 1)
    assert count.callers == {"orders": 1} and count.outcomes == {"503 FI": 1}
    assert "fault_filter_abort" in count.samples[0]
    assert not aborted[0].hop("ratings").logs_in
    check = sidecalls.flagged_check(count, min_ratio=1.0)
    assert check.passed and check.observed.startswith("1/1 outbound lines to ratings flagged FI")


def test_a_route_without_the_fault_is_not_reported_as_felt() -> None:
    """The same count on the recorded correct chain (no fault): its ratings calls are
    ``200`` with no flag, so the effect probe fails rather than passing on nothing."""
    count = sidecalls.count_flagged(recorded("correct"), "ratings", {"FI"})
    assert count.lines == 1 and count.flagged == 0 and count.outcomes == {"200": 1}
    check = sidecalls.flagged_check(count, min_ratio=0.0)
    assert not check.passed and check.verdict == "failed"


def test_a_share_below_the_asked_ratio_fails_and_any_listed_flag_counts() -> None:
    """A 50 % abort (``percentage.value`` 50): half the lines ``503 FI``, half ``200``."""
    half = [evidence(line("catalog-1-a", at=0, ms=1, code=503, flags="FI", callee="reviews")),
            evidence(line("catalog-1-a", at=5, ms=9, callee="reviews"))]
    count = sidecalls.count_flagged(half, "reviews", {"FI", "DI"})
    assert count.ratio == 0.5
    assert sidecalls.flagged_check(count, min_ratio=0.4).passed
    assert not sidecalls.flagged_check(count, min_ratio=0.9).passed
    assert not sidecalls.flagged_check(count, min_ratio=0.0, min_lines=2).passed


def test_no_line_toward_the_service_is_not_judged_and_names_the_caller_asked_for() -> None:
    """Only ``caller``'s lines count: frontend never calls ratings, so there is nothing to
    judge (never a pass)."""
    count = sidecalls.count_flagged(recorded("live-side-aborted-correct"), "ratings", {"FI"},
                                    caller="frontend")
    check = sidecalls.flagged_check(count, min_ratio=0.5, caller="frontend")
    assert count.lines == 0 and check.verdict == "not judged" and not check.passed
    assert check.hop == "frontend" and "no outbound line to ratings" in check.observed


def test_the_correct_caller_answers_with_its_fallback_after_the_abort() -> None:
    """orders logged ``503 FI`` toward ratings and answered its own caller ``200`` inside
    the 900 ms its inbound line announced."""
    check = sidecalls.fallback_check(recorded("live-side-aborted-correct"), "ratings")
    assert check.passed and check.counts["evaluated"] == 1 and check.basis == ("sidecar",)


def test_a_caller_without_a_fallback_fails_at_its_hop_with_its_lines_as_evidence() -> None:
    """The no-fallback twin answers 503 for a failed optional call; frontend's sidecar
    retried orders once (§2.2, ``retryOn: 5xx``) and the second try failed the same way."""
    check = sidecalls.fallback_check(recorded("live-side-aborted-no-fallback"), "ratings")
    assert not check.passed and check.hop == "orders"
    assert check.observed.startswith("orders answered 503 after its call to ratings failed "
                                     "(503 FI)")
    assert any("fault_filter_abort" in text for text in check.evidence.log_lines)
    assert any('"GET /orders HTTP/1.1" 503' in text for text in check.evidence.log_lines)


def test_a_fallback_later_than_the_callers_budget_fails() -> None:
    """A 2xx is not enough: it must come within the budget the caller was given (§1.5)."""
    late = evidence(line("catalog-1-a", at=0, ms=1600, expected=1475),
                    line("catalog-1-a", at=25, ms=1500, code=503, flags="UF,URX",
                         callee="reviews", expected=1449))
    check = sidecalls.fallback_check([late], "reviews", tolerance_ms=10)
    assert not check.passed and check.hop == "catalog"
    assert "after 1600 ms, beyond the 1475 ms it was given" in check.observed


def test_requests_whose_side_call_succeeded_are_not_judged() -> None:
    """No failed call toward ratings: nothing to fall back from (never a pass)."""
    check = sidecalls.fallback_check(recorded("correct"), "ratings")
    assert check.verdict == "not judged" and not check.passed


def test_an_aborted_side_call_is_no_trace_break_but_a_lost_one_is() -> None:
    """§2.4: an ``FI`` call never reached the router, so ratings' absence from the trace is
    a call never sent (as ``UF``/``UH``), not a hop that dropped the context. The same
    absence behind a call logged as sent (``200``) is a break at orders."""
    aborted = recorded("live-side-aborted-correct")
    (same,) = tracing.evaluate(aborted, REFERENCE_CHAIN, ["same-trace"])
    assert same.passed and same.counts["evaluated"] == 1
    ev = aborted[0]
    orders = ev.hop("orders")
    sent_line = next(r for r in orders.logs_out if r.upstream_service == "ratings")
    edited = sent_line.line.replace("503 FI fault_filter_abort", "200 - via_upstream")
    # the recording's own mesh config: its lines were written in the format of that day
    mesh = Path(__file__).parents[1] / "data" / "evidence" / "live-side-aborted-correct"
    fmt = parse_mesh_config((mesh / "mesh.yaml").read_text())
    (as_sent,), _ = parse_lines(fmt.log_format, "shop", sent_line.pod, [edited])
    lost = RequestEvidence.build(ev.sent, ev.spans,
                                 [r for r in ev.logs if r is not sent_line] + [as_sent])
    (broken,) = tracing.evaluate([lost], REFERENCE_CHAIN, ["same-trace"])
    assert not broken.passed and broken.hop == "orders"


def test_an_aborted_call_leaves_no_work_at_the_side_service() -> None:
    """§2.4: the router never ran, so ratings' sidecar logged nothing for the request."""
    check = sidecalls.not_served_check(recorded("live-side-aborted-correct"), "ratings")
    assert check.passed and check.counts["evaluated"] == 1


def test_a_side_service_that_served_an_aborted_call_is_named() -> None:
    """An abort that let the request through and replaced the answer (a response-side
    abort) has the side service work for a caller already answered ``503``."""
    served = evidence(line("catalog-1-a", at=0, ms=1, code=503, flags="FI", callee="reviews"),
                      line("reviews-1-a", at=1, ms=8))
    check = sidecalls.not_served_check([served], "reviews")
    assert not check.passed and check.hop == "reviews"
    assert check.observed.startswith("reviews logged 1 inbound request(s) for 1 call(s) its "
                                     "callers' sidecars aborted (503 FI) and 0 sent")


def test_a_partial_abort_counts_the_calls_that_were_sent() -> None:
    """At 50 %: one call aborted, one sent and served; one inbound line is the sent one's."""
    half = evidence(line("catalog-1-a", at=0, ms=1, code=503, flags="FI", callee="reviews"),
                    line("catalog-1-a", at=2, ms=9, callee="reviews"),
                    line("reviews-1-a", at=3, ms=7))
    assert sidecalls.not_served_check([half], "reviews").passed


def test_a_side_call_failing_otherwise_than_by_an_abort_is_not_judged_for_it() -> None:
    """``503 UH`` (no healthy upstream, §1.6) is no fault filter's answer: nothing to judge."""
    failed = evidence(line("catalog-1-a", at=0, ms=1, code=503, flags="UH", callee="reviews"))
    check = sidecalls.not_served_check([failed], "reviews")
    assert check.verdict == "not judged"
