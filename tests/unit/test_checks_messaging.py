"""The messaging rules on evidence any mesh and any RabbitMQ have: firehose copies (what
``amq.rabbitmq.trace`` carries, docs/fidelity.md §9.6) and sidecar lines, for services that are
not the reference chain (``orders-api`` publishes, ``mailer`` consumes and calls
``smtp-relay``, ``billing`` also calls ``smtp-relay`` for the same request), with no app span.

Each defect is one change to the correct evidence, so a rule that still holds with it would
be a PASS the defect also earns.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from probes.checks.messaging import MessageEvidence, evaluate, group_messages, summary
from probes.errors import EvidenceError
from probes.evidence.accesslog import AccessLogRecord, compile_format, parse_lines
from probes.evidence.firehose import TracedMessage, parse_traced
from probes.evidence.request import SentRequest
from probes.results import probe_result

FORMAT = compile_format({
    "start_time": "%START_TIME%", "duration": "%DURATION%", "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%", "cluster": "%UPSTREAM_CLUSTER_RAW%",
    "request_id": "%REQ(X-REQUEST-ID)%", "traceparent": "%REQ(TRACEPARENT)%",
    "expected": "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%", "authority": "%REQ(:AUTHORITY)%",
}, "JSON")
T0 = 1_700_000_000_000  # ms since the epoch, in the past: deadlines there have passed
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
RID = "7d9f2a54-1c3b-4e2f-9a8b-1234567890ab"
MID = "5c1e0a2b9d8f4e37a6b1c2d3e4f5a6b7"
SENT = SentRequest(trace_id=TRACE, parent_id="00f067aa0ba902b7", sampled=True,
                   tracestate="meshchaos=run-1", request_id=RID, status=200,
                   started_us=T0 * 1000)
PRODUCER, CONSUMER = "orders-api", "mailer"


def line(pod: str, *, at: int, ms: int, code: int = 200, flags: str = "-",
         callee: str | None = None, expected: int | None = None, rid: str = RID,
         trace: str = TRACE) -> AccessLogRecord:
    doc: dict[str, Any] = {
        "start_time": datetime.fromtimestamp((T0 + at) / 1000, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"),
        "duration": str(ms), "code": str(code), "flags": flags,
        "cluster": f"outbound|25||{callee}.mail.svc.cluster.local" if callee
        else "inbound|8080||",
        "request_id": rid, "traceparent": f"00-{trace}-{'1' * 16}-01",
        "expected": str(expected) if expected is not None else "-",
        "authority": f"{callee or pod.split('-')[0]}:8080",
    }
    records, bad = parse_lines(FORMAT, "mail", pod, [json.dumps(doc)], hop=pod.rsplit("-", 2)[0])
    assert not bad
    return records[0]


def publish(at: int, *, headers: dict[str, Any] | None = None, expiration: int | None = 250,
            message_id: str = MID, routed: tuple[str, ...] = ("mail.jobs",)) -> TracedMessage:
    head = {"traceparent": f"00-{TRACE}-b7ad6b7169203331-01", "tracestate": "meshchaos=run-1",
            "x-request-id": RID} if headers is None else headers
    return TracedMessage("publish", (T0 + at) * 1000, "mail.events", None, ("job",), routed,
                         message_id, None, expiration, head)


def deliver(at: int, *, redelivered: bool = False, message_id: str = MID) -> TracedMessage:
    copy = publish(0, message_id=message_id)
    return replace(copy, event="deliver", at_us=(T0 + at) * 1000, queue="mail.jobs",
                   routed_queues=(), redelivered=redelivered)


PRODUCER_IN = line("orders-api-7f-abc", at=0, ms=40, expected=300)


def mailer_call(at: int = 12, *, trace: str = TRACE, code: int = 200) -> list[AccessLogRecord]:
    """mailer's call to smtp-relay for the message, seen at both sidecars."""
    return [line("mailer-6d-xyz", at=at, ms=5, callee="smtp-relay", trace=trace, code=code),
            line("smtp-relay-5c-qrs", at=at + 1, ms=3, trace=trace, code=code)]


