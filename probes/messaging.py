"""Probe: the messaging hop, judged from the broker's firehose and the sidecars' logs (§9).

Sends its own requests through the ingress (each with a fresh trace context and request id)
while a tap records the firehose of the broker behind ``broker_service``; every message the
``producer_service`` publishes for one of those requests is then followed to the
``consumer_service``'s work (:mod:`probes.checks.messaging`). Usage::

    {"type": "probe", "name": "messages-keep-their-trace",
     "tolerance": {"type": "jsonpath", "path": "$.passed", "expect": true},
     "provider": {"type": "python", "module": "probes.messaging", "func": "message_flow",
                  "arguments": {"requests": 10}}}

``duplicates: N`` publishes a copy of N of the messages again (the latest delivered; same
message id and headers, once the original's delivery is ``duplicate_after_s`` old), before
the last quarter of the load: the duplicate an at-least-once broker or a republishing
producer delivers, which an idempotent consumer must not process twice. Chaos Mesh has no
fault of that kind for a queue, so the probe injects it itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from probes import _common
from probes.checks.messaging import (
    MessageEvidence,
    evaluate,
    expired_unprocessed,
    group_messages,
    summary,
)
from probes.config import resolve
from probes.deadline import Deadline
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.broker import find_broker
from probes.evidence.firehose import FirehoseTap, TracedMessage
from probes.evidence.kube import read_access_log_settings, read_proxy_logs
from probes.evidence.request import SentRequest
from probes.results import probe_result
from probes.target import target_of
from probes.traffic import Load, send_load

__all__ = ["message_flow"]

QUIET_S = 0.5  # no new firehose copy for this long: the queue has settled
CONSUMER_QUIET_S = 0.6  # no call of the consumer ended for this long: it has nothing left
LOST_AFTER_IDLE_S = 1.5  # consumer and broker idle this long: unworked messages are not coming
READ_AGAIN_S = 0.3  # between log reads while delivered messages show no work yet
DUPLICATE_MIN_LEFT_MS = 100.0  # a duplicate goes out only while its deadline is this far off
_POLL_S = 0.05


def message_flow(requests: int = 10, rate: float = 20.0, checks: list[str] | None = None,
                 require: list[str] | None = None, scoped: bool = True, duplicates: int = 0,
                 duplicate_after_s: float = 0.3, settle_s: float = 8.0,
                 client_timeout_s: float = 5.0, path: str = "",
                 headers: dict[str, str] | None = None, timeout_s: float = 60.0,
                 configuration: dict[str, Any] | None = None,
                 secrets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send ``requests`` at ``rate`` per second and judge their messages.

    ``checks``: the rules of :mod:`probes.checks.messaging` (default all; the deadline rule
    only with ``scoped``, i.e. when messages must carry their request's deadline).
    ``settle_s``: how long after the load the probe waits for the queue to settle (every
    message delivered or expired, then ``QUIET_S`` without a copy). ``require``: the rules the
    verdict rests on (default: every rule run). Returns the probe result dict (``$.passed``).
    """
    deadline = Deadline(timeout_s, "message_flow")
    settings = resolve(configuration)
    target = target_of(settings)
    producer = settings.service("producer_service")
    consumer = settings.service("consumer_service")
    client = target.api_client()
    try:
        mesh = read_access_log_settings(client, timeout_s=min(5.0, deadline.check(
            "reading mesh")), why="no sidecar evidence of the consumer's work")
        broker = find_broker(settings, target, client)
        if settings.broker_firehose == "enable":
            broker.enable_firehose()
        with FirehoseTap(broker.url) as tap:
            def load(count: int) -> list[SentRequest]:
                return send_load(Load(
                    target.entry_url(path), _common.run_id(configuration), count=count,
                    rate=rate, duration_s=count / rate + 1.0,
                    concurrency=min(64, max(4, math.ceil(rate * client_timeout_s / 4))),
                    timeout_s=client_timeout_s, headers=target.request_headers(headers)))

            # Duplicates go out before the last quarter of the load, so the messages that
            # follow them in the queue keep the probe waiting until they were handled too.
            first_part = requests - requests // 4 if duplicates > 0 else requests
            sent = load(first_part)
            copies = _inject_duplicates(tap, sent, duplicates, duplicate_after_s, deadline)
            if first_part < requests:
                sent += load(requests - first_part)
            waited = _wait_settled(tap, sent, min(settle_s, deadline.remaining() / 2))
            first = min(r.started_us for r in sent) / 1e6

            def read_logs() -> tuple[list[AccessLogRecord], int]:
                return read_proxy_logs(client, target.namespace, mesh.log_format,
                                       since_seconds=math.ceil(time.time() - first) + 5,
                                       timeout_s=min(10.0, deadline.check("reading logs")))

            traced, records, unparsed = _read_until_worked(
                tap, sent, read_logs, producer, consumer,
                max(0.0, min(settle_s - waited, deadline.remaining() / 3)))
    finally:
        client.close()
    return _result(producer, consumer, sent, traced, records, scoped, checks, require,
                   {"duplicates_injected": copies, "settle_s": round(waited, 3),
                    "log_lines": len(records), "unparsed_log_lines": unparsed,
                    "broker_pod": broker.pod})


