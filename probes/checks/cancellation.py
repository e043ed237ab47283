"""Orphan-work rules (docs/fidelity.md §1.1, §1.6, §6).

When a caller's sidecar times out (``504 UT``), Envoy resets the upstream stream; the
callee's inbound sidecar logs ``0 DC``/``0 DR`` and the callee app sees its caller gone.
Everything below must stop within ``grace_ms``: its app span ends (cancelled) and no
downstream request completes after the caller's deadline. Work that goes on is
*orphaned*; its time past the deadline is orphan work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from probes.checks.findings import Finding, Judged, NotJudged, Outcome, aggregate
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.request import CallTree, HopEvidence, RequestEvidence
from probes.evidence.spans import Span
from probes.results import Check

__all__ = ["RULE", "Orphans", "Scope", "Timeout", "evaluate", "find_timeouts", "orphan_work",
           "scopes"]

RULE = ("on expiry every in-flight try is reset (§1.1); the next hop sees a downstream "
        "disconnect, 0 DC/DR (§1.6), and its context is cancelled (§6): all work below "
        "stops within the grace period")


@dataclass(frozen=True)
class Timeout:
    """A caller sidecar's 504 UT towards ``callee`` at ``deadline_us`` (or the probe leaving).

    ``call_span_id`` is the caller app's CLIENT span of the timed-out call: the parent-id of
    the traceparent in the outbound line, or the parent of the outbound sidecar span.
    """

    caller: str
    callee: str
    deadline_us: int
    line: str
    call_span_id: str | None = None
    how: str = "504 UT"


@dataclass(frozen=True)
class Scope:
    """The work that must stop by ``deadline_us``: the span subtree below one reset attempt,
    or (``spans`` None) every run of the hops below that started before the deadline."""

    deadline_us: int
    spans: frozenset[str] | None
    whole_request: bool = False

    def holds_span(self, span: Span) -> bool:
        if self.whole_request:
            return True
        if self.spans is None:
            return span.start_us < self.deadline_us
        return span.span_id in self.spans

    def holds_line(self, record: AccessLogRecord) -> bool:
        if self.whole_request:
            return True
        if self.spans is None:
            return (record.start_us or 0) < self.deadline_us
        return record.parent_id in self.spans


@dataclass
class Orphans:
    """Orphaned requests and orphan work time per hop (over all requests)."""

    requests: dict[str, int] = field(default_factory=dict)
    work_ms: dict[str, float] = field(default_factory=dict)

    def add(self, hop: str, work_ms: float) -> None:
        self.requests[hop] = self.requests.get(hop, 0) + 1
        self.work_ms[hop] = round(self.work_ms.get(hop, 0.0) + work_ms, 3)


def find_timeouts(ev: RequestEvidence, tree: CallTree,
                  client_timeout_ms: float | None = None) -> list[Timeout]:
    """The request's timeouts: the probe giving up (``client_timeout_ms``, when its request
    got no answer in time) and route/per-try timeouts in the callers' outbound lines or spans."""
    timeouts: list[Timeout] = []
    if client_timeout_ms is not None and ev.sent.status is None:
        timeouts.append(Timeout("probe", tree.entry,
                                ev.sent.started_us + int(client_timeout_ms * 1000), ""))
    for caller in tree.hops():
        evidence = ev.hop(caller)
        found = [Timeout(caller, r.upstream_service, r.end_us, r.line, r.parent_id,
                         _how(r.response_code, r.flags))
                 for r in evidence.logs_out
                 if _how(r.response_code, r.flags) and r.end_us and r.upstream_service]
        if not found:  # no access log: the outbound sidecar spans say the same
            for span in evidence.sidecar_out:
                flags = frozenset(str(span.attributes.get("response_flags", "")).split(","))
                code = _int(span.attributes.get("http.status_code"))
                how = _how(code, flags)
                if how and span.upstream_service:
                    found.append(Timeout(caller, span.upstream_service, span.end_us, "",
                                         span.parent_id, how))
        timeouts.extend(found)
    return timeouts


