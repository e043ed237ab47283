"""Every rule on evidence any mesh has: sidecar access-log lines only, no app span, a tree
of other names (4 deep with a fan-out), so nothing of the reference chain helps a verdict.

Envoy logs one line per downstream request at each sidecar (fidelity §2.3): the inbound
line of a hop carries the budget its caller's sidecar announced
(``x-envoy-expected-rq-timeout-ms``, §1.5), each outbound line the budget the hop's own
sidecar set for that call; a caller that leaves shows as ``0 DC`` (§1.6).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from probes.checks import cancellation, deadlines, tracing
from probes.checks.topology import expected_calls
from probes.evidence.accesslog import AccessLogRecord, compile_format, parse_lines
from probes.evidence.request import (
    CallTree,
    RequestEvidence,
    SentRequest,
    attach_uncorrelated_calls,
    uncorrelated_calls,
)

FORMAT = compile_format({
    "start_time": "%START_TIME%", "duration": "%DURATION%", "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%", "cluster": "%UPSTREAM_CLUSTER_RAW%",
    "request_id": "%REQ(X-REQUEST-ID)%", "traceparent": "%REQ(TRACEPARENT)%",
    "expected": "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%", "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
}, "JSON")
T0 = 1_800_000_000_000  # ms since the epoch
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RID = "7d9f2a54-1c3b-4e2f-9a8b-1234567890ab"
SENT = SentRequest(trace_id=TRACE, parent_id="00f067aa0ba902b7", sampled=True,
                   tracestate="meshchaos=t", request_id=RID, status=200, latency_ms=80.0,
                   started_us=T0 * 1000)


def line(pod: str, *, at: int, ms: int, code: int = 200, flags: str = "-",
         callee: str | None = None, expected: int | None = None, rid: str = RID,
         trace: str = TRACE, path: str = "/x") -> AccessLogRecord:
    """One access-log line of ``pod``'s sidecar: inbound, or outbound towards ``callee``."""
    doc: dict[str, Any] = {
        "start_time": datetime.fromtimestamp((T0 + at) / 1000, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"),
        "duration": str(ms), "code": str(code), "flags": flags,
        "cluster": f"outbound|8080||{callee}.store.svc.cluster.local" if callee
        else "inbound|8080||",
        "request_id": rid, "traceparent": f"00-{trace}-{'1' * 16}-01",
        "expected": str(expected) if expected is not None else "-",
        "authority": f"{callee or pod.split('-')[0]}:8080", "path": path,
    }
    records, bad = parse_lines(FORMAT, "store", pod, [json.dumps(doc)])
    assert not bad
    return records[0]


def evidence(*records: AccessLogRecord) -> RequestEvidence:
    return RequestEvidence.build(SENT, [], list(records))


def chain(catalog_sends: int | None = 1449, *, catalog_extra: tuple[AccessLogRecord, ...] = ()
          ) -> RequestEvidence:
    """edge -> catalog -> (stock -> depot, reviews): each hop spends 25 ms before calling."""
    return evidence(
        line("edge-1-a", at=0, ms=90, expected=1500),
        line("edge-1-a", at=25, ms=64, callee="catalog", expected=1475),
        line("catalog-1-a", at=26, ms=62, expected=1475),
        line("catalog-1-a", at=51, ms=36, callee="stock", expected=catalog_sends),
        line("catalog-1-a", at=51, ms=10, callee="reviews", expected=1449),
        *catalog_extra,
        line("stock-1-a", at=52, ms=34, expected=catalog_sends),
        line("stock-1-a", at=77, ms=8, callee="depot", expected=1424),
        line("depot-1-a", at=78, ms=6, expected=1424),
        line("reviews-1-a", at=52, ms=8, expected=1449),
    )


def test_the_call_tree_is_read_from_the_sidecars_whatever_the_names() -> None:
    tree = CallTree.observe([chain()], namespace="store")
    assert tree.entry == "edge"
    assert set(tree.edges()) == {("edge", "catalog"), ("catalog", "stock"),
                                 ("catalog", "reviews"), ("stock", "depot")}
    assert tree.below("catalog") == ["stock", "reviews", "depot"]


def test_a_correct_span_less_chain_holds_every_sidecar_rule_on_sidecar_evidence() -> None:
    ev = [chain()]
    tree = CallTree.observe(ev, namespace="store")
    checks = {c.name: c for c in deadlines.evaluate(ev, tree, tolerance_ms=10)}
    for name in ("budget-within-remaining", "deadline-propagated", "no-call-after-deadline",
                 "retry-amplification"):
        assert checks[name].verdict == "held" and checks[name].basis == ("sidecar",), name
        assert checks[name].counts["evaluated"] == 1, name
    for name in ("headers-stripped", "sent-within-remaining"):  # these need app spans
        assert checks[name].verdict == "not judged", name


def test_a_stale_budget_is_found_at_the_hop_that_forwarded_it() -> None:
    """catalog got 1475 ms and, 25 ms later, gave stock 1475 ms again (§1.5: min(expected,
    global - elapsed) is what a callee may get: 1450 ms)."""
    ev = [chain(catalog_sends=1475)]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev), tolerance_ms=10)
                 if c.name == "budget-within-remaining")
    assert check.verdict == "failed" and check.hop == "catalog"
    assert "stale by 25 ms" in check.observed and check.basis == ("sidecar",)