def judge(traced: list[TracedMessage], records: list[AccessLogRecord],
          checks: list[str] | None = None, *, scoped: bool = True) -> dict[str, Any]:
    messages, missing = group_messages(traced, [SENT])
    ev = MessageEvidence(PRODUCER, CONSUMER, messages, records, scoped=scoped,
                         requests_without_message=missing)
    return {c.name: c for c in evaluate(ev, checks)} | {"_summary": summary(ev)}


CORRECT = ([publish(20), deliver(22)], [PRODUCER_IN, *mailer_call()])


def test_a_correct_flow_holds_every_rule_on_broker_and_sidecar_evidence() -> None:
    result = judge(*CORRECT)
    for name in ("trace-in-message", "trace-across-queue", "deadline-in-message",
                 "no-work-after-deadline", "processed-once", "nothing-lost"):
        assert result[name].verdict == "held", (name, result[name].observed)
    assert "broker" in result["trace-in-message"].basis
    assert result["_summary"]["processed"] == 1


def test_a_producer_that_drops_traceparent_fails_at_the_producer_not_the_consumer() -> None:
    """W3C Trace Context: AMQP: the context travels as the application property traceparent;
    without it the consumer has nothing to continue, so only the producer is to blame."""
    traced = [publish(20, headers={"x-request-id": RID}), deliver(22)]
    result = judge(traced, [PRODUCER_IN, *mailer_call(trace=OTHER_TRACE)])
    assert result["trace-in-message"].verdict == "failed"
    assert result["trace-in-message"].hop == PRODUCER
    assert "without a traceparent header" in result["trace-in-message"].observed
    assert result["trace-across-queue"].verdict == "not judged"


def test_a_traceparent_of_the_wrong_amqp_type_is_named_as_such() -> None:
    traced = [publish(20, headers={"x-request-id": RID,
                                   "traceparent": f"00-{TRACE}-b7ad6b7169203331-01".encode()})]
    result = judge(traced, [PRODUCER_IN])
    assert "AMQP type bytes" in result["trace-in-message"].observed


def test_a_consumer_that_starts_a_new_trace_fails_at_the_consumer() -> None:
    result = judge([publish(20), deliver(22)], [PRODUCER_IN, *mailer_call(trace=OTHER_TRACE)])
    assert result["trace-in-message"].verdict == "held"
    assert result["trace-across-queue"].verdict == "failed"
    assert result["trace-across-queue"].hop == CONSUMER
    assert OTHER_TRACE in result["trace-across-queue"].observed


def test_a_message_that_outlives_its_requests_budget_fails_at_the_producer() -> None:
    """The request had 300 - 20 = 280 ms left when the message went out: a 30 s TTL is a
    deadline the requester never gave (fidelity §9.2)."""
    result = judge([publish(20, expiration=30_000), deliver(22)], [PRODUCER_IN, *mailer_call()])
    check = result["deadline-in-message"]
    assert check.verdict == "failed" and check.hop == PRODUCER
    assert "30000 ms to live" in check.observed and "280 ms left" in check.observed


def test_a_scoped_message_without_any_deadline_fails_at_the_producer() -> None:
    result = judge([publish(20, expiration=None), deliver(22)], [PRODUCER_IN, *mailer_call()])
    assert "with no deadline" in result["deadline-in-message"].observed


def test_work_that_starts_after_the_messages_deadline_is_orphan_work_at_the_consumer() -> None:
    """Published at 20 ms with 250 ms to live: a call at 400 ms works for a requester that
    has given up."""
    result = judge([publish(20), deliver(22)], [PRODUCER_IN, *mailer_call(at=400)])
    check = result["no-work-after-deadline"]
    assert check.verdict == "failed" and check.hop == CONSUMER
    assert "130 ms after its deadline" in check.observed