def _how(code: int | None, flags: frozenset[str]) -> str:
    """How a caller gave up on a call: its sidecar's timeout (504 UT, §1.1) or the caller app
    itself leaving on its own deadline (its outbound sidecar logs 0 DC/DR, §1.6)."""
    if code == 504 and "UT" in flags:
        return "504 UT"
    if code == 504 and "URX" in flags:
        # Per-try timeouts until the retries ran out: every attempt was reset (§1.2).
        return "504 URX (per-try timeouts)"
    if code == 0 and flags & {"DC", "DR"}:
        return "own deadline (0 DC)"
    return ""


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def scopes(ev: RequestEvidence, timeout: Timeout) -> list[Scope]:
    """What the timeout must stop: each reset attempt's span subtree, when spans show it."""
    if timeout.caller == "probe":
        return [Scope(timeout.deadline_us, None, whole_request=True)]
    outs = [o for o in ev.hop(timeout.caller).sidecar_out
            if o.upstream_service == timeout.callee
            and (timeout.call_span_id is None or o.parent_id == timeout.call_span_id)]
    found: list[Scope] = []
    for out in outs:
        attempts = [c for c in ev.children(out.span_id) if c.direction == "attempt"] or [out]
        # Each attempt ends when it was answered or reset (per-try timeout, §1.2).
        found.extend(Scope(min(a.end_us, timeout.deadline_us), ev.subtree(a.span_id))
                     for a in attempts)
    return found or [Scope(timeout.deadline_us, None)]


def _orphan_ms(start_us: int, end_us: int, deadline_us: int) -> float:
    return (end_us - max(start_us, deadline_us)) / 1000


_NO_TIMEOUT = "no caller gave up on this request"


def orphan_work(ev: RequestEvidence, tree: CallTree, grace_ms: float, orphans: Orphans,
                client_timeout_ms: float | None = None) -> Outcome:
    """Every hop under a timed-out call stops within ``grace_ms``; count what did not."""
    timeouts = find_timeouts(ev, tree, client_timeout_ms)
    if not timeouts:
        return NotJudged(_NO_TIMEOUT)
    judged = Judged()
    done: set[int] = set()
    seen: set[str] = set()  # hops found orphaned in any scope of this request
    for timeout in timeouts:
        gave_up = "timeout" if timeout.caller == "probe" else timeout.how
        for scope in scopes(ev, timeout):
            limit = scope.deadline_us + int(grace_ms * 1000)
            orphaned: set[str] = set()
            hops = [timeout.callee, *tree.below(timeout.callee)]
            for hop in hops:
                evidence = ev.hop(hop)
                if evidence.logs_in or evidence.logs_out:
                    judged.basis.add("sidecar")
                if evidence.app_server:
                    judged.basis.add("app")
                late = _late_work(ev, hop, scope, limit, done)
                if late is None:
                    continue
                orphaned.add(hop)
                orphans.add(hop, late[0])
                judged.findings.append(_blame(ev, tree, hop, timeout, gave_up, scope, limit,
                                              orphaned, late))
            # A call left open with no work seen below it (the callee's evidence ended in
            # time, or it has none): the open call itself is the orphan.
            seen |= orphaned
            for hop in hops:
                if hop in seen or seen & set(tree.below(hop)):
                    continue
                late = _open_call(ev.hop(hop), scope, limit, done)
                if late is not None:
                    orphaned.add(hop)
                    seen.add(hop)
                    orphans.add(hop, late[0])
                    judged.findings.append(_blame(ev, tree, hop, timeout, gave_up, scope,
                                                  limit, orphaned, late))
    if not judged.basis:
        return NotJudged(f"{', '.join(sorted({t.callee for t in timeouts}))}: no evidence "
                         "below the timed-out call")
    return judged


def _blame(ev: RequestEvidence, tree: CallTree, hop: str, timeout: Timeout, gave_up: str,
           scope: Scope, limit: int, orphaned: set[str],
           late: tuple[float, str, tuple[str, ...], bool]) -> Finding:
    """Who let the work run on: the hop itself when it was told (its caller's request to it
    ended in time, or it kept its own call open), else the caller that did not cancel."""
    parent = tree.caller(hop)
    told = late[3] or hop == timeout.callee or _disconnected_by(ev, hop, scope, limit)
    blame = hop if told or parent in orphaned else parent
    how = f"{hop} went on {late[0]:.0f} ms after {timeout.caller}'s {gave_up} ({late[1]})"
    if late[3]:
        callee = late[1].split(" ", 4)[3]
        how = (f"{hop} did not cancel its call to {callee}: {late[1]} {late[0]:.0f} ms after "
               f"{timeout.caller}'s {gave_up}")
    elif blame is not None and blame != hop:
        stopped = "stopped but " if ev.hop(blame).app_server else ""
        how += f": {blame} {stopped}did not cancel its call to {hop}"
    return Finding(blame, how, (ev.sent.trace_id,), (timeout.line, *late[2]))


