"""Rules on the calls toward one service, as the callers' outbound sidecars logged them.

Both read only access-log lines, so they judge any mesh whatever its apps are written in:

- :func:`count_flagged` counts a request's outbound lines toward a service that carry a
  response flag (``FI``: a VirtualService abort answered the call in the caller's sidecar;
  ``DI``: it was delayed; ``UH``: no healthy upstream, …; docs/fidelity.md §2.3, §2.4). It is
  the evidence that a fault on that route was *felt*, taken from the proxies rather than from
  what the apps say.
- :func:`fallback_answered` judges the hops whose calls toward the service failed: each must
  still answer its own caller with a 2xx (its fallback) within the budget its inbound
  sidecar announced (``x-envoy-expected-rq-timeout-ms``, §1.5). A hop that answers 5xx let a
  side call fail its whole request.
- :func:`aborted_not_served` judges the service itself: a call its caller's fault filter
  answered (``FI``) never reached it (§2.4), so the service's inbound lines for a request
  can be no more than the calls toward it that were really sent. More is work done for
  callers that had already been answered ``503``: orphan work, as a response-side abort
  (one that lets the request through and replaces the answer) leaves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from probes.checks.calls import failed, held_by_fault_filter, reached_upstream, sidecar_runs
from probes.checks.findings import Finding, Judged, NotJudged, Outcome, aggregate
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.request import RequestEvidence
from probes.results import Check, Evidence

__all__ = ["FALLBACK_RULE", "NOT_SERVED_RULE", "FlagCount", "aborted_not_served",
           "count_flagged", "fallback_answered", "fallback_check", "flagged_check",
           "not_served_check", "toward"]

FALLBACK_RULE = ("a caller whose call to a side service failed answers its own caller with "
                 "its fallback (2xx) within the budget it was given (docs/fidelity.md §1.5, "
                 "§2.4)")
NOT_SERVED_RULE = ("a call the caller's fault filter aborted never reaches the service: Envoy "
                   "answers it before the router (docs/fidelity.md §2.4), so the service does "
                   "no work for it")
_SAMPLE_LINES = 5


def toward(ev: RequestEvidence, service: str, caller: str = "") -> list[AccessLogRecord]:
    """The request's outbound lines whose upstream is ``service`` (from ``caller``'s pods
    only, when named), in start order."""
    lines = [r for hop in ev.hops.values() for r in hop.logs_out
             if r.upstream_service == service and (not caller or r.hop == caller)]
    return sorted(lines, key=lambda r: r.start_us or 0)


@dataclass(frozen=True)
class FlagCount:
    """How many outbound lines toward a service carried one of the flags, over requests."""

    service: str
    flags: frozenset[str]
    lines: int = 0
    flagged: int = 0
    requests: int = 0  # requests with at least one line toward the service
    flagged_requests: int = 0
    callers: dict[str, int] = field(default_factory=dict)  # hop -> flagged lines
    outcomes: dict[str, int] = field(default_factory=dict)  # "503 FI" -> lines
    samples: tuple[str, ...] = ()  # a few flagged lines, as logged

    @property
    def ratio(self) -> float:
        return self.flagged / self.lines if self.lines else 0.0

    def as_json(self) -> dict[str, object]:
        return {"service": self.service, "flags": sorted(self.flags), "lines": self.lines,
                "flagged": self.flagged, "ratio": round(self.ratio, 3),
                "requests": self.requests, "flagged_requests": self.flagged_requests,
                "callers": dict(self.callers), "outcomes": dict(self.outcomes)}


def _outcome(record: AccessLogRecord) -> str:
    """``503 FI``, ``0 DC``, or the bare status when the line has no flag."""
    code = str(record.response_code) if record.response_code is not None else "-"
    return f"{code} {','.join(sorted(record.flags))}" if record.flags else code


def count_flagged(evidence: Iterable[RequestEvidence], service: str,
                  flags: Iterable[str], caller: str = "") -> FlagCount:
    """Count the outbound lines toward ``service`` carrying any of ``flags``."""
    wanted = frozenset(flags)
    lines = flagged = requests = flagged_requests = 0
    callers: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    samples: list[str] = []
    for ev in evidence:
        records = toward(ev, service, caller)
        hits = [r for r in records if r.flags & wanted]
        lines += len(records)
        flagged += len(hits)
        requests += bool(records)
        flagged_requests += bool(hits)
        outcomes.update(_outcome(r) for r in records)
        callers.update(r.hop for r in hits)
        samples.extend(r.line for r in hits[:1])
    return FlagCount(service, wanted, lines, flagged, requests, flagged_requests,
                     dict(callers), dict(outcomes), tuple(samples[:_SAMPLE_LINES]))


def flagged_check(count: FlagCount, min_ratio: float, min_lines: int = 1,
                  caller: str = "") -> Check:
    """``calls-flagged``: at least ``min_lines`` flagged lines, making at least
    ``min_ratio`` of the lines toward the service."""
    flags = "/".join(sorted(count.flags))
    source = f"{caller}'s" if caller else "the callers'"
    expected = (f"at least {min_lines} of {source} outbound lines to {count.service} flagged "
                f"{flags}, at least {min_ratio:.0%} of them")
    if not count.lines:
        observed = (f"no outbound line to {count.service} in any request: nobody called it "
                    "(or the access log does not show it)")
        return Check("calls-flagged", False, expected, observed, hop=caller or None,
                     rule=_FLAG_RULE, status="not judged",
                     counts={"evaluated": 0, "held": 0, "failed": 0, "not_judged": 1},
                     basis=("sidecar",))
    passed = count.flagged >= min_lines and count.ratio >= min_ratio
    mix = ", ".join(f"{n} x {o}" for o, n in sorted(count.outcomes.items()))
    observed = (f"{count.flagged}/{count.lines} outbound lines to {count.service} flagged "
                f"{flags} ({count.ratio:.0%}; {count.flagged_requests}/{count.requests} "
                f"requests): {mix}")
    return Check("calls-flagged", passed, expected, observed, hop=caller or None,
                 rule=_FLAG_RULE, evidence=Evidence((), count.samples),
                 counts={"evaluated": count.requests, "held": count.flagged_requests,
                         "failed": count.requests - count.flagged_requests,
                         "not_judged": 0},
                 basis=("sidecar",))


_FLAG_RULE = ("a fault on a route shows in the caller's outbound access-log line toward the "
              "service: FI for an abort, DI for a delay (docs/fidelity.md §2.3, §2.4)")


def fallback_answered(ev: RequestEvidence, service: str,
                      tolerance_ms: float = 10.0) -> Outcome:
    """Every run of a hop in which all its calls to ``service`` failed answered 2xx within
    its inbound budget (when the budget is known)."""
    findings: list[Finding] = []
    skipped: list[str] = []
    judged = False
    for name, hop in ev.hops.items():
        if not any(r.upstream_service == service for r in hop.logs_out):
            continue
        for run in sidecar_runs(hop):
            side = [c for c in run.calls if c.upstream_service == service]
            if not side or not all(failed(c) for c in side):
                continue
            judged = True
            finding = _judge_run(name, run.inbound, side, service, tolerance_ms)
            if finding is not None:
                findings.append(Finding(name, finding, (ev.sent.trace_id,),
                                        (run.inbound.line, *(c.line for c in side))))
            if run.budget_ms is None:
                skipped.append(f"{name}: its inbound line shows no budget (latency unjudged)")
    if not judged:
        return NotJudged(f"no call to {service} failed in this request")
    return Judged(findings, {"sidecar"}, skipped)


def _judge_run(hop: str, inbound: AccessLogRecord, side: Sequence[AccessLogRecord],
               service: str, tolerance_ms: float) -> str | None:
    code = inbound.response_code
    failures = ", ".join(_outcome(c) for c in side)
    if code is None or not 200 <= code < 300 or failed(inbound):  # failed: a gRPC error's 200
        return (f"{hop} answered {_outcome(inbound)} after its call to {service} failed "
                f"({failures}): the side call's failure failed the whole request instead of "
                "a fallback")
    budget, took = inbound.budget_ms, inbound.duration_ms
    if budget is not None and took is not None and took > budget + tolerance_ms:
        return (f"{hop} answered {code} with its fallback after {took} ms, beyond the "
                f"{budget} ms it was given, once its call to {service} failed ({failures})")
    return None


def fallback_check(evidence: Sequence[RequestEvidence], service: str,
                   tolerance_ms: float = 10.0) -> Check:
    """``side-call-fallback`` over every request."""
    return aggregate("side-call-fallback", FALLBACK_RULE,
                     f"every hop whose calls to {service} failed answers 2xx within its budget",
                     [fallback_answered(ev, service, tolerance_ms) for ev in evidence])


def aborted_not_served(ev: RequestEvidence, service: str) -> Outcome:
    """``service`` logged no more inbound requests than the calls toward it that were sent."""
    calls = toward(ev, service)
    aborted = [c for c in calls if held_by_fault_filter(c)]
    if not aborted:
        return NotJudged(f"no call to {service} was aborted by its caller's sidecar in this "
                         "request")
    sent = [c for c in calls if reached_upstream(c)]
    served = ev.hop(service).logs_in
    findings: list[Finding] = []
    if len(served) > len(sent):
        findings.append(Finding(
            service, f"{service} logged {len(served)} inbound request(s) for {len(aborted)} "
                     f"call(s) its callers' sidecars aborted ({_outcome(aborted[0])}) and "
                     f"{len(sent)} sent: it worked for callers already answered",
            (ev.sent.trace_id,), tuple(r.line for r in (*aborted, *served))))
    return Judged(findings, {"sidecar"})


def not_served_check(evidence: Sequence[RequestEvidence], service: str) -> Check:
    """``aborted-call-not-served`` over every request."""
    return aggregate("aborted-call-not-served", NOT_SERVED_RULE,
                     f"no inbound request at {service} for a call its caller's sidecar aborted",
                     [aborted_not_served(ev, service) for ev in evidence])