def _result(producer: str, consumer: str, sent: list[SentRequest],
            traced: list[TracedMessage], records: list[AccessLogRecord], scoped: bool,
            checks: list[str] | None, require: list[str] | None,
            extra: dict[str, Any]) -> dict[str, Any]:
    messages, missing = group_messages(traced, sent)
    evidence = MessageEvidence(producer, consumer, messages, records, scoped=scoped,
                               requests_without_message=missing)
    results = evaluate(evidence, checks)
    statuses: dict[str, int] = {}
    for r in sent:
        key = str(r.status) if r.status is not None else "error"
        statuses[key] = statuses.get(key, 0) + 1
    return probe_result("message-flow", results, require=require,
                        measurements={"requests": len(sent), "statuses": statuses,
                                      "producer": producer, "consumer": consumer,
                                      "firehose_copies": len(traced), **summary(evidence),
                                      **extra})


def _read_until_worked(tap: FirehoseTap, sent: list[SentRequest],
                       read_logs: Callable[[], tuple[list[AccessLogRecord], int]],
                       producer: str, consumer: str, limit_s: float
                       ) -> tuple[list[TracedMessage], list[AccessLogRecord], int]:
    """Read the logs until every delivered message that is neither processed nor expired
    shows its work, or ``limit_s`` passed: a consumer working through its prefetched
    messages one by one logs the last of them well after the broker went quiet."""
    end = time.monotonic() + limit_s
    while True:
        traced = tap.records()
        records, unparsed = read_logs()
        messages, _ = group_messages(traced, sent)
        evidence = MessageEvidence(producer, consumer, messages, records)
        pending = [m for m in messages if m.deliveries and evidence.processings(m) == 0
                   and not expired_unprocessed(evidence, m)]
        # A message past its deadline may still be worked on late (the bug the deadline rule
        # is after): the consumer must also have been quiet a while.
        ends = [r.end_us for r in records if r.hop == consumer and r.end_us is not None]
        idle_s = time.time() - max(ends) / 1e6 if ends else float("inf")
        copies_idle_s = time.time() - traced[-1].at_us / 1e6 if traced else float("inf")
        # Messages still without work while neither the consumer nor the broker did anything
        # for a while are not coming (acked and dropped, lost): no use waiting for them.
        given_up = idle_s >= LOST_AFTER_IDLE_S and copies_idle_s >= LOST_AFTER_IDLE_S
        if (not pending and idle_s >= CONSUMER_QUIET_S) or (pending and given_up) \
                or not evidence.callees() or time.monotonic() >= end:
            return traced, records, unparsed
        time.sleep(READ_AGAIN_S)


def _probe_messages(records: list[TracedMessage], sent: list[SentRequest]
                    ) -> list[TracedMessage]:
    """The publishes of the probe's own requests among the tap's copies."""
    rids = {r.request_id for r in sent}
    return [c for c in records if c.event == "publish" and c.request_id in rids]


def _time_left_ms(message: TracedMessage, now_us: int) -> float:
    """What is left of a message's deadline (infinite for an unscoped one): a copy that
    would expire before a consumer gets to it tests nothing."""
    deadline = message.deadline_us
    return float("inf") if deadline is None else (deadline - now_us) / 1000


def _inject_duplicates(tap: FirehoseTap, sent: list[SentRequest], count: int, after_s: float,
                       deadline: Deadline) -> int:
    """Publish ``count`` messages of the probe's requests again once each was delivered
    ``after_s`` ago; return how many copies went out."""
    if count <= 0:
        return 0
    done: set[str] = set()
    end = time.monotonic() + min(5.0, deadline.remaining() / 4)
    while len(done) < count and time.monotonic() < end:
        last_delivery: dict[str, int] = {}
        records = tap.records()
        # After a redelivery the consumer may be a new one (a kill): only what was delivered
        # since then is surely in its memory.
        since = max((c.at_us for c in records if c.event == "deliver" and c.redelivered),
                    default=0)
        for c in records:
            if c.event == "deliver" and c.message_id and c.at_us >= since:
                last_delivery[c.message_id] = c.at_us
        originals = {m.message_id: m for m in _probe_messages(records, sent) if m.message_id}
        now_us = time.time_ns() // 1000
        # the most recently delivered first: a consumer replaced meanwhile (a kill)
        # remembers only what it processed itself
        ripe = sorted((at, mid) for mid, at in last_delivery.items()
                      if mid in originals and mid not in done and now_us - at >= after_s * 1e6
                      and _time_left_ms(originals[mid], now_us) > DUPLICATE_MIN_LEFT_MS)
        for _, mid in reversed(ripe):
            if len(done) >= count:
                break
            tap.republish(originals[mid])
            done.add(mid)
        time.sleep(_POLL_S)
    return len(done)


def _wait_settled(tap: FirehoseTap, sent: list[SentRequest], limit_s: float) -> float:
    """Wait until each message of the probe's requests was delivered (or its TTL passed), the
    queues they went to hold nothing ready (a killed consumer's messages wait there for its
    successor) and no copy arrived for ``QUIET_S``; return the seconds waited (at most
    ``limit_s``)."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        records = tap.records()
        last = records[-1].at_us / 1e6 if records else 0.0
        delivered = {c.message_id for c in records if c.event == "deliver"}
        now = time.time()
        mine = _probe_messages(records, sent)
        open_ = [m for m in mine if m.message_id not in delivered
                 and (m.deadline_us is None or m.deadline_us / 1e6 > now)]
        if not open_ and now - last >= QUIET_S:
            queues = sorted({q for m in mine for q in m.routed_queues})
            if all(tap.ready_messages(q) == 0 for q in queues):
                break
        time.sleep(_POLL_S)
    return time.monotonic() - began