def test_a_slow_hand_over_from_the_inbound_sidecar_is_no_stale_budget() -> None:
    """The app starts its clock when it reads the request, some ms after its inbound sidecar
    got it (on a loaded box CI measured 18 ms of a hop's 45). catalog spent 25 ms by its
    sidecars' clock, counted 14 of them and gave stock 1461 ms: staler than the sidecars'
    1450 ms by the hand-over only, not by the work it did, so it is no stale budget."""
    ev = [chain(catalog_sends=1461)]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev), tolerance_ms=2)
                 if c.name == "budget-within-remaining")
    assert check.verdict == "held" and check.basis == ("sidecar",)


def test_a_budget_forwarded_unchanged_is_stale_however_slow_the_hand_over() -> None:
    ev = [chain(catalog_sends=1475)]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev), tolerance_ms=2)
                 if c.name == "budget-within-remaining")
    assert check.verdict == "failed" and "stale by 25 ms" in check.observed


def test_a_call_without_any_budget_is_a_deadline_not_propagated() -> None:
    ev = [chain(catalog_sends=None)]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev))
                 if c.name == "deadline-propagated")
    assert check.verdict == "failed" and check.hop == "catalog"
    assert "its call to stock carried none" in check.observed


def test_a_call_no_upstream_got_passed_no_budget_on_and_is_not_blamed() -> None:
    """503 UH: no healthy host, the sidecar sent nothing anywhere (a failed side service)."""
    refused = line("catalog-1-a", at=52, ms=0, code=503, flags="UH", callee="reviews")
    ev = [evidence(*[r for r in chain().logs if r.upstream_service != "reviews"
                     and r.hop != "reviews"], refused)]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev))
                 if c.name == "deadline-propagated")
    assert check.verdict == "held"


def test_a_second_call_after_a_failed_one_is_an_app_retry() -> None:
    """The mesh's retries are attempts inside one outbound request (one line, §1.3): a
    second line to the same service and path after a 504 is the app retrying."""
    first = line("catalog-1-a", at=51, ms=20, code=504, flags="UT", callee="reviews",
                 expected=1449, path="/reviews/1")
    again = line("catalog-1-a", at=72, ms=5, callee="reviews", expected=1428,
                 path="/reviews/1")
    ev = [chain(catalog_extra=(first, again))]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev))
                 if c.name == "retry-amplification")
    assert check.verdict == "failed" and check.hop == "catalog"
    assert "again itself 1 ms after a 504 UT" in check.observed


def test_two_calls_to_one_service_that_both_succeed_are_no_retry() -> None:
    other = line("catalog-1-a", at=62, ms=5, callee="reviews", expected=1438, path="/more")
    ev = [chain(catalog_extra=(other,))]
    check = next(c for c in deadlines.evaluate(ev, CallTree.observe(ev))
                 if c.name == "retry-amplification")
    assert check.verdict == "held"


def _gave_up(catalog_call_ms: int) -> RequestEvidence:
    """The client leaves after 130 ms; catalog's own request ends 0 DC then; its call to
    stock ends after ``catalog_call_ms``."""
    return evidence(
        line("edge-1-a", at=0, ms=130, code=0, flags="DC", expected=1500),
        line("edge-1-a", at=25, ms=105, code=0, flags="DC", callee="catalog", expected=1475),
        line("catalog-1-a", at=26, ms=104, code=0, flags="DC", expected=1475),
        line("catalog-1-a", at=51, ms=catalog_call_ms, code=200, callee="stock",
             expected=1449),
    )


def test_a_call_left_open_after_the_caller_left_is_orphan_work_at_that_hop() -> None:
    ev = [_gave_up(catalog_call_ms=600)]
    (check,), orphans = cancellation.evaluate(ev, CallTree.observe(ev), grace_ms=100,
                                              client_timeout_ms=130)
    assert check.verdict == "failed" and check.hop == "catalog"
    assert "did not cancel its call to stock" in check.observed
    assert orphans.requests == {"catalog": 1}


