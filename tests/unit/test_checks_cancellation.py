"""Orphan-work checks on recorded evidence (a 504 UT at frontend's sidecar, pricing slow)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from probes.checks import cancellation
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.recorded import read_recorded
from probes.evidence.request import RequestEvidence
from tests.reference_chain import REFERENCE_CHAIN

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"


def evidence(case: str) -> list[RequestEvidence]:
    return read_recorded(DATA / case).evidence()


def test_correct_chain_stops_every_hop_below_the_timeout() -> None:
    """§1.1/§1.6: the callee's inbound sidecar logs 0 DC and its work is cancelled (§6)."""
    checks, orphans = cancellation.evaluate(evidence("timeout-correct"), REFERENCE_CHAIN)
    assert [c.passed for c in checks] == [True]
    assert orphans.requests == {}


def test_timeout_is_found_in_the_callers_outbound_access_log_line() -> None:
    """§1.1: on expiry flag UT and local reply 504 at the caller's sidecar."""
    found = cancellation.find_timeouts(evidence("timeout-correct")[0], REFERENCE_CHAIN)
    (timeout,) = [t for t in found if t.how == "504 UT"]
    assert (timeout.caller, timeout.callee) == ("frontend", "orders")
    # below it, the cancelled callers' sidecars log 0 DC for the calls they abandoned (§1.6)
    assert {t.how for t in found} == {"504 UT", "own deadline (0 DC)"}
    assert " 504 UT " in timeout.line


def test_no_cancel_twin_leaves_orphan_work_at_the_hop_itself() -> None:
    """§6: a caller leaving must cancel the callee's context; no-cancel never notices."""
    checks, orphans = cancellation.evaluate(evidence("no-cancel"), REFERENCE_CHAIN)
    (check,) = checks
    assert not check.passed and check.hop == "orders"
    assert orphans.requests == {"orders": 1, "inventory": 1, "pricing": 1}
    assert orphans.work_ms["orders"] > 500


def test_cancel_self_only_twin_is_blamed_for_the_calls_it_left_running() -> None:
    """§1.6: downstream requests must not complete after the caller's deadline."""
    checks, orphans = cancellation.evaluate(evidence("cancel-self-only"), REFERENCE_CHAIN)
    (check,) = checks
    assert not check.passed and check.hop == "orders"
    assert "did not cancel its call to inventory" in str(check.observed)
    assert set(orphans.requests) == {"inventory", "pricing"}
    assert any(" 504 UT " in line for line in check.evidence.log_lines)


def test_a_client_leaving_cancels_the_whole_correct_chain() -> None:
    """§1.6: the client leaving resets every hop's upstream in turn; all work stops."""
    checks, orphans = cancellation.evaluate(evidence("client-gone-correct"), REFERENCE_CHAIN,
                                            client_timeout_ms=200)
    assert checks[0].passed and orphans.requests == {}


def test_no_cancel_twin_is_blamed_when_its_caller_did_disconnect() -> None:
    """§1.6: orders' inbound sidecar logged 0 DC in time, so frontend did cancel its call;
    orders ignoring it is orders' bug, not frontend's."""
    checks, orphans = cancellation.evaluate(evidence("client-gone-no-cancel"), REFERENCE_CHAIN,
                                            client_timeout_ms=200)
    assert not checks[0].passed and checks[0].hop == "orders"
    assert "orders went on" in str(checks[0].observed)
    assert set(orphans.requests) == {"orders", "inventory", "pricing"}


def test_cancel_self_only_twin_is_blamed_for_its_running_calls_after_a_client_leaves() -> None:
    """§1.6: no downstream request may complete after the caller's deadline."""
    checks, orphans = cancellation.evaluate(evidence("client-gone-cancel-self-only"),
                                            REFERENCE_CHAIN, client_timeout_ms=200)
    assert not checks[0].passed and checks[0].hop == "orders"
    assert "did not cancel its call to inventory" in str(checks[0].observed)
    assert set(orphans.requests) == {"inventory", "pricing"}


def test_a_generous_grace_period_forgives_late_stops() -> None:
    """The grace period bounds how long a hop may take to stop (default 100 ms)."""
    checks, _ = cancellation.evaluate(evidence("no-cancel"), REFERENCE_CHAIN, grace_ms=5_000)
    assert checks[0].passed


def test_without_any_timeout_there_is_nothing_to_judge() -> None:
    """No 504 UT anywhere, so nothing was cancelled: not judged, never "held"."""
    (check,), orphans = cancellation.evaluate(evidence("correct"), REFERENCE_CHAIN)
    assert check.verdict == "not judged" and not check.passed
    assert "none of 1 requests timed out" in check.observed and orphans.requests == {}


def test_the_probe_giving_up_is_a_timeout_for_the_whole_chain() -> None:
    """A client that leaves (no answer within client_timeout_ms) makes every hop orphan-able."""
    ev = evidence("correct")
    ev[0].sent = replace(ev[0].sent, status=None)
    checks, orphans = cancellation.evaluate(ev, REFERENCE_CHAIN, grace_ms=1,
                                            client_timeout_ms=10)
    assert not checks[0].passed and checks[0].hop == "frontend"
    assert "probe's timeout" in str(checks[0].observed)
    assert "frontend" in orphans.requests


def _late_line(ev: RequestEvidence, hop: str) -> None:
    """Make the hop's inbound line end 900 ms after it started, answered 200."""
    record = ev.hop(hop).logs_in[0]
    fields = {**record.fields, "response_code": "200", "response_flags": None,
              "duration": "900"}
    ev.hop(hop).logs_in[0] = AccessLogRecord.build(record.namespace, record.pod, record.line,
                                                   fields, record.hop)


def test_a_response_held_on_the_wire_is_not_orphan_work() -> None:
    """§5.2: a delay fault holds the bytes a pod sends; its app had stopped in time (its span
    says so), so the late line is transmission, not work (no crying wolf)."""
    (ev,) = evidence("timeout-correct")
    _late_line(ev, "pricing")
    checks, orphans = cancellation.evaluate([ev], REFERENCE_CHAIN)
    assert checks[0].passed and orphans.requests == {}


def test_without_app_spans_a_late_completed_line_is_orphan_work() -> None:
    """§1.6: with access logs only, a downstream request completing after the caller's
    deadline is the evidence of orphan work."""
    (ev,) = evidence("timeout-correct")
    _late_line(ev, "pricing")
    ev.hop("pricing").app_server = []
    checks, orphans = cancellation.evaluate([ev], REFERENCE_CHAIN)
    assert not checks[0].passed and orphans.requests == {"pricing": 1}
    assert "request completed 200" in str(checks[0].observed)
