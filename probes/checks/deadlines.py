"""Deadline-propagation rules (docs/fidelity.md §1.4, §1.5, §1.7, §2.1, §6).

A hop's budget is what it was given: the app SERVER span's ``meshchaos.budget_ms``
(the chain's telemetry contract), else ``x-envoy-expected-rq-timeout-ms`` in its
inbound access-log line. Its deadline is its start plus that budget. What a caller
has left when it calls is its deadline minus the call's start (the app CLIENT span's
start: the app computes the header after starting that span, so a correct app is
never above it; ``tolerance_ms`` absorbs integer-ms rounding only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from probes.checks.calls import failed, reached_upstream, sidecar_runs
from probes.checks.findings import Finding, Judged, NotJudged, Outcome, aggregate
from probes.evidence.accesslog import AccessLogRecord
from probes.evidence.request import CallTree, HopEvidence, RequestEvidence
from probes.evidence.routes import Route
from probes.evidence.spans import Span
from probes.results import Check

__all__ = [
    "CLUSTER_SWITCH",
    "CORE",
    "LOCAL_SWITCH",
    "RULES",
    "Invocation",
    "audit_routes",
    "budget",
    "budget_within_caller_remaining",
    "deadline_propagated",
    "evaluate",
    "evaluate_routes",
    "invocations",
    "no_app_retries",
    "no_call_after_deadline",
    "observed_budgets",
    "sent_timeout_within_remaining",
    "stale_beyond_transit",
    "timeout_headers_stripped",
]

LOCAL_SWITCH = ("ConfigMap istio-system/istio annotation "
                'meshchaos.io/honor-app-envoy-headers: "true"')
CLUSTER_SWITCH = ("istiod PILOT_SIDECAR_USE_REMOTE_ADDRESS=true with internal networks "
                  "configured (meshNetworks fromCidr / ENABLE_HCM_INTERNAL_NETWORKS)")

RULES = {
    "budget-within-remaining": "a hop's budget never exceeds what its caller had left: the "
                               "router sets expected = min(expected, global - elapsed) (§1.5); "
                               "deadlines shrink per hop (§6 gRPC contrast)",
    "sent-within-remaining": "the timeout an app sends (x-envoy-upstream-rq-timeout-ms, §1.4) "
                             "is at most its own remaining budget",
    "no-call-after-deadline": "no outbound call starts after the caller's own deadline",
    "deadline-propagated": "a hop that received a budget passes what is left to every call "
                           "(x-envoy-upstream-rq-timeout-ms, §1.4; shrinking deadlines, §6)",
    "retry-amplification": "retries belong to the mesh (§2.2: 2 by default); an app that also "
                           "retries multiplies attempts, (1+app) x (1+mesh) per call",
    "headers-stripped": "external requests lose x-envoy-expected-rq-timeout-ms and "
                        "x-envoy-upstream-rq-timeout-ms (§1.7 cleanInternalHeaders)",
    "timeout-inversion": "a callee's route timeout is shorter than its caller's (§2.1: the "
                         "VS timeout acts in the client sidecar)",
    "retries-fit-timeout": "the global timeout bounds all tries (§1.2): (1+attempts) x "
                           "perTryTimeout must fit the route timeout",
    "per-try-retried": "a per-try timeout is retried only with 5xx, gateway-error or reset in "
                       "retryOn (§1.2)",
}


@dataclass(frozen=True)
class Invocation:
    """One run of a hop's app (a hop runs once per upstream attempt that reaches it)."""

    server: Span | None
    budget_ms: float | None
    start_us: int
    calls: tuple[Span, ...]

    @property
    def deadline_us(self) -> int | None:
        return None if self.budget_ms is None else self.start_us + int(self.budget_ms * 1000)

    def left_ms(self, at_us: int) -> float:
        assert self.budget_ms is not None
        return self.budget_ms - (at_us - self.start_us) / 1000


def invocations(hop: HopEvidence) -> tuple[Invocation, ...]:
    """Each app SERVER span of the hop with its budget and its own CLIENT calls (cached)."""
    if hop.budget_memo is None:
        hop.budget_memo = _invocations(hop)  # every rule asks, several times per hop
    return hop.budget_memo


def _log_budget(hop: HopEvidence) -> tuple[float, int] | None:
    for record in hop.logs_in:
        if record.budget_ms is not None and record.start_us is not None:
            return float(record.budget_ms), record.start_us
    return None


