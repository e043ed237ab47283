"""Rules across a message queue (docs/fidelity.md §9), judged from the broker's firehose and
the sidecars' access logs, so they hold for any app on any mesh.

A *message* is what the firehose saw under one ``message_id``: its publishes (a producer's
republish and an injected duplicate are publishes of the same id) and its deliveries (with
AMQP's ``redelivered`` flag). It belongs to the probe's request whose ``x-request-id`` it
carries (header ``x-request-id``, else the correlation id), else to the request whose trace
id its ``traceparent`` names; messages of other traffic are left alone.

The *work* done for a message is what the consumer asked of others while handling it: the
consumer's outbound sidecar lines with the message's request id, and the lines of those
callees' inbound sidecars with that request id that began after the message was first
delivered. The callee's side survives the consumer: a killed worker's pod takes its own log
with it (``kubectl logs`` of a deleted pod), the callee keeps the line. One *processing* is
one completed call to a callee (a 2xx to 4xx answer, not a caller gone), so a message worked on
twice shows two lines at that callee. A consumer that calls no one leaves no mesh evidence of
its work; its rules then say "not judged", never "held".

Rules:

- ``trace-in-message`` (producer): every message published for a request carries a valid
  ``traceparent`` of the request's trace, and the request's ``tracestate`` entry (W3C AMQP
  draft, §9.4);
- ``trace-across-queue`` (consumer): the work for a message continues the message's trace;
- ``deadline-in-message`` (producer, when messages are request-scoped): the message's
  deadline (``expiration``, ``x-deadline-unix-ms``) is no later than what the request had
  left when the message was published (§9.2);
- ``no-work-after-deadline`` (consumer): no work for a message starts after its deadline: the
  request that scoped it is gone, so the work is orphaned (§9.2);
- ``processed-once`` (consumer): each message is processed at most once, duplicates and
  redeliveries included (§9.3);
- ``nothing-lost`` (consumer): each message published for a request is processed, unless its
  deadline passed first (§9.3).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from probes.checks.findings import Finding, Judged, NotJudged, Outcome, aggregate
from probes.evidence.accesslog import AccessLogRecord, parse_traceparent
from probes.evidence.firehose import DEADLINE_HEADER, TracedMessage
from probes.evidence.request import SentRequest
from probes.results import Check

__all__ = ["ALL", "DEADLINE_HEADER", "Message", "MessageEvidence", "evaluate",
           "expired_unprocessed", "group_messages", "missed_deadline", "summary"]

TOLERANCE_MS = 10.0  # integer-ms rounding and the tap's own delay, as the deadline rules allow
# A callee's inbound line may begin this much before the firehose copy of the delivery arrives
# at the tap (both on this machine's clock; the copy travels after the delivery).
DELIVERY_SKEW_MS = 50.0
ALL = ("trace-in-message", "trace-across-queue", "deadline-in-message",
       "no-work-after-deadline", "processed-once", "nothing-lost")
_DEADLINE_RULES = ("deadline-in-message", "no-work-after-deadline")


@dataclass(frozen=True)
class Message:
    """One message id as the firehose saw it, and the probe's request it belongs to."""

    id: str
    publishes: tuple[TracedMessage, ...]
    deliveries: tuple[TracedMessage, ...]
    request: SentRequest

    @property
    def first(self) -> TracedMessage:
        return self.publishes[0]

    @property
    def request_id(self) -> str | None:
        return self.first.request_id

    @property
    def trace(self) -> tuple[str, str, bool] | None:
        return parse_traceparent(self.first.text_header("traceparent"))

    @property
    def deadline_us(self) -> int | None:
        """The deadline its first publish gave it."""
        return self.first.deadline_us

    def describe(self) -> str:
        return f"message {self.id[:12]} (request {self.request.request_id[:8]})"


