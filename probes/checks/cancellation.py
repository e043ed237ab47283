"""Orphan-work rules (mesh-semantics.md §1.1, §1.6, §6).

When a caller's sidecar times out (``504 UT``), Envoy resets the upstream stream; the
callee's inbound sidecar logs ``0 DC``/``0 DR`` and the callee app sees its caller gone.
Everything below must stop within ``grace_ms``: its app span ends (cancelled) and no
downstream request completes after the caller's deadline. Work that goes on is
*orphaned*; its time past the deadline is orphan work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from probes.checks.findings import Finding, aggregate
from probes.errors import EvidenceError
from probes.evidence.request import CallTree, RequestEvidence
from probes.results import Check

__all__ = ["RULE", "Orphans", "Timeout", "evaluate", "find_timeouts", "orphan_work"]

RULE = ("on expiry every in-flight try is reset (§1.1); the next hop sees a downstream "
        "disconnect, 0 DC/DR (§1.6), and its context is cancelled (§6): all work below "
        "stops within the grace period")


@dataclass(frozen=True)
class Timeout:
    """A caller sidecar's 504 UT towards ``callee``, at ``deadline_us``."""

    caller: str
    callee: str
    deadline_us: int
    line: str


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
        for record in evidence.logs_out:
            if record.response_code == 504 and "UT" in record.flags and record.end_us \
                    and record.upstream_service:
                timeouts.append(Timeout(caller, record.upstream_service, record.end_us,
                                        record.line))
        if timeouts and timeouts[-1].caller == caller:
            continue
        for span in evidence.sidecar_out:
            flags = str(span.attributes.get("response_flags", ""))
            if "UT" in flags.split(",") and span.upstream_service:
                timeouts.append(Timeout(caller, span.upstream_service, span.end_us, ""))
    return timeouts


def _orphan_ms(start_us: int, end_us: int, deadline_us: int) -> float:
    return (end_us - max(start_us, deadline_us)) / 1000


def orphan_work(ev: RequestEvidence, tree: CallTree, grace_ms: float, orphans: Orphans,
                client_timeout_ms: float | None = None) -> list[Finding]:
    """Every hop under a timed-out call stops within ``grace_ms``; count what did not."""
    findings: list[Finding] = []
    judged: set[str] = set()
    for timeout in find_timeouts(ev, tree, client_timeout_ms):
        limit = timeout.deadline_us + int(grace_ms * 1000)
        orphaned: set[str] = set()
        for hop in [timeout.callee, *tree.below(timeout.callee)]:
            if hop in judged:
                continue
            judged.add(hop)
            late = _late_work(ev, hop, timeout.deadline_us, limit)
            if late is None:
                continue
            orphaned.add(hop)
            orphans.add(hop, late[0])
            parent = tree.caller(hop)
            # A disconnect at the hop's inbound sidecar in time means its caller did cancel:
            # the hop itself ignored it. Otherwise the caller left its call running.
            told = hop == timeout.callee or _disconnected_by(ev, hop, limit)
            blame = hop if told or parent in orphaned else parent
            gave_up = "timeout" if timeout.caller == "probe" else "504 UT"
            how = (f"{hop} went on {late[0]:.0f} ms after {timeout.caller}'s {gave_up} "
                   f"({late[1]})")
            if blame != hop:
                how += f": {blame} stopped but did not cancel its call to {hop}"
            findings.append(Finding(blame, how, (ev.sent.trace_id,),
                                    (timeout.line, *late[2])))
    return findings


def _disconnected_by(ev: RequestEvidence, hop: str, limit_us: int) -> bool:
    return any(r.downstream_disconnected and r.end_us is not None and r.end_us <= limit_us
               for r in ev.hop(hop).logs_in)


def _late_work(ev: RequestEvidence, hop: str, deadline_us: int,
               limit_us: int) -> tuple[float, str, tuple[str, ...]] | None:
    """Orphan ms, what showed it, and the lines — or None when the hop stopped in time."""
    evidence = ev.hop(hop)
    for record in evidence.logs_in:
        end = record.end_us
        if end and end > limit_us and not record.downstream_disconnected:
            return (_orphan_ms(record.start_us or end, end, deadline_us),
                    f"request completed {record.response_code}", (record.line,))
    for span in evidence.app_server:
        if span.end_us > limit_us:
            return (_orphan_ms(span.start_us, span.end_us, deadline_us),
                    "app span ended late" + (" (cancelled)" if span.cancelled else ""), ())
    return None


def evaluate(evidence: Sequence[RequestEvidence], tree: CallTree, grace_ms: float = 100.0,
             client_timeout_ms: float | None = None) -> tuple[list[Check], Orphans]:
    """Orphan-work check over every request that timed out; raises if none did."""
    timed_out = [ev for ev in evidence if find_timeouts(ev, tree, client_timeout_ms)]
    if not timed_out:
        statuses = sorted({str(ev.sent.status) for ev in evidence})
        raise EvidenceError(f"could not measure cancellation: none of {len(evidence)} requests "
                            f"timed out (no 504 UT at any caller sidecar; statuses {statuses}); "
                            "make the chain slow (delay fault, slow path/headers)")
    orphans = Orphans()
    findings = [orphan_work(ev, tree, grace_ms, orphans, client_timeout_ms) for ev in timed_out]
    check = aggregate("orphan-work", RULE, f"every hop below a timeout stops within "
                      f"{grace_ms:g} ms", findings)
    return [check], orphans