def _invocations(hop: HopEvidence) -> tuple[Invocation, ...]:
    # Access-log budgets cannot be paired with one of several runs: use them only when the
    # hop ran once (or left no app span at all).
    logged = _log_budget(hop) if len(hop.app_server) <= 1 else None
    if not hop.app_server:
        return (Invocation(None, logged[0], logged[1], ()),) if logged else ()
    runs = []
    for server in hop.app_server:
        value = server.attributes.get("meshchaos.budget_ms")
        given = float(value) if value is not None else (logged[0] if logged else None)
        calls = tuple(c for c in hop.app_client if c.parent_id == server.span_id)
        runs.append(Invocation(server, given, server.start_us, calls))
    return tuple(runs)


def budget(hop: HopEvidence) -> tuple[float, int] | None:
    """``(budget_ms, start_us)`` of the hop's first run that was given a budget."""
    for run in invocations(hop):
        if run.budget_ms is not None:
            return run.budget_ms, run.start_us
    return None


def _callee(call: Span) -> str:
    """The service a CLIENT span called (``GET inventory`` → ``inventory``)."""
    peer = call.attributes.get("server.address") or call.attributes.get("peer.service")
    if peer:
        return str(peer).split(".", 1)[0].split(":", 1)[0]
    return call.name.rsplit(" ", 1)[-1].split(".", 1)[0].split(":", 1)[0]


def _tree_callers(tree: CallTree) -> set[str]:
    return {caller for caller, _ in tree.edges()}


def _route_of(routes: Mapping[str, Route], callee: str | None) -> Route | None:
    return routes.get(callee or "")


def _route_note(route: Route | None, sent_ms: int) -> str:
    if route is None:
        return ""
    if sent_ms in (route.timeout_ms, route.per_try_timeout_ms):
        return (f" (= the route timeout of {route.virtual_service}: the app sent no budget "
                "of its own, or one no shorter)")
    return ""


# The sidecars' view starts a hop's clock when its inbound sidecar got the request; the app
# starts its own when it reads it, after the inbound sidecar forwarded it. No field of the
# default log format shows that gap (docs/fidelity.md §2.3): it is a few ms, and on a loaded
# 2-core box it reached 18 ms. A correct hop's budget is stale by that gap only; a
# hop that forwards its budget unchanged (or counts from a clock started long before) is
# stale by most of the time it spent. So a budget is stale when it is more than the slack
# and more than half the hop's elapsed time beyond what was left.
SIDECAR_SLACK_MS = 6.0
STALE_SHARE = 0.5


def stale_beyond_transit(sent_ms: float, left_ms: float, elapsed_ms: float,
                         tolerance_ms: float) -> bool:
    """Whether a budget is staler than the inbound sidecar-to-app gap can explain."""
    stale = sent_ms - left_ms
    return stale > tolerance_ms + max(SIDECAR_SLACK_MS, STALE_SHARE * elapsed_ms)


def _sidecar_budget_findings(ev: RequestEvidence, tree: CallTree, tolerance_ms: float,
                             routes: Mapping[str, Route], judged: Judged) -> None:
    """Sidecar view of budget-within-remaining: each call's budget vs what was left."""
    for hop in tree.hops():
        for run in sidecar_runs(ev.hop(hop)):
            if run.budget_ms is None:
                continue
            for call in run.calls:
                sent = call.budget_ms
                if sent is None or call.start_us is None:
                    continue
                judged.basis.add("sidecar")
                left = run.left_ms(call.start_us)
                spent = (call.start_us - run.start_us) / 1000
                if stale_beyond_transit(sent, left, spent, tolerance_ms):
                    judged.findings.append(Finding(
                        hop, f"{hop} gave {call.upstream_service} a budget of {sent} ms "
                        f"{spent:.0f} ms after it was given {run.budget_ms} ms: only "
                        f"{left:.0f} ms were left (stale by {sent - left:.0f} ms)"
                        f"{_route_note(_route_of(routes, call.upstream_service), sent)}",
                        (ev.sent.trace_id,), (run.inbound.line, call.line)))
                    return


