"""Deadline-propagation rules (mesh-semantics.md §1.4, §1.5, §1.7, §2.1, §6).

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

from probes.checks.findings import Finding, aggregate
from probes.errors import EvidenceError
from probes.evidence.request import CallTree, HopEvidence, RequestEvidence
from probes.evidence.routes import Route
from probes.evidence.spans import Span
from probes.results import Check

__all__ = [
    "CLUSTER_SWITCH",
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
    "sent_timeout_within_remaining",
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
        if record.expected_rq_timeout_ms is not None and record.start_us is not None:
            return float(record.expected_rq_timeout_ms), record.start_us
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


def budget_within_caller_remaining(ev: RequestEvidence, tree: CallTree,
                                   tolerance_ms: float = 2.0) -> list[Finding]:
    """Callee budget <= what its caller's run had left when it made that call."""
    findings: list[Finding] = []
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
            left = parent.left_ms(call.start_us)
            if run.budget_ms > left + tolerance_ms:
                findings.append(Finding(caller, f"{callee} was given {run.budget_ms:.0f} ms but "
                                        f"{caller} had {left:.0f} ms left", (ev.sent.trace_id,),
                                        tuple(ev.log_lines(caller, callee))))
                break
    return findings


def sent_timeout_within_remaining(ev: RequestEvidence, tree: CallTree,
                                  tolerance_ms: float = 2.0) -> list[Finding]:
    """Each CLIENT span's ``meshchaos.timeout_sent_ms`` <= its run's remaining budget."""
    for hop in tree.hops():
        for run in invocations(ev.hop(hop)):
            if run.budget_ms is None:
                continue
            for call in run.calls:
                sent = call.attributes.get("meshchaos.timeout_sent_ms")
                left = run.left_ms(call.start_us)
                if sent is not None and float(sent) > left + tolerance_ms:
                    return [Finding(hop, f"{hop} sent {float(sent):.0f} ms to {_callee(call)} "
                                    f"with {left:.0f} ms left", (ev.sent.trace_id,))]
    return []


def no_call_after_deadline(ev: RequestEvidence, tree: CallTree,
                           tolerance_ms: float = 2.0) -> list[Finding]:
    """No CLIENT span of a run starts after that run's own deadline."""
    for hop in tree.hops():
        for run in invocations(ev.hop(hop)):
            deadline = run.deadline_us
            if deadline is None:
                continue
            late = [c for c in run.calls if c.start_us > deadline + tolerance_ms * 1000]
            if late:
                over = (late[0].start_us - deadline) / 1000
                return [Finding(hop, f"{hop} called {late[0].name!r} {over:.0f} ms after its "
                                "own deadline", (ev.sent.trace_id,))]
    return []


def deadline_propagated(ev: RequestEvidence, tree: CallTree) -> list[Finding]:
    """A run with a budget sends a timeout (``meshchaos.timeout_sent_ms``) on each call."""
    for hop in tree.hops():
        for run in invocations(ev.hop(hop)):
            if run.budget_ms is None:
                continue
            for call in run.calls:
                if call.attributes.get("meshchaos.timeout_sent_ms") is None:
                    return [Finding(hop, f"{hop} received a budget of {run.budget_ms:.0f} ms but "
                                    f"sent no timeout on its call {call.name!r}",
                                    (ev.sent.trace_id,), tuple(ev.log_lines(hop)))]
    return []


def no_app_retries(ev: RequestEvidence, tree: CallTree) -> list[Finding]:
    """No app CLIENT span is a retry of its own (``meshchaos.attempt`` > 1)."""
    for hop in tree.hops():
        retries = [s for s in ev.hop(hop).app_client
                   if int(s.attributes.get("meshchaos.attempt", 1) or 1) > 1]
        if retries:
            most = max(int(s.attributes.get("meshchaos.attempt", 1)) for s in retries)
            return [Finding(hop, f"{hop} retried {retries[0].name!r} itself ({most} attempts) on "
                            "top of the mesh's retries", (ev.sent.trace_id,))]
    return []


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
                             target: str = "local") -> list[Finding]:
    """A budget visible at an outbound sidecar but never at the next app = the mesh strips it."""
    switch = LOCAL_SWITCH if target == "local" else CLUSTER_SWITCH
    for hop in tree.hops():
        evidence = ev.hop(hop)
        if not evidence.app_server or budget(evidence) is not None:
            continue
        expected = _expected_towards(ev, hop)
        if expected is not None:
            return [Finding(hop, f"the mesh strips x-envoy-expected-rq-timeout-ms: the sidecar "
                            f"calling {hop} set {expected} ms, {hop}'s app received none; "
                            f"switch: {switch}", (ev.sent.trace_id,), tuple(ev.log_lines(hop)))]
    return []


_RETRIES_PER_TRY = {"5xx", "gateway-error", "reset"}


def audit_routes(routes: Iterable[Route], tree: CallTree) -> Mapping[str, list[Finding]]:
    """Static VirtualService audit: inversion along the call tree, retries vs timeout."""
    by_host: dict[str, Route] = {}
    for route in routes:
        by_host.setdefault(route.host, route)
    found: dict[str, list[Finding]] = {"timeout-inversion": [], "retries-fit-timeout": [],
                                       "per-try-retried": []}
    for caller, callee in tree.edges():
        outer, inner = by_host.get(caller), by_host.get(callee)
        if outer and inner and outer.timeout_ms and inner.timeout_ms >= outer.timeout_ms:
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


def evaluate(evidence: Sequence[RequestEvidence], tree: CallTree, *, tolerance_ms: float = 2.0,
             target: str = "local") -> list[Check]:
    """The dynamic deadline checks over every request; one :class:`Check` per rule.

    Raises ``EvidenceError`` when no hop of any request shows a budget *and* no sidecar
    set one: there is nothing to judge (e.g. no VirtualService timeout on the chain).
    """
    stripped = [timeout_headers_stripped(ev, tree, target) for ev in evidence]
    budgets = any(budget(ev.hop(h)) is not None for ev in evidence for h in tree.hops())
    if not budgets and not any(stripped):
        raise EvidenceError("could not measure deadline propagation: no hop received a budget "
                            "(meshchaos.budget_ms / x-envoy-expected-rq-timeout-ms) and no "
                            "sidecar set one; give the entry route a VirtualService timeout")
    return [
        aggregate("headers-stripped", RULES["headers-stripped"],
                  "the budget a sidecar sets reaches the next app", stripped),
        aggregate("budget-within-remaining", RULES["budget-within-remaining"],
                  "callee budget <= caller's remaining budget",
                  [budget_within_caller_remaining(ev, tree, tolerance_ms) for ev in evidence]),
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


def evaluate_routes(routes: Sequence[Route], tree: CallTree) -> list[Check]:
    """The static VirtualService audit as checks (one per rule, all offending routes)."""
    found = audit_routes(routes, tree)
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