def test_a_message_the_broker_expired_before_delivery_is_neither_late_nor_lost() -> None:
    alone = judge([publish(20)], [PRODUCER_IN])["no-work-after-deadline"]
    assert alone.verdict == "held" and alone.basis == ("broker",)  # the broker dropped it
    traced = [publish(20), publish(30, message_id="f" * 32), deliver(32, message_id="f" * 32)]
    result = judge(traced, [PRODUCER_IN, *mailer_call()])
    assert result["no-work-after-deadline"].verdict == "held"
    assert result["nothing-lost"].verdict == "held"
    assert result["_summary"]["expired"] == 1


def test_a_duplicate_processed_twice_fails_and_a_skipped_one_holds() -> None:
    """AMQP 0-9-1 delivers at least once: a copy of the same message id (a producer's
    republish, a redelivery after a lost ack) must not be worked on again (§9.3)."""
    traced = [publish(20), deliver(22), publish(60), deliver(62)]
    twice = judge(traced, [PRODUCER_IN, *mailer_call(), *mailer_call(at=70)], scoped=False)
    assert twice["processed-once"].verdict == "failed"
    assert "2 times" in twice["processed-once"].observed
    once = judge(traced, [PRODUCER_IN, *mailer_call()], scoped=False)
    assert once["processed-once"].verdict == "held"


def test_a_message_acked_then_lost_with_its_consumer_fails_nothing_lost() -> None:
    """Delivered once, never redelivered, never worked on: acked before the work, then the
    consumer died. An unscoped message had no deadline to excuse it."""
    traced = [publish(20, expiration=None), deliver(22)]
    result = judge(traced, [PRODUCER_IN, line("mailer-6d-new", at=900, ms=4,
                                              callee="smtp-relay", rid="other")], scoped=False)
    check = result["nothing-lost"]
    assert check.verdict == "failed" and check.hop == CONSUMER
    assert "delivered 1 time(s), 0 redelivered, and never processed" in check.observed


def test_a_redelivered_message_worked_on_by_the_replacement_counts_once() -> None:
    """The killed consumer's log left with its pod; the callee's inbound line, after the
    redelivery, is the evidence that the replacement did the work."""
    traced = [publish(20, expiration=None), deliver(22), deliver(1500, redelivered=True)]
    records = [PRODUCER_IN, line("mailer-6d-new", at=900, ms=4, callee="smtp-relay",
                                 rid="other"), line("smtp-relay-5c-qrs", at=1510, ms=3)]
    result = judge(traced, records, scoped=False)
    assert result["nothing-lost"].verdict == "held"
    assert result["processed-once"].verdict == "held"
    assert result["_summary"]["redelivered"] == 1


def test_another_callers_call_to_the_same_callee_is_not_the_consumers_work() -> None:
    """billing calls smtp-relay for the same request after the delivery: without the
    connection addresses in the format, each line billing sent is taken off the callee's."""
    traced = [publish(20), deliver(22)]
    records = [PRODUCER_IN, *mailer_call(),
               line("billing-1-a", at=30, ms=4, callee="smtp-relay"),
               line("smtp-relay-5c-qrs", at=31, ms=3)]
    assert judge(traced, records)["processed-once"].verdict == "held"


def test_a_consumer_that_calls_no_one_is_not_judged_and_the_probe_is_inconclusive() -> None:
    """No mesh evidence of its work: the rules that need it say so instead of passing."""
    messages, _ = group_messages([publish(20), deliver(22)], [SENT])
    ev = MessageEvidence(PRODUCER, CONSUMER, messages, [PRODUCER_IN], scoped=True)
    checks = evaluate(ev, ["processed-once", "nothing-lost", "trace-across-queue"])
    assert {c.verdict for c in checks} == {"not judged"}
    result = probe_result("message-flow", checks)
    assert result["passed"] is False and result["inconclusive"]