@dataclass
class MessageEvidence:
    """Everything the rules read: the messages, the sidecar lines, who produces and consumes."""

    producer: str
    consumer: str
    messages: list[Message]
    records: Sequence[AccessLogRecord]
    scoped: bool = True  # messages carry their request's deadline
    requests_without_message: list[SentRequest] = field(default_factory=list)
    _by_request_id: dict[str, list[AccessLogRecord]] = field(default_factory=dict)
    _foreign_memo: set[str] | None = None

    def __post_init__(self) -> None:
        for rec in self.records:
            if rec.request_id:
                self._by_request_id.setdefault(rec.request_id, []).append(rec)

    def lines_of(self, request_id: str | None) -> list[AccessLogRecord]:
        return list(self._by_request_id.get(request_id or "", ()))

    def producer_inbound(self, msg: Message) -> AccessLogRecord | None:
        """The producer's inbound line of the message's request that spans the publish."""
        lines = [r for r in self.lines_of(msg.request.request_id)
                 if r.hop == self.producer and r.direction == "inbound"
                 and r.start_us is not None and r.start_us <= msg.first.at_us]
        return max(lines, key=lambda r: r.start_us or 0, default=None)

    def callees(self) -> set[str]:
        """The services the consumer called in anything the logs hold."""
        return {s for r in self.records if r.hop == self.consumer and r.direction == "outbound"
                for s in [r.upstream_service] if s}

    def _foreign(self) -> set[str]:
        """Local addresses of other hops' upstream connections: a callee's inbound line from
        one of them (``%DOWNSTREAM_REMOTE_ADDRESS%`` of the same connection) is not the
        consumer's call."""
        if self._foreign_memo is None:
            self._foreign_memo = {a for r in self.records
                                  if r.hop != self.consumer and r.direction == "outbound"
                                  for a in [r.fields.get("upstream_local_address")] if a}
        return self._foreign_memo

    def work(self, msg: Message) -> list[AccessLogRecord]:
        """The consumer's calls for the message, seen from either end (module docstring)."""
        if not msg.deliveries:
            return []
        since = msg.deliveries[0].at_us - DELIVERY_SKEW_MS * 1000
        callees, foreign = self.callees(), self._foreign()
        lines = self.lines_of(msg.request_id)
        own = [r for r in lines if r.hop == self.consumer and r.direction == "outbound"]
        theirs = [r for r in lines if r.hop in callees and r.direction == "inbound"
                  and r.start_us is not None and r.start_us >= since]
        addressed = [r for r in theirs if r.fields.get("downstream_remote_address")]
        if len(addressed) == len(theirs):
            theirs = [r for r in theirs if r.fields.get("downstream_remote_address") not in foreign]
        else:
            # A format without the addresses: take away as many lines per callee as other
            # hops sent it for the request in the same window.
            others: dict[str, int] = defaultdict(int)
            for r in lines:
                if r.hop not in (self.consumer, *callees) or r.direction != "outbound":
                    continue
                if r.start_us is not None and r.start_us >= since and r.upstream_service:
                    others[r.upstream_service] += 1
            kept = []
            for r in sorted(theirs, key=lambda x: x.start_us or 0):
                if others[r.hop] > 0:
                    others[r.hop] -= 1
                    continue
                kept.append(r)
            theirs = kept
        return own + theirs

    def processings(self, msg: Message) -> int:
        """How many times the message was processed: completed calls at its busiest callee,
        counted at the end (consumer outbound or callee inbound) that saw more of them."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for rec in self.work(msg):
            if not _completed(rec):
                continue
            callee = rec.upstream_service if rec.hop == self.consumer else rec.hop
            counts[(callee or "?", rec.direction)] += 1
        return max(counts.values(), default=0)


def _completed(rec: AccessLogRecord) -> bool:
    return rec.response_code is not None and 200 <= rec.response_code < 500 \
        and not rec.downstream_disconnected


def group_messages(traced: Iterable[TracedMessage], sent: Sequence[SentRequest]
                   ) -> tuple[list[Message], list[SentRequest]]:
    """The messages of the probe's requests (send order), and the requests that got none."""
    by_rid = {r.request_id: r for r in sent}
    by_trace = {r.trace_id: r for r in sent}
    publishes: dict[str, list[TracedMessage]] = defaultdict(list)
    deliveries: dict[str, list[TracedMessage]] = defaultdict(list)
    for copy in traced:
        if copy.message_id is None:
            continue
        (publishes if copy.event == "publish" else deliveries)[copy.message_id].append(copy)
    messages = []
    for message_id, pubs in publishes.items():
        first = pubs[0]
        trace = parse_traceparent(first.text_header("traceparent"))
        request = by_rid.get(first.request_id or "") or (by_trace.get(trace[0]) if trace else None)
        if request is not None:
            messages.append(Message(message_id, tuple(pubs), tuple(deliveries[message_id]),
                                    request))
    order = {r.request_id: i for i, r in enumerate(sent)}
    messages.sort(key=lambda m: (order[m.request.request_id], m.first.at_us))
    with_message = {m.request.request_id for m in messages}
    return messages, [r for r in sent if r.request_id not in with_message]