def test_a_call_closed_with_the_caller_is_no_orphan() -> None:
    ev = [_gave_up(catalog_call_ms=80)]
    (check,), orphans = cancellation.evaluate(ev, CallTree.observe(ev), grace_ms=100,
                                              client_timeout_ms=130)
    assert check.verdict == "held" and check.basis == ("sidecar",) and orphans.requests == {}


def test_no_rule_says_held_where_it_evaluated_nothing() -> None:
    """Lines without any budget, call or timeout: each rule is 'not judged', none 'held'."""
    ev = [evidence(line("edge-1-a", at=0, ms=5), line("catalog-1-a", at=1, ms=3))]
    tree = CallTree("edge", {"edge": ("catalog",)})
    checks = deadlines.evaluate(ev, tree)
    (orphan,), _ = cancellation.evaluate(ev, tree)
    for check in [*checks, orphan]:
        assert check.verdict == "not judged" and not check.passed, check.name
        assert check.counts["evaluated"] == 0 and "held" not in check.observed
    app_rules = tracing.evaluate(ev, tree, ["parent-links", "new-parent-per-call"])
    assert {c.verdict for c in app_rules} == {"not judged"}


def edge_catalog_and_another_client() -> tuple[RequestEvidence, AccessLogRecord,
                                                 AccessLogRecord]:
    """edge -> catalog for the probe's request, and another client's request through the
    same catalog pod meanwhile: its call to stock, and its inbound line."""
    other_client = line("catalog-1-a", at=55, ms=30, callee="stock",
                        rid="99999999-2222-4333-8444-555555555555",
                        trace="bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    their_inbound = line("catalog-1-a", at=50, ms=40, rid=other_client.request_id or "",
                         trace="bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    ev = evidence(line("edge-1-a", at=0, ms=90, expected=1500),
                  line("edge-1-a", at=25, ms=64, callee="catalog", expected=1475),
                  line("catalog-1-a", at=26, ms=62, expected=1475))
    return ev, other_client, their_inbound


def test_calls_that_dropped_every_id_are_found_inside_the_hop_they_served() -> None:
    """A hop that forwards neither traceparent nor x-request-id: its sidecar mints new ones,
    and only the time and the pod tie the call to the request it served."""
    minted = line("catalog-1-a", at=51, ms=30, callee="stock", expected=1449,
                  rid="11111111-2222-4333-8444-555555555555",
                  trace="aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    ev, other_client, their_inbound = edge_catalog_and_another_client()
    attach_uncorrelated_calls([ev], [*ev.logs, minted, other_client, their_inbound])
    assert ev.hop("catalog").logs_out == [minted]
    (finding,) = tracing.same_trace(ev, CallTree.observe([ev]))
    assert finding.hop == "catalog"


def test_a_call_of_another_clients_request_still_in_flight_is_held_back_until_it_ends(
        ) -> None:
    """Envoy writes a stream's access-log line when the stream ends: while another
    client's request is still in flight through catalog, its call below (already logged)
    carries ids no inbound line of catalog has yet. It is pending, not the request's own,
    until the read after its inbound line was written shows whose it was."""
    ev, other_client, their_inbound = edge_catalog_and_another_client()
    assert uncorrelated_calls([ev], [*ev.logs, other_client]) == [other_client]
    assert uncorrelated_calls([ev], [*ev.logs, other_client, their_inbound]) == []
    attach_uncorrelated_calls([ev], [*ev.logs, other_client, their_inbound])
    assert ev.hop("catalog").logs_out == []


def test_an_expected_call_the_evidence_shows_is_held() -> None:
    expected = CallTree.from_config({"entry": "edge",
                                     "calls": {"edge": ["catalog"], "catalog": ["stock"]}})
    assert expected is not None
    check = expected_calls([chain()], expected, "store")
    assert check.verdict == "held" and check.counts["evaluated"] == 2


def test_an_expected_call_no_request_shows_is_a_finding_at_its_caller() -> None:
    """call_tree is an expectation: stock -> ledger must be there, and no line of stock's
    sidecar goes to ledger, so the probe may not call the chain's topology held."""
    expected = CallTree.from_config({"entry": "edge", "calls": {
        "edge": ["catalog"], "catalog": ["stock"], "stock": ["ledger"]}})
    assert expected is not None
    check = expected_calls([chain()], expected, "store")
    assert check.verdict == "failed" and check.hop == "stock"
    assert "call_tree expects stock -> ledger" in check.observed
    assert check.counts["failed"] == 1