def test_no_message_of_the_probes_requests_judges_nothing() -> None:
    other = publish(20, headers={"x-request-id": "someone-else",
                                 "traceparent": f"00-{OTHER_TRACE}-b7ad6b7169203331-01"})
    messages, missing = group_messages([other], [SENT])
    assert messages == [] and missing == [SENT]
    ev = MessageEvidence(PRODUCER, CONSUMER, messages, [PRODUCER_IN],
                         requests_without_message=missing)
    (check,) = evaluate(ev, ["trace-in-message"])
    assert check.verdict == "not judged"
    assert "no message of the probe's requests reached the firehose" in check.observed


def test_a_message_routed_to_no_queue_is_lost_at_the_producer() -> None:
    warmup = line("mailer-6d-xyz", at=5, ms=2, callee="smtp-relay", rid="warmup")
    result = judge([publish(20, expiration=None, routed=())], [PRODUCER_IN, warmup],
                   scoped=False)
    assert result["nothing-lost"].hop == PRODUCER
    assert "routed it to no queue" in result["nothing-lost"].observed


def test_an_unknown_check_name_is_a_configuration_error_naming_the_known_ones() -> None:
    messages, _ = group_messages(*([publish(20)], [SENT]))
    with pytest.raises(Exception, match="unknown messaging check"):
        evaluate(MessageEvidence(PRODUCER, CONSUMER, messages, []), ["exactly-once"])


def test_firehose_copies_parse_into_publish_and_delivery_records() -> None:
    """RabbitMQ's firehose: routing key publish.<exchange> / deliver.<queue>, the message's
    properties (headers included) in the copy's headers, redelivered as 0/1."""
    head = {"exchange_name": "mail.events", "routing_keys": ["job"],
            "properties": {"message_id": MID, "expiration": "250", "delivery_mode": 2,
                           "headers": {"traceparent": "00-x", "x-request-id": RID}},
            "routed_queues": ["mail.jobs"], "node": "rabbit@a", "vhost": "/"}
    pub = parse_traced("publish.mail.events", head, b"{}", 7)
    assert pub is not None and pub.event == "publish"
    assert (pub.exchange, pub.routing_keys, pub.routed_queues) == (
        "mail.events", ("job",), ("mail.jobs",))
    assert pub.expiration_ms == 250 and pub.request_id == RID and pub.at_us == 7
    dlv = parse_traced("deliver.mail.jobs", {**head, "redelivered": 1}, b"{}", 9)
    assert dlv is not None and dlv.queue == "mail.jobs" and dlv.redelivered
    assert parse_traced("other.thing", head, b"", 0) is None


def test_a_copy_without_properties_is_an_evidence_error_naming_it() -> None:
    with pytest.raises(EvidenceError, match=r"'publish\.mail\.events' has no properties table"):
        parse_traced("publish.mail.events", {"exchange_name": "mail.events"}, b"", 0)


def test_a_malformed_traceparent_in_a_message_is_reported_at_the_producer() -> None:
    """W3C Trace Context §3.2: a traceparent that does not parse is invalid; the consumer must
    start a new trace, and the probe says the producer sent something unusable."""
    traced = [publish(20, headers={"x-request-id": RID, "traceparent": "00-not-a-trace-01"}),
              deliver(22)]
    result = judge(traced, [PRODUCER_IN, *mailer_call(trace=OTHER_TRACE)])
    check = result["trace-in-message"]
    assert check.verdict == "failed" and check.hop == PRODUCER
    assert "'00-not-a-trace-01', which is not W3C Trace Context" in check.observed


def test_a_broker_that_refuses_the_tap_is_an_evidence_error_without_the_password() -> None:
    """A real refused connection on loopback: the probe cannot read the firehose, so it
    cannot measure (ActivityFailed), naming the broker but not its credentials."""
    import socket

    from probes.evidence.firehose import FirehoseTap

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    with (pytest.raises(EvidenceError, match=f"broker amqp://guest@127.0.0.1:{port}/") as err,
          FirehoseTap(url, connect_timeout_s=2.0)):
        pass
    assert "s3cret" not in str(err.value)
