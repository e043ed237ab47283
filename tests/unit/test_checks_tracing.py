"""Trace-continuity checks on recorded evidence (tests/data/evidence/, one case per twin).

Each recorded case is what the reference chain, or its defective twin at hop ``orders``,
leaves in the trace store (Jaeger JSON) and the istio-proxy logs (extended TEXT format).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from probes.checks import tracing
from probes.errors import ConfigurationError
from probes.evidence.accesslog import compile_format, parse_lines
from probes.evidence.formats import MESHCHAOS_TEXT
from probes.evidence.recorded import read_recorded
from probes.evidence.request import CallTree, RequestEvidence, SentRequest
from tests.reference_chain import REFERENCE_CHAIN

DATA = Path(__file__).resolve().parents[1] / "data" / "evidence"


def evidence(case: str) -> list[RequestEvidence]:
    return read_recorded(DATA / case).evidence()


def failing(case: str) -> dict[str, tuple[str | None, str]]:
    checks = tracing.evaluate(evidence(case), REFERENCE_CHAIN)
    return {c.name: (c.hop, str(c.observed)) for c in checks if not c.passed}


def test_correct_chain_passes_every_continuity_rule() -> None:
    """§3: apps propagate traceparent/tracestate/B3/x-request-id; each sidecar adds its own
    span as the parent. A correct chain must never be reported (no crying wolf)."""
    checks = tracing.evaluate(evidence("correct"), REFERENCE_CHAIN)
    assert [c.name for c in checks if not c.passed] == []
    assert {c.name for c in checks} == set(tracing.RULES)


def test_dropped_traceparent_is_a_new_trace_named_at_the_caller() -> None:
    """§3: "Not forwarded → the outbound sidecar starts a new trace-id"."""
    found = failing("drop-traceparent")
    assert set(found) == {"same-trace"}
    hop, observed = found["same-trace"]
    assert hop == "orders"
    assert "new trace" in observed and "inventory" in observed


def test_reused_parent_id_is_named_at_the_hop_that_reused_it() -> None:
    """W3C-L2 processing model (§4.1): "outgoing requests MUST carry an updated parent-id"."""
    found = failing("reuse-parent")
    assert found["new-parent-per-call"][0] == "orders"
    assert "reused its incoming parent id" in found["new-parent-per-call"][1]
    assert found["parent-links"][0] == "orders"
    assert set(found) == {"new-parent-per-call", "parent-links"}


def test_dropped_tracestate_is_named_at_the_hop_that_dropped_it() -> None:
    """§3: the sidecar "copies tracestate unchanged"; §4.2: the entry must survive every hop."""
    found = failing("drop-tracestate")
    assert set(found) == {"tracestate"}
    assert found["tracestate"][0] == "orders"
    assert "did not propagate" in found["tracestate"][1]


def test_dropped_b3_headers_are_named_at_the_caller() -> None:
    """§3 IO-TRC: apps must propagate x-b3-traceid/spanid/sampled; B3 agrees with W3C."""
    found = failing("drop-b3")
    assert set(found) == {"b3"}
    assert found["b3"][0] == "orders"


def test_dropped_request_id_is_seen_in_the_outbound_access_log_line() -> None:
    """§3: x-request-id is generated if missing; a sidecar keeps an incoming id."""
    found = failing("drop-request-id")
    assert set(found) == {"request-id"}
    hop, observed = found["request-id"]
    assert hop == "orders" and "outbound sidecar of orders logged x-request-id" in observed


@pytest.mark.parametrize("case", ["retries-correct", "retried-midchain"])
def test_mesh_retries_with_one_span_per_attempt_pass(case: str) -> None:
    """architecture.md Spans: "one child CLIENT span per upstream attempt", each the
    parent of the next hop."""
    assert failing(case) == {}


def test_retried_attempts_hidden_in_one_span_fail() -> None:
    """Envoy start_child_span: retried attempts appear as separate spans of the same trace."""
    found = failing("retries-one-span")
    assert set(found) == {"retries"}
    assert found["retries"][0] == "inventory"


@pytest.mark.parametrize("case", ["ignore-budget", "add-elapsed", "no-cancel",
                                  "cancel-self-only", "app-retries", "stripped",
                                  "leaf-unreachable"])
def test_deadline_and_cancellation_twins_keep_trace_continuity(case: str) -> None:
    """Twins whose bug is not about context propagation must not fail continuity (§3)."""
    assert failing(case) == {}


def test_an_unreachable_hop_is_not_a_continuity_break() -> None:
    """§2.2 under chaos: connect refused/timeout → 503 UF,URX; the callee never got the
    request, so its absence from the trace is no broken context (no crying wolf)."""
    (ev,) = evidence("leaf-unreachable")
    assert not ev.in_trace("pricing")
    assert tracing.same_trace(ev, REFERENCE_CHAIN) == []


def test_a_reached_hop_missing_from_the_trace_is_a_break() -> None:
    """The caller got a normal answer from the callee, yet the callee left no evidence."""
    (ev,) = evidence("correct")
    ev.hops["pricing"] = type(ev.hop("pricing"))("pricing")
    (finding,) = tracing.same_trace(ev, REFERENCE_CHAIN)
    assert finding.hop == "inventory" and "no span" in finding.observed


def test_sampled_flag_change_is_reported() -> None:
    """W3C §4.1: flags bit0 = sampled; §3: "Sampled is inherited"."""
    ev = evidence("correct")[0]
    record = ev.hop("orders").logs_in[0]
    flipped = type(record).build(record.namespace, record.pod,
                                 record.line.replace("-01\" ", "-00\" "),
                                 {**record.fields,
                                  "traceparent": record.fields["traceparent"][:-2] + "00"})
    ev.hop("orders").logs_in[0] = flipped
    findings = tracing.sampled_flag_honoured(ev, REFERENCE_CHAIN)
    assert findings and findings[0].hop == "orders"


def test_unsampled_request_keeps_its_flag_and_leaves_no_span() -> None:
    """W3C §4.1 flags bit0 = sampled; §3 "Sampled is inherited": flags 00 at every hop and
    nothing recorded. Only the sampled rule judges an unsampled request."""
    checks = tracing.evaluate(evidence("unsampled"), REFERENCE_CHAIN)
    assert [(c.name, c.passed) for c in checks] == [("sampled", True)]


def test_spans_recorded_for_an_unsampled_request_fail_the_sampled_rule() -> None:
    """§3: with sampled=0 inherited, no sidecar or app may record the request."""
    found = failing("unsampled-recorded")
    assert set(found) == {"sampled"}
    assert "spans recorded for an unsampled trace" in found["sampled"][1]


def test_missing_tracestate_evidence_is_not_judged_never_held() -> None:
    """No span and no log line carries a tracestate at all: the rule says what is missing
    and counts no request as held."""
    ev = evidence("correct")
    for request in ev:
        request.spans = [replace(s, tracestate=None) for s in request.spans]
    (check,) = tracing.evaluate(ev, REFERENCE_CHAIN, ["tracestate"])
    assert check.verdict == "not judged" and not check.passed
    assert "no span carries a tracestate" in check.observed
    assert check.counts["evaluated"] == 0 and check.counts["not_judged"] == len(ev)


def test_unknown_rule_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown trace-continuity check"):
        tracing.evaluate(evidence("correct"), REFERENCE_CHAIN, ["no-such-rule"])


def test_failing_check_carries_trace_ids_and_log_lines_as_evidence() -> None:
    """Results: every failing check names the trace ids and access-log lines it saw."""
    checks = tracing.evaluate(evidence("drop-traceparent"), REFERENCE_CHAIN)
    broken = next(c for c in checks if not c.passed).to_json()
    sent = evidence("drop-traceparent")[0].sent
    # the request's trace first, then the new traces orders' sidecar started (one per call)
    assert broken["evidence"]["trace_ids"][0] == sent.trace_id
    assert len(broken["evidence"]["trace_ids"]) == 3
    assert any("inventory" in line for line in broken["evidence"]["log_lines"])


WIDE = MESHCHAOS_TEXT
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _line(hop: str, cluster: str, tracestate: str, b3: str) -> str:
    return (f'[2026-11-26T17:25:03.123Z] "GET /api HTTP/1.1" 200 - via_upstream - "-" 0 9 5 4 '
            f'"-" "ua" "0d384590-2f9e-48ce-a3c3-be5f947efec9" "{hop}:8080" "127.0.0.1:1" '
            f'{cluster} - 127.0.0.1:2 127.0.0.1:3 - default '
            f'"00-{TRACE}-00f067aa0ba902b7-01" "-" "1" "{tracestate}" "{b3}" - "-"')


def _log_only_evidence(orders_sends: tuple[str, str]) -> RequestEvidence:
    """frontend → orders → inventory seen through access-log lines only (no spans)."""
    fmt = compile_format(WIDE)
    lines = {
        "frontend-a1b2c3d4e5-abcde": [_line("frontend", "inbound|8080||", "meshchaos=r", TRACE),
                                      _line("orders", "outbound|8080||orders.shop.svc",
                                            "meshchaos=r", TRACE)],
        "orders-a1b2c3d4e5-abcde": [_line("orders", "inbound|8080||", "meshchaos=r", TRACE),
                                    _line("inventory", "outbound|8080||inventory.shop.svc",
                                          *orders_sends)],
        "inventory-a1b2c3d4e5-abcde": [_line("inventory", "inbound|8080||", *orders_sends)],
    }
    records = [r for pod, pod_lines in lines.items()
               for r in parse_lines(fmt, "shop", pod, pod_lines)[0]]
    sent = SentRequest(TRACE, "00f067aa0ba902b7", True, "meshchaos=r",
                       "0d384590-2f9e-48ce-a3c3-be5f947efec9", b3_trace_id=TRACE)
    return RequestEvidence.build(sent, [], records)


SMALL = CallTree("frontend", {"frontend": ("orders",), "orders": ("inventory",)})


def test_a_log_format_with_tracestate_and_b3_is_evidence_enough() -> None:
    """§2.3: %REQ(TRACESTATE)% / %REQ(X-B3-TRACEID)% in the access log show what each hop
    received and sent, without any span attribute."""
    good = _log_only_evidence(("meshchaos=r", TRACE))
    assert tracing.tracestate_survives(good, SMALL) == []
    assert tracing.b3_agrees(good, SMALL) == []
    bad = _log_only_evidence(("-", "-"))
    (dropped,) = tracing.tracestate_survives(bad, SMALL) or []
    assert dropped.hop == "orders" and "did not propagate" in dropped.observed
    (no_b3,) = tracing.b3_agrees(bad, SMALL) or []
    assert no_b3.hop == "orders"


def test_b3_is_not_judged_below_a_hop_that_left_the_trace() -> None:
    """A break is reported once, at the hop that broke it: below a dropped traceparent the
    next sidecar starts a new W3C trace (§3) and correct apps send B3 for that new trace."""
    new_trace = "11111111111111111111111111111111"

    def line(hop: str, cluster: str, trace: str, b3: str) -> str:
        return _line(hop, cluster, "meshchaos=r", b3).replace(TRACE, trace, 1)

    tree = CallTree("frontend", {"frontend": ("orders",), "orders": ("inventory",),
                                 "inventory": ("pricing",)})
    lines = {  # orders drops traceparent: inventory's sidecar starts new_trace
        "frontend-a1b2c3d4e5-abcde": [line("frontend", "inbound|8080||", TRACE, TRACE)],
        "orders-a1b2c3d4e5-abcde": [line("orders", "inbound|8080||", TRACE, TRACE)],
        "inventory-a1b2c3d4e5-abcde": [line("inventory", "inbound|8080||", new_trace, TRACE)],
        "pricing-a1b2c3d4e5-abcde": [line("pricing", "inbound|8080||", new_trace, new_trace)],
    }
    fmt = compile_format(WIDE)
    records = [r for pod, pod_lines in lines.items()
               for r in parse_lines(fmt, "shop", pod, pod_lines)[0]]
    sent = SentRequest(TRACE, "00f067aa0ba902b7", True, "meshchaos=r",
                       "0d384590-2f9e-48ce-a3c3-be5f947efec9", b3_trace_id=TRACE)
    ev = RequestEvidence.build(sent, [], records)
    assert tracing.b3_agrees(ev, tree) == []