def _trace_in_message(ev: MessageEvidence, msg: Message) -> Outcome:
    trace = msg.trace
    raw = msg.first.header("traceparent")
    where = f"{ev.producer} published {msg.describe()}"
    if raw is not None and not isinstance(raw, str):
        return [Finding(ev.producer, f"{where} with a traceparent of AMQP type "
                        f"{type(raw).__name__}, not a string (W3C AMQP draft: a string "
                        "application property)", (msg.request.trace_id,))]
    if trace is None:
        what = "without a traceparent header" if raw is None else f"with traceparent {raw!r}, " \
            "which is not W3C Trace Context"
        return [Finding(ev.producer, f"{where} {what} (headers: "
                        f"{', '.join(sorted(msg.first.headers)) or 'none'})",
                        (msg.request.trace_id,))]
    if trace[0] != msg.request.trace_id:
        return [Finding(ev.producer, f"{where} in trace {trace[0]}, not the request's "
                        f"{msg.request.trace_id}", (msg.request.trace_id, trace[0]))]
    entry = msg.request.tracestate.split(",", 1)[0]
    state = msg.first.text_header("tracestate") or ""
    if entry and entry not in [e.strip() for e in state.split(",")]:
        return [Finding(ev.producer, f"{where} without the request's tracestate entry "
                        f"{entry!r} (tracestate {state or 'absent'})", (msg.request.trace_id,))]
    return Judged([], {"broker"})


def _trace_across_queue(ev: MessageEvidence, msg: Message) -> Outcome:
    trace = msg.trace
    if trace is None:
        return NotJudged("the message carried no trace context to continue")
    work = ev.work(msg)
    if not work:
        return NotJudged(f"no call by {ev.consumer} for the message in the logs")
    broken = [r for r in work if r.trace_id != trace[0]]
    if broken:
        first = broken[0]
        return [Finding(ev.consumer, f"{ev.consumer} worked on {msg.describe()} in trace "
                        f"{first.trace_id or '(none)'}, not the message's {trace[0]} "
                        f"({first.hop} {first.direction} line)", (trace[0],),
                        tuple(r.line for r in broken[:3]))]
    return Judged([], {"broker", "sidecar"})


def _deadline_in_message(ev: MessageEvidence, msg: Message) -> Outcome:
    line = ev.producer_inbound(msg)
    budget = line.budget_ms if line is not None else None
    if line is None or budget is None or line.start_us is None:
        return NotJudged(f"no inbound line of {ev.producer} with a budget for the request")
    left_ms = (line.start_us + budget * 1000 - msg.first.at_us) / 1000
    deadline = msg.deadline_us
    where = f"{ev.producer} published {msg.describe()}"
    if deadline is None:
        return [Finding(ev.producer, f"{where} with no deadline (no expiration, no "
                        f"{DEADLINE_HEADER}) while its request had {left_ms:.0f} ms left",
                        (msg.request.trace_id,), (line.line,))]
    given_ms = (deadline - msg.first.at_us) / 1000
    if given_ms > left_ms + TOLERANCE_MS:
        return [Finding(ev.producer, f"{where} with {given_ms:.0f} ms to live, but its request "
                        f"had {left_ms:.0f} ms left", (msg.request.trace_id,), (line.line,))]
    return Judged([], {"broker", "sidecar"})


def _no_work_after_deadline(ev: MessageEvidence, msg: Message) -> Outcome:
    deadline = msg.deadline_us
    if deadline is None:
        return NotJudged("the message carried no deadline")
    if not msg.deliveries:
        return Judged([], {"broker"})  # dropped by the broker: nothing was worked on
    late = [r for r in ev.work(msg) if r.start_us is not None
            and r.start_us > deadline + TOLERANCE_MS * 1000]
    if late:
        first = min(late, key=lambda r: r.start_us or 0)
        after = ((first.start_us or 0) - deadline) / 1000
        return [Finding(ev.consumer, f"{ev.consumer} worked on {msg.describe()} {after:.0f} ms "
                        f"after its deadline (a call to "
                        f"{first.upstream_service if first.hop == ev.consumer else first.hop})",
                        (msg.request.trace_id,), tuple(r.line for r in late[:3]))]
    if not ev.callees():
        return NotJudged(f"{ev.consumer} made no call in the logs: its work is not visible")
    return Judged([], {"broker", "sidecar"})


def _processed_once(ev: MessageEvidence, msg: Message) -> Outcome:
    if not msg.deliveries:
        return NotJudged("the message was never delivered")
    if not ev.callees():
        return NotJudged(f"{ev.consumer} made no call in the logs: its work is not visible")
    times = ev.processings(msg)
    if times > 1:
        redelivered = sum(d.redelivered for d in msg.deliveries)
        return [Finding(ev.consumer, f"{ev.consumer} processed {msg.describe()} {times} times "
                        f"({len(msg.publishes)} publish(es), {len(msg.deliveries)} "
                        f"deliveries, {redelivered} redelivered)", (msg.request.trace_id,),
                        tuple(r.line for r in ev.work(msg)[:4]))]
    return Judged([], {"broker", "sidecar"})