def _app_budget_findings(ev: RequestEvidence, tree: CallTree, tolerance_ms: float,
                         judged: Judged) -> None:
    """App view: callee SERVER span budget vs its caller's run's remaining budget."""
    for caller, callee in tree.edges():
        runs = {r.server.span_id: r for r in invocations(ev.hop(caller))
                if r.server is not None and r.budget_ms is not None}
        for run in invocations(ev.hop(callee)):
            if run.server is None or run.budget_ms is None:
                continue
            call = ev.nearest_app_ancestor(run.server)
            parent = runs.get(call.parent_id or "") if call is not None else None
            if call is None or parent is None or call.kind != "client":
                continue
            judged.basis.add("app")
            left = parent.left_ms(call.start_us)
            if run.budget_ms > left + tolerance_ms:
                judged.findings.append(Finding(
                    caller, f"{callee} was given {run.budget_ms:.0f} ms but {caller} had "
                    f"{left:.0f} ms left", (ev.sent.trace_id,),
                    tuple(ev.log_lines(caller, callee))))
                return


def _no_budget_anywhere(ev: RequestEvidence) -> bool:
    return not any(r.budget_ms is not None for h in ev.hops.values()
                   for r in (*h.logs_in, *h.logs_out)) and \
        not any(budget(h) is not None for h in ev.hops.values())


_NO_BUDGET = NotJudged("no hop received a budget (no x-envoy-expected-rq-timeout-ms in any "
                       "inbound line, no app span with meshchaos.budget_ms): give the entry "
                       "route a VirtualService timeout, and keep the headers (the switch in "
                       "headers-stripped)")


def _skipped_callers(ev: RequestEvidence, tree: CallTree) -> list[str]:
    """Hops the tree says call others, that got a budget but showed no call at all."""
    out = []
    for hop in sorted(_tree_callers(tree)):
        runs = sidecar_runs(ev.hop(hop))
        if any(r.budget_ms is not None for r in runs) and not any(r.calls for r in runs) \
                and not any(i.calls for i in invocations(ev.hop(hop))):
            out.append(f"{hop}: no outbound requests seen")
    return out


def budget_within_caller_remaining(ev: RequestEvidence, tree: CallTree,
                                   tolerance_ms: float = 2.0,
                                   routes: Mapping[str, Route] | None = None) -> Outcome:
    """A callee's budget <= what its caller had left when it made that call: read from the
    sidecars (inbound budget vs each outbound call's budget) and from app spans."""
    if _no_budget_anywhere(ev):
        return _NO_BUDGET
    judged = Judged(skipped=_skipped_callers(ev, tree))
    _sidecar_budget_findings(ev, tree, tolerance_ms, routes or {}, judged)
    if not judged.findings:
        _app_budget_findings(ev, tree, tolerance_ms, judged)
    if not judged.basis:
        return NotJudged("no hop that was given a budget made a call with one (no outbound "
                         "line with x-envoy-expected-rq-timeout-ms, no app CLIENT span)")
    return judged


def sent_timeout_within_remaining(ev: RequestEvidence, tree: CallTree,
                                  tolerance_ms: float = 2.0) -> Outcome:
    """Each app CLIENT span's ``meshchaos.timeout_sent_ms`` <= its run's remaining budget
    (app evidence only: the sidecars log the budget they set, not the app's header)."""
    judged = Judged()
    for hop in tree.hops():
        for run in invocations(ev.hop(hop)):
            if run.budget_ms is None:
                continue
            for call in run.calls:
                sent = call.attributes.get("meshchaos.timeout_sent_ms")
                if sent is None:
                    continue
                judged.basis.add("app")
                left = run.left_ms(call.start_us)
                if float(sent) > left + tolerance_ms:
                    judged.findings.append(Finding(
                        hop, f"{hop} sent {float(sent):.0f} ms to {_callee(call)} with "
                        f"{left:.0f} ms left", (ev.sent.trace_id,)))
                    return judged
    if not judged.basis:
        return NotJudged("no app CLIENT span reports the timeout it sent "
                         "(meshchaos.timeout_sent_ms): the apps export no such spans")
    return judged