def _disconnected_by(ev: RequestEvidence, hop: str, scope: Scope, limit_us: int) -> bool:
    return any(r.downstream_disconnected and r.end_us is not None and r.end_us <= limit_us
               and scope.holds_line(r) for r in ev.hop(hop).logs_in)


def _late_work(ev: RequestEvidence, hop: str, scope: Scope, limit_us: int,
               judged: set[int]) -> tuple[float, str, tuple[str, ...], bool] | None:
    """Orphan ms, what showed it, the lines, and whether the hop itself kept the work
    going — or None when the hop stopped in time."""
    evidence = ev.hop(hop)
    runs = [s for s in evidence.app_server if scope.holds_span(s)]
    for span in runs:
        if span.end_us > limit_us and id(span) not in judged:
            judged.add(id(span))
            return (_orphan_ms(span.start_us, span.end_us, scope.deadline_us),
                    "app span ended late" + (" (cancelled)" if span.cancelled else ""), (),
                    False)
    if not runs:
        for record in evidence.logs_in:
            end = record.end_us
            if end and end > limit_us and not record.downstream_disconnected \
                    and scope.holds_line(record) and id(record) not in judged:
                judged.add(id(record))
                return (_orphan_ms(record.start_us or end, end, scope.deadline_us),
                        f"request completed {record.response_code}", (record.line,), False)
    # The app's own spans say when its work ended: a line ending later is bytes a delay
    # fault still holds (§5.2), not work.
    return None


def _open_call(evidence: HopEvidence, scope: Scope, limit_us: int,
               judged: set[int]) -> tuple[float, str, tuple[str, ...], bool] | None:
    """A call the hop still had open after its own request ended and the grace ran out:
    the callee keeps working for a caller that is gone."""
    if not _caller_left(evidence, limit_us):
        return None
    for call in evidence.logs_out:
        end = call.end_us
        if end and end > limit_us and (call.start_us or 0) < limit_us \
                and scope.holds_line(call) and id(call) not in judged:
            judged.add(id(call))
            return (_orphan_ms(call.start_us or end, end, scope.deadline_us),
                    f"its call to {call.upstream_service} stayed open and ended "
                    f"{call.response_code} {','.join(sorted(call.flags)) or '-'}",
                    (call.line,), True)
    return None


def _caller_left(evidence: HopEvidence, limit_us: int) -> bool:
    """The hop's own inbound request ended (its caller left, or it answered) in time: after
    that no call of its may still be open."""
    return any(r.end_us is not None and r.end_us <= limit_us for r in evidence.logs_in)


def evaluate(evidence: Sequence[RequestEvidence], tree: CallTree, grace_ms: float = 100.0,
             client_timeout_ms: float | None = None) -> tuple[list[Check], Orphans]:
    """The orphan-work check over every request that timed out.

    Requests where no caller gave up are not judged; when none did, the check is
    ``not judged`` (there was nothing to cancel), never "held".
    """
    orphans = Orphans()
    outcomes = [orphan_work(ev, tree, grace_ms, orphans, client_timeout_ms) for ev in evidence]
    if all(isinstance(o, NotJudged) and o.reason == _NO_TIMEOUT for o in outcomes):
        statuses = sorted({str(ev.sent.status) for ev in evidence})
        outcomes = [NotJudged(f"none of {len(evidence)} requests timed out (no 504 UT and no "
                              f"caller giving up, 0 DC, at any caller sidecar; statuses "
                              f"{statuses}): make the chain slow (delay fault, slow "
                              "path/headers)")]
    check = aggregate("orphan-work", RULE, f"every hop below a timeout stops within "
                      f"{grace_ms:g} ms", outcomes)
    return [check], orphans