def _nothing_lost(ev: MessageEvidence, msg: Message) -> Outcome:
    if not ev.callees():
        return NotJudged(f"{ev.consumer} made no call in the logs: its work is not visible")
    if ev.processings(msg) > 0:
        return Judged([], {"broker", "sidecar"})
    if expired_unprocessed(ev, msg):
        return Judged([], {"broker"})  # expired before a delivery could use it: dropped, fine
    routed = any(p.routed_queues for p in msg.publishes)
    if not routed:
        return [Finding(ev.producer, f"{ev.producer} published {msg.describe()} to exchange "
                        f"'{msg.first.exchange}', which routed it to no queue",
                        (msg.request.trace_id,))]
    seen = (f"delivered {len(msg.deliveries)} time(s), "
            f"{sum(d.redelivered for d in msg.deliveries)} redelivered, and never processed"
            if msg.deliveries else "never delivered")
    return [Finding(ev.consumer, f"{msg.describe()} was {seen} by {ev.consumer}",
                    (msg.request.trace_id,))]


_RULES: dict[str, tuple[str, str, Callable[[MessageEvidence, Message], Outcome]]] = {
    "trace-in-message": ("the published message carries the request's traceparent and "
                         "tracestate in its headers (W3C Trace Context: AMQP)",
                         "traceparent of the request's trace", _trace_in_message),
    "trace-across-queue": ("the consumer's work continues the message's trace",
                           "work in the message's trace", _trace_across_queue),
    "deadline-in-message": ("a request-scoped message lives no longer than its request "
                            "had left", "deadline <= request's remaining budget",
                            _deadline_in_message),
    "no-work-after-deadline": ("no work for a message starts after its deadline (orphan "
                               "work across the queue)", "no call after the deadline",
                               _no_work_after_deadline),
    "processed-once": ("each message is processed once, redeliveries and duplicates "
                       "included (idempotent consumer)", "one processing per message",
                       _processed_once),
    "nothing-lost": ("each message is processed unless its deadline passed first",
                     "every live message processed", _nothing_lost),
}


def evaluate(ev: MessageEvidence, checks: Sequence[str] | None = None) -> list[Check]:
    """Run the rules (default all; the two deadline rules only for scoped messages)."""
    names = list(checks) if checks is not None else \
        [n for n in ALL if ev.scoped or n not in _DEADLINE_RULES]
    unknown = [n for n in names if n not in _RULES]
    if unknown:
        from probes.errors import ConfigurationError

        raise ConfigurationError(f"unknown messaging check(s) {unknown}; known: {list(ALL)}")
    out = []
    for name in names:
        rule, expected, judge = _RULES[name]
        outcomes: list[Outcome] = [judge(ev, m) for m in ev.messages]
        if not outcomes:
            outcomes = [NotJudged(f"no message of the probe's requests reached the firehose "
                                  f"({len(ev.requests_without_message)} request(s) sent)")]
        out.append(aggregate(name, rule, expected, outcomes))
    return out


def expired_unprocessed(ev: MessageEvidence, msg: Message, now_us: int | None = None) -> bool:
    """Dropped for its deadline: never processed, and its deadline has passed (in the queue,
    or delivered and waiting in the consumer's prefetch window: either way its requester no
    longer wants it)."""
    deadline = msg.deadline_us
    if deadline is None or ev.processings(msg) > 0:
        return False
    return deadline <= (time.time_ns() // 1000 if now_us is None else now_us)


def missed_deadline(ev: MessageEvidence, msg: Message) -> bool:
    """Not done in time: dropped for its deadline, or its work finished after it."""
    deadline = msg.deadline_us
    if deadline is None:
        return False
    if expired_unprocessed(ev, msg):
        return True
    ends = [r.end_us for r in ev.work(msg) if _completed(r) and r.end_us is not None]
    return bool(ends) and max(ends) > deadline


def summary(ev: MessageEvidence) -> Mapping[str, int]:
    """Counts for the measurements: messages, deliveries, redeliveries, duplicates."""
    return {"messages": len(ev.messages),
            "publishes": sum(len(m.publishes) for m in ev.messages),
            "deliveries": sum(len(m.deliveries) for m in ev.messages),
            "redelivered": sum(d.redelivered for m in ev.messages for d in m.deliveries),
            "processed": sum(ev.processings(m) > 0 for m in ev.messages),
            "never_delivered": sum(not m.deliveries for m in ev.messages),
            "expired": sum(expired_unprocessed(ev, m) for m in ev.messages),
            "missed_deadline": sum(missed_deadline(ev, m) for m in ev.messages),
            "requests_without_message": len(ev.requests_without_message)}