def no_call_after_deadline(ev: RequestEvidence, tree: CallTree,
                           tolerance_ms: float = 2.0) -> Outcome:
    """No call of a run starts after that run's own deadline (sidecar lines, app spans)."""
    if _no_budget_anywhere(ev):
        return _NO_BUDGET
    judged = Judged()
    for hop in tree.hops():
        for srun in sidecar_runs(ev.hop(hop)):
            deadline = srun.deadline_us
            if deadline is None or not srun.calls:
                continue
            judged.basis.add("sidecar")
            late = [c for c in srun.calls if (c.start_us or 0) > deadline + tolerance_ms * 1000]
            if late:
                over = ((late[0].start_us or 0) - deadline) / 1000
                judged.findings.append(Finding(
                    hop, f"{hop} called {late[0].upstream_service} {over:.0f} ms after its own "
                    "deadline", (ev.sent.trace_id,), (srun.inbound.line, late[0].line)))
                return judged
        for run in invocations(ev.hop(hop)):
            deadline = run.deadline_us
            if deadline is None or not run.calls:
                continue
            judged.basis.add("app")
            late_spans = [c for c in run.calls if c.start_us > deadline + tolerance_ms * 1000]
            if late_spans:
                over = (late_spans[0].start_us - deadline) / 1000
                judged.findings.append(Finding(
                    hop, f"{hop} called {late_spans[0].name!r} {over:.0f} ms after its own "
                    "deadline", (ev.sent.trace_id,)))
                return judged
    if not judged.basis:
        return NotJudged("no hop that was given a budget made any call")
    return judged


def deadline_propagated(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """A hop given a budget passes one on with every call: its outbound sidecar line carries
    x-envoy-expected-rq-timeout-ms (the app's header, or the route's own timeout), or its
    app CLIENT span reports the timeout it sent."""
    if _no_budget_anywhere(ev):
        return _NO_BUDGET
    judged = Judged(skipped=_skipped_callers(ev, tree))
    for hop in tree.hops():
        for srun in sidecar_runs(ev.hop(hop)):
            if srun.budget_ms is None:
                continue
            for call in srun.calls:
                if "expected_rq_timeout_ms" not in call.fields or not reached_upstream(call):
                    continue  # no budget field in the format, or no callee got the call
                judged.basis.add("sidecar")
                if call.expected_rq_timeout_ms is None:
                    judged.findings.append(Finding(
                        hop, f"{hop} was given a budget of {srun.budget_ms} ms but its call to "
                        f"{call.upstream_service} carried none (no x-envoy-upstream-rq-timeout-"
                        "ms from the app, no route timeout)", (ev.sent.trace_id,),
                        (srun.inbound.line, call.line)))
                    return judged
        for run in invocations(ev.hop(hop)):
            if run.budget_ms is None:
                continue
            for span in run.calls:
                judged.basis.add("app")
                if span.attributes.get("meshchaos.timeout_sent_ms") is None:
                    judged.findings.append(Finding(
                        hop, f"{hop} received a budget of {run.budget_ms:.0f} ms but sent no "
                        f"timeout on its call {span.name!r}", (ev.sent.trace_id,),
                        tuple(ev.log_lines(hop))))
                    return judged
    if not judged.basis:
        return NotJudged("no hop that was given a budget made any call")
    return judged


def _app_retry_findings(ev: RequestEvidence, tree: CallTree, judged: Judged) -> None:
    for hop in tree.hops():
        spans = ev.hop(hop).app_client
        if spans:
            judged.basis.add("app")
        retries = [s for s in spans if int(s.attributes.get("meshchaos.attempt", 1) or 1) > 1]
        if retries:
            most = max(int(s.attributes.get("meshchaos.attempt", 1)) for s in retries)
            judged.findings.append(Finding(
                hop, f"{hop} retried {retries[0].name!r} itself ({most} attempts) on top of "
                "the mesh's retries", (ev.sent.trace_id,)))
            return


def _sidecar_retry_findings(ev: RequestEvidence, tree: CallTree, judged: Judged) -> set[str]:
    """A second outbound request to the same service and path, made after the first one
    failed, under the same inbound request: the app retried (the mesh's own retries are
    attempts inside one outbound request, one line with x-envoy-attempt-count).

    Returns the hops that repeated a call after one whose outcome the line cannot tell: a
    gRPC error is a 200 with grpc-status in its trailers, invisible to a format without
    ``%GRPC_STATUS%`` (docs/fidelity.md §1.9)."""
    unknown: set[str] = set()
    for hop in tree.hops():
        for srun in sidecar_runs(ev.hop(hop)):
            if srun.calls:
                judged.basis.add("sidecar")
            for index, call in enumerate(srun.calls):
                before = [c for c in srun.calls[:index]
                          if c.upstream_service == call.upstream_service
                          and c.fields.get("path") == call.fields.get("path")
                          and (c.end_us or 0) <= (call.start_us or 0) + 2000]
                if any(_grpc_outcome_unknown(c) for c in before):
                    unknown.add(hop)
                earlier = [c for c in before if failed(c)]
                if earlier:
                    first = earlier[-1]
                    gap = ((call.start_us or 0) - (first.end_us or 0)) / 1000
                    flags = ",".join(sorted(first.flags)) or "-"
                    judged.findings.append(Finding(
                        hop, f"{hop} called {call.upstream_service} again itself {gap:.0f} ms "
                        f"after a {first.response_code} {flags} (same x-request-id): an "
                        "app-level retry on top of the mesh's", (ev.sent.trace_id,),
                        (first.line, call.line)))
                    return unknown
    return unknown


def _grpc_outcome_unknown(call: AccessLogRecord) -> bool:
    return (call.fields.get("protocol") == "HTTP/2" and "grpc_status" not in call.fields
            and not failed(call))


def no_app_retries(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """No hop retries a failed call itself (sidecar lines; app spans' meshchaos.attempt).

    A repeated gRPC call after an answer the log cannot classify (no ``%GRPC_STATUS%`` in
    the format) is not judged from the sidecar: it may be a retry of an error."""
    judged = Judged()
    unknown = _sidecar_retry_findings(ev, tree, judged)
    if not judged.findings:
        _app_retry_findings(ev, tree, judged)
        blind = sorted(h for h in unknown if not ev.hop(h).app_client)  # no app span either
        if blind and not judged.findings:
            return NotJudged(f"{', '.join(blind)} called the same gRPC method twice and the "
                             "access-log format has no %GRPC_STATUS%, so whether the first "
                             "call failed (a gRPC error is a 200) cannot be told")
    if not judged.basis:
        return NotJudged("no hop made an outbound request")
    return judged


def _expected_towards(ev: RequestEvidence, callee: str) -> int | None:
    """The expected-rq-timeout some outbound sidecar set towards ``callee``."""
    for hop in ev.hops.values():
        for span in hop.sidecar_out:
            value = span.attributes.get("meshchaos.expected_rq_timeout_ms")
            if value is not None and span.upstream_service == callee:
                return int(float(value))
        for record in hop.logs_out:
            if record.upstream_service == callee and record.expected_rq_timeout_ms is not None:
                return record.expected_rq_timeout_ms
    return None


def timeout_headers_stripped(ev: RequestEvidence, tree: CallTree,
                             target: str = "local") -> Outcome:
    """A budget visible at an outbound sidecar but never at the next app = the mesh strips it
    (app evidence only: only an app span says what the app received)."""
    switch = LOCAL_SWITCH if target == "local" else CLUSTER_SWITCH
    judged = False
    for hop in tree.hops():
        evidence = ev.hop(hop)
        if not evidence.app_server:
            continue
        judged = True
        if budget(evidence) is not None:
            continue
        expected = _expected_towards(ev, hop)
        if expected is not None:
            return [Finding(hop, f"the mesh strips x-envoy-expected-rq-timeout-ms: the sidecar "
                            f"calling {hop} set {expected} ms, {hop}'s app received none; "
                            f"switch: {switch}", (ev.sent.trace_id,), tuple(ev.log_lines(hop)))]
    if not judged:
        return NotJudged("no hop's app exports a SERVER span saying what budget it received")
    return Judged(basis={"app"})


_RETRIES_PER_TRY = {"5xx", "gateway-error", "reset"}


def observed_budgets(evidence: Sequence[RequestEvidence]) -> dict[str, int]:
    """The largest budget each hop was seen receiving (inbound expected-rq-timeout)."""
    found: dict[str, int] = {}
    for ev in evidence:
        for name, hop in ev.hops.items():
            for record in hop.logs_in:
                value = record.expected_rq_timeout_ms
                if value is not None:
                    found[name] = max(found.get(name, 0), value)
    return found


def audit_routes(routes: Iterable[Route], tree: CallTree,
                 budgets: Mapping[str, int] | None = None) -> Mapping[str, list[Finding]]:
    """Static VirtualService audit: inversion along the call tree, retries vs timeout.

    ``budgets`` (:func:`observed_budgets`): a callee whose route is not shorter than its
    caller's is no inversion when every request reached it with a propagated budget below
    that route timeout (the apps' deadline binds first; the route is a backstop, §1.4).
    """
    budgets = budgets or {}
    by_host: dict[str, Route] = {}
    for route in routes:
        by_host.setdefault(route.host, route)
    found: dict[str, list[Finding]] = {"timeout-inversion": [], "retries-fit-timeout": [],
                                       "per-try-retried": []}
    for caller, callee in tree.edges():
        outer, inner = by_host.get(caller), by_host.get(callee)
        seen = budgets.get(callee)
        if outer and inner and outer.timeout_ms and inner.timeout_ms >= outer.timeout_ms \
                and not (seen is not None and seen < min(inner.timeout_ms, outer.timeout_ms)):
            found["timeout-inversion"].append(Finding(
                callee, f"route to {callee} ({inner.virtual_service}) times out after "
                f"{inner.timeout_ms} ms, not shorter than the {outer.timeout_ms} ms of the route "
                f"to its caller {caller} ({outer.virtual_service})"))
    for route in by_host.values():
        tries = 1 + route.attempts
        if route.timeout_ms and route.per_try_timeout_ms and \
                tries * route.per_try_timeout_ms > route.timeout_ms:
            found["retries-fit-timeout"].append(Finding(
                route.host, f"{route.virtual_service}: {tries} tries x {route.per_try_timeout_ms} "
                f"ms perTryTimeout > {route.timeout_ms} ms timeout"))
        if route.per_try_timeout_ms and route.attempts and \
                not _RETRIES_PER_TRY & set(route.retry_on):
            found["per-try-retried"].append(Finding(
                route.host, f"{route.virtual_service}: perTryTimeout "
                f"{route.per_try_timeout_ms} ms is never retried with retryOn "
                f"{','.join(route.retry_on) or '(default)'}"))
    return found


# The rules any mesh's sidecars can show: a deadline verdict rests on these by default.
CORE = ("budget-within-remaining", "deadline-propagated")


def evaluate(evidence: Sequence[RequestEvidence], tree: CallTree, *, tolerance_ms: float = 2.0,
             target: str = "local", routes: Sequence[Route] = ()) -> list[Check]:
    """The dynamic deadline checks over every request; one :class:`Check` per rule.

    A rule that found nothing to evaluate (no hop given a budget, no call made, no app
    spans for the app-only rules) is ``not judged``, never "held".
    """
    by_host = {r.host: r for r in routes}
    return [
        aggregate("headers-stripped", RULES["headers-stripped"],
                  "the budget a sidecar sets reaches the next app",
                  [timeout_headers_stripped(ev, tree, target) for ev in evidence]),
        aggregate("budget-within-remaining", RULES["budget-within-remaining"],
                  "callee budget <= caller's remaining budget",
                  [budget_within_caller_remaining(ev, tree, tolerance_ms, by_host)
                   for ev in evidence]),
        aggregate("sent-within-remaining", RULES["sent-within-remaining"],
                  "timeout sent <= remaining budget",
                  [sent_timeout_within_remaining(ev, tree, tolerance_ms) for ev in evidence]),
        aggregate("deadline-propagated", RULES["deadline-propagated"],
                  "every call of a hop with a budget carries a timeout",
                  [deadline_propagated(ev, tree) for ev in evidence]),
        aggregate("retry-amplification", RULES["retry-amplification"],
                  "no app-level retries", [no_app_retries(ev, tree) for ev in evidence]),
        aggregate("no-call-after-deadline", RULES["no-call-after-deadline"],
                  "no call starts after the caller's deadline",
                  [no_call_after_deadline(ev, tree, tolerance_ms) for ev in evidence]),
    ]


def evaluate_routes(routes: Sequence[Route], tree: CallTree,
                    budgets: Mapping[str, int] | None = None) -> list[Check]:
    """The static VirtualService audit as checks (one per rule, all offending routes)."""
    found = audit_routes(routes, tree, budgets)
    expected = {"timeout-inversion": "each callee's route timeout < its caller's",
                "retries-fit-timeout": "(1+attempts) x perTryTimeout <= timeout",
                "per-try-retried": "retryOn includes 5xx, gateway-error or reset"}
    checks = []
    for rule, findings in found.items():
        if findings:
            more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
            checks.append(Check(rule, False, expected[rule], findings[0].observed + more,
                                hop=findings[0].hop, rule=RULES[rule]))
        else:
            checks.append(Check(rule, True, expected[rule], f"held for all {len(routes)} routes",
                                rule=RULES[rule]))
    return checks
