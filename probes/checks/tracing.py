"""Trace-continuity rules over one request's evidence (docs/fidelity.md §3, §4).

Each function returns the findings of one rule for one request, in breadth-first hop
order, and reports a break once: at the hop that broke it, not at every hop below.
A ``None`` return means the evidence the rule needs is absent everywhere (the
probe turns that into "could not measure").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from probes.checks.calls import reached_upstream
from probes.checks.findings import Finding, NotJudged, Outcome, aggregate
from probes.errors import ConfigurationError
from probes.evidence.request import CallTree, RequestEvidence, mask_request_id
from probes.evidence.spans import Span
from probes.results import Check

__all__ = [
    "CORE",
    "RULES",
    "b3_agrees",
    "evaluate",
    "new_parent_per_call",
    "parents_follow_call_tree",
    "request_id_agrees",
    "required",
    "retries_are_spans",
    "same_trace",
    "sampled_flag_honoured",
    "tracestate_survives",
]

RULES = {
    "same-trace": "every hop joins the request's trace: apps must propagate traceparent, "
                  "else the outbound sidecar starts a new trace-id (§3, IO-TRC)",
    "parent-links": "each sidecar injects the same trace-id with its own span-id as parent "
                    "(§3); span parents follow the call tree, sidecar spans included",
    "new-parent-per-call": "outgoing requests MUST carry an updated parent-id "
                           "(W3C-L2 processing model, §4.1)",
    "tracestate": "a proxy copies tracestate unchanged; apps propagate it (§3, §4.2)",
    "sampled": "sampled is inherited (§3); flags bit0 = sampled (W3C §4.1)",
    "b3": "B3 x-b3-* headers are propagated by the apps and agree with the W3C trace (§3)",
    "request-id": "x-request-id is propagated by the apps; sidecars keep an incoming id (§3)",
    "retries": "the outbound sidecar emits one CLIENT span per upstream attempt "
               "(Envoy start_child_span, architecture.md Spans)",
}


def _ids(ev: RequestEvidence, *more: str) -> tuple[str, ...]:
    return (ev.sent.trace_id, *more)


# The upstream never got the request: connect failure, no healthy host, no route, overflow,
# or a VirtualService fault's abort (FI) before the router (§2.4).
_NOT_SENT = frozenset({"UF", "UH", "NR", "NC", "UO", "FI"})


def _reached(ev: RequestEvidence, caller: str | None, hop: str) -> bool:
    """Whether ``hop`` got the request at all (under chaos a callee may be unreachable).

    Unreached = the caller's outbound lines to it all show a call never sent (a connect
    failure, or a fault filter's abort or held delay, §2.4), or the caller's app never
    called it; without the caller's lines, assume reached (strict).
    """
    if caller is None or ev.hop(hop).logs_in:
        return True
    evidence = ev.hop(caller)
    lines = [r for r in evidence.logs_out if r.upstream_service == hop]
    if lines:
        return not all(not reached_upstream(r) for r in lines)
    outs = [s for s in evidence.sidecar_out if s.upstream_service == hop
            or str(s.attributes.get("http.url", "")).split("//", 1)[-1].startswith(f"{hop}:")]
    if outs:
        return not all(_NOT_SENT & set(str(s.attributes.get("response_flags", "")).split(","))
                       for s in outs)
    calls = [s for s in evidence.app_client
             if str(s.attributes.get("server.address", s.name.rsplit(" ", 1)[-1])) == hop]
    return bool(calls) or not (evidence.logs_in or evidence.app_server)


def same_trace(ev: RequestEvidence, tree: CallTree) -> list[Finding]:
    """Every expected hop has spans in the request's trace; name the caller that broke it.

    A hop has joined when its spans are in the trace, or, where the mesh records no spans,
    when its inbound access-log lines carry the trace id. A hop the request never reached
    (its caller could not connect, §1.6 UF/UH, or never called it) is not a continuity
    break: chaos made it unreachable.
    """
    findings: list[Finding] = []
    broken: set[str] = set()
    for hop in tree.hops():
        caller = tree.caller(hop)
        if caller in broken or _joined(ev, hop) or not _reached(ev, caller, hop):
            if caller in broken or not _joined(ev, hop):
                broken.add(hop)
            continue
        broken.add(hop)
        other = sorted({r.trace_id for r in ev.hop(hop).logs_in
                        if r.trace_id and r.trace_id != ev.sent.trace_id})
        blame = caller or hop
        if other:
            observed = (f"{hop} joined a new trace {other[0]} instead of {ev.sent.trace_id}: "
                        f"{blame} did not propagate traceparent")
        elif ev.hop(hop).logs_in:
            observed = f"{hop} logged the request without a traceparent of {ev.sent.trace_id}"
        else:
            observed = f"{hop} has no span in trace {ev.sent.trace_id} and no access-log line"
        findings.append(Finding(blame, observed, _ids(ev, *other),
                                tuple(ev.log_lines(hop, blame))))
    return findings


def _is_app_of(span: Span | None, hop: str) -> bool:
    return span is not None and not span.sidecar and span.hop == hop


_NO_APP_SPANS = NotJudged("no hop's app exports spans: parent links between app spans "
                          "need them (a pure forwarder keeps its sidecar's parent id)")


def _has_app_spans(ev: RequestEvidence) -> bool:
    return any(not s.sidecar for s in ev.spans)


def parents_follow_call_tree(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """App SERVER spans hang under their inbound sidecar, under the caller's app spans."""
    if not _has_app_spans(ev):
        return _NO_APP_SPANS
    findings: list[Finding] = []
    for hop in tree.hops():
        caller = tree.caller(hop)
        for span in ev.hop(hop).app_server:
            parent = ev.by_id.get(span.parent_id or "")
            if parent is None:
                findings.append(Finding(hop, f"{hop} span {span.span_id} has parent "
                                        f"{span.parent_id} that is not in the trace", _ids(ev)))
            elif not (parent.sidecar and parent.hop == hop and parent.direction == "inbound"):
                findings.append(Finding(hop, f"{hop} span {span.span_id} is a child of "
                                        f"{parent.hop} {parent.name!r}, not of its inbound "
                                        "sidecar span", _ids(ev)))
            elif caller is not None:
                ancestor = ev.nearest_app_ancestor(span)
                if not _is_app_of(ancestor, caller):
                    # The broken link is the caller's outbound call: name the caller.
                    where = f"{ancestor.hop} {ancestor.name!r}" if ancestor else "nothing"
                    findings.append(Finding(caller, f"{hop} hangs under {where}, expected its "
                                            f"caller {caller}", _ids(ev)))
    return findings


def new_parent_per_call(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """Each outbound call's parent is a span of the calling app, never its incoming parent.

    Judged only at hops whose app emits spans: W3C lets a component that does not take part
    in the trace forward ``traceparent`` as it came (§4.1), and that is what an app without
    tracing does; a hop *with* spans that reuses the incoming parent id broke the tree.
    """
    if not _has_app_spans(ev):
        return _NO_APP_SPANS
    findings: list[Finding] = []
    for hop in tree.hops():
        evidence = ev.hop(hop)
        if not (evidence.app_server or evidence.app_client):
            continue
        incoming = {s.span_id for s in evidence.sidecar_in}
        incoming |= {s.parent_id for s in evidence.sidecar_in if s.parent_id}
        for out in evidence.sidecar_out:
            if out.parent_id in incoming:
                target = out.upstream_service or out.name
                findings.append(Finding(hop, f"{hop} reused its incoming parent id "
                                        f"{out.parent_id} for its call to {target}",
                                        _ids(ev), tuple(ev.log_lines(hop))))
                break
            parent = ev.by_id.get(out.parent_id or "")
            if parent is not None and not _is_app_of(parent, hop):
                findings.append(Finding(hop, f"{hop}'s outbound span {out.span_id} is a child "
                                        f"of {parent.hop} {parent.name!r}, not of {hop}'s app",
                                        _ids(ev)))
                break
    return findings


def _has_entry(value: str | None, entry: str) -> bool:
    return bool(value) and entry in [m.strip() for m in (value or "").split(",")]


def tracestate_survives(ev: RequestEvidence, tree: CallTree) -> list[Finding] | None:
    """The probe's tracestate entry is present at every hop, in and out (§4.2)."""
    entry = ev.sent.tracestate.split(",")[0].strip()
    sidecars = [s for s in ev.spans if s.sidecar]
    use_sidecars = any(s.tracestate for s in sidecars)
    use_apps = not use_sidecars and any(s.tracestate for s in ev.spans if not s.sidecar)
    use_logs = any(r.fields.get("tracestate") for r in ev.logs)
    if not (use_sidecars or use_apps or use_logs):
        return None
    for hop in tree.hops():
        evidence = ev.hop(hop)
        inbound = ([s.tracestate for s in evidence.sidecar_in] if use_sidecars else
                   [s.tracestate for s in evidence.app_server] if use_apps else [])
        outbound = [s.tracestate for s in evidence.sidecar_out] if use_sidecars else []
        if use_logs:
            inbound += [r.fields.get("tracestate") for r in evidence.logs_in]
            outbound += [r.fields.get("tracestate") for r in evidence.logs_out]
        caller = tree.caller(hop) or hop
        if any(not _has_entry(v, entry) for v in inbound):
            return [Finding(caller, f"{hop} received no tracestate entry {entry!r}: "
                            f"{caller} dropped it", _ids(ev), tuple(ev.log_lines(hop)))]
        if any(not _has_entry(v, entry) for v in outbound):
            return [Finding(hop, f"{hop} received tracestate {entry!r} but did not "
                            "propagate it on its outbound calls", _ids(ev),
                            tuple(ev.log_lines(hop)))]
    return []


def sampled_flag_honoured(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """Every hop's traceparent keeps the sampled flag the probe sent; unsampled → no spans."""
    if ev.sent.sampled and not any("traceparent" in r.fields for r in ev.logs):
        return NotJudged("the access-log format has no %REQ(TRACEPARENT)%, so no hop's "
                         "sampled flag can be read")
    for hop in tree.hops():
        for record in ev.hop(hop).logs_in + ev.hop(hop).logs_out:
            if record.trace_id == ev.sent.trace_id and record.sampled != ev.sent.sampled:
                return [Finding(hop, f"{hop} logged traceparent sampled={record.sampled}, "
                                f"the probe sent sampled={ev.sent.sampled}", _ids(ev),
                                (record.line,))]
    if not ev.sent.sampled and ev.spans:
        first = min(ev.spans, key=lambda s: s.start_us)
        return [Finding(first.hop, f"{len(ev.spans)} spans recorded for an unsampled trace",
                        _ids(ev))]
    return []


def _b3_echo(span: Span) -> str | None:
    value = span.header("x-b3-traceid") or span.attributes.get("meshchaos.b3_trace_id")
    return str(value) if value is not None else None


def _b3_inbound(ev: RequestEvidence, hop: str, apps_echo: bool) -> list[str | None]:
    # App spans say something about B3 only when the app echoes the header at all (then a
    # span without the echo got none); the current chain does not, the access log does.
    values = [_b3_echo(s) for s in ev.hop(hop).app_server] if apps_echo else []
    # Only a log format with %REQ(X-B3-TRACEID)% says anything about B3.
    values += [r.fields.get("b3_trace_id") for r in ev.hop(hop).logs_in
               if "b3_trace_id" in r.fields]
    return [str(v) if v is not None else None for v in values]


def _joined(ev: RequestEvidence, hop: str) -> bool:
    """The hop took part in the request's trace: by its spans, or by its inbound log lines
    when the evidence has no spans."""
    if ev.spans:
        return ev.in_trace(hop)
    return any(r.trace_id == ev.sent.trace_id for r in ev.hop(hop).logs_in)


def b3_agrees(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """Each hop received x-b3-traceid equal to the W3C trace id (B3 evidence: app spans
    echo it as ``http.request.header.x-b3-traceid``, or the log format has REQ(X-B3-TRACEID)).

    Judged only when B3 is in use: the entry hop received it. A mesh that neither creates
    nor forwards B3 to the entry has nothing to keep, and a log format that has the field
    is then not to blame for its ``-``.
    """
    apps_echo = any(_b3_echo(s) for s in ev.spans if not s.sidecar)
    if not any(v for hop in tree.hops() for v in _b3_inbound(ev, hop, apps_echo)):
        if any("b3_trace_id" in r.fields for r in ev.logs):
            return NotJudged(f"B3 not in use: no hop, {tree.entry} included, received "
                             "x-b3-traceid")
        return None
    if not any(_b3_inbound(ev, tree.entry, apps_echo)):
        return NotJudged(f"B3 not in use: the entry request reached {tree.entry} without "
                         "x-b3-traceid")
    expected = ev.sent.b3_trace_id or ev.sent.trace_id
    for hop in tree.hops():
        upstream = tree.caller(hop)
        if upstream is not None and not _joined(ev, upstream):
            # Below a hop that left the trace, B3 follows the new trace: that break is
            # same-trace's finding, reported once at the hop that broke it.
            continue
        values = _b3_inbound(ev, hop, apps_echo)
        bad = [v for v in values if (v or "").rjust(32, "0") != expected]
        if bad:
            caller = tree.caller(hop) or hop
            return [Finding(caller, f"{hop} received x-b3-traceid {bad[0]!r}, expected "
                            f"{expected}: {caller} did not propagate B3", _ids(ev),
                            tuple(ev.log_lines(hop)))]
    return []


def request_id_agrees(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """Every access-log line of every hop carries the probe's x-request-id."""
    if not any("request_id" in r.fields for r in ev.logs):
        return NotJudged("no access-log line of the request has %REQ(X-REQUEST-ID)%")
    expected = mask_request_id(ev.sent.request_id)
    for hop in tree.hops():
        evidence = ev.hop(hop)
        for direction, records in (("inbound", evidence.logs_in), ("outbound", evidence.logs_out)):
            for record in records:
                if mask_request_id(record.request_id) != expected:
                    blame = (tree.caller(hop) or hop) if direction == "inbound" else hop
                    return [Finding(blame, f"the {direction} sidecar of {hop} logged x-request-id "
                                    f"{record.request_id!r}, the probe sent "
                                    f"{ev.sent.request_id!r}: {blame} did not propagate it",
                                    _ids(ev), (record.line,))]
    return []


def retries_are_spans(ev: RequestEvidence, tree: CallTree) -> Outcome:
    """Each upstream attempt the callee logged has its own CLIENT span at the caller."""
    if not any(r.attempt for r in ev.logs):
        return NotJudged("no inbound access-log line shows x-envoy-attempt-count (the log "
                         "format needs %REQ(X-ENVOY-ATTEMPT-COUNT)%)")
    for caller, callee in tree.edges():
        attempts = {r.attempt for r in ev.hop(callee).logs_in
                    if r.trace_id == ev.sent.trace_id and r.attempt}
        # Per-attempt child spans when the sidecar emits them, else its outbound spans.
        hop = ev.hop(caller)
        spans = [s for s in hop.sidecar_attempts or hop.sidecar_out
                 if s.upstream_service == callee]
        if attempts and len({s.span_id for s in spans}) < len(attempts):
            return [Finding(caller, f"{callee} logged attempts {sorted(attempts)} but {caller} "
                            f"has {len(spans)} outbound span(s) for it", _ids(ev),
                            tuple(ev.log_lines(callee)))]
    return []


_RULE_FUNCS: dict[str, Callable[[RequestEvidence, CallTree], Outcome]] = {
    "same-trace": same_trace,
    "new-parent-per-call": new_parent_per_call,
    "parent-links": parents_follow_call_tree,
    "tracestate": tracestate_survives,
    "sampled": sampled_flag_honoured,
    "b3": b3_agrees,
    "request-id": request_id_agrees,
    "retries": retries_are_spans,
}
_EXPECTED = {
    "same-trace": "every hop in the request's trace",
    "parent-links": "span parents follow the call tree through the sidecars",
    "new-parent-per-call": "each outbound call carries a new parent-id",
    "tracestate": "the probe's tracestate entry at every hop",
    "sampled": "the sampled flag the probe sent, at every hop",
    "b3": "x-b3-traceid equal to the W3C trace id at every hop",
    "request-id": "the probe's x-request-id in every hop's access-log lines",
    "retries": "one CLIENT span per upstream attempt",
}
_MISSING = {
    "tracestate": "no span carries a tracestate (Jaeger tag 'w3c.tracestate' / OTLP traceState) "
                  "and the log format has no %REQ(TRACESTATE)%",
    "b3": "no app span echoes x-b3-traceid (attribute 'http.request.header.x-b3-traceid') and "
          "the log format has no %REQ(X-B3-TRACEID)%",
}


# The rules any mesh's sidecars can show (access logs and sidecar spans): a verdict rests
# on these; the others need app spans or optional log fields and are reported either way.
CORE = ("same-trace", "request-id", "sampled")


def required(checks: Iterable[str] | None, require: Iterable[str] | None) -> list[str]:
    """The rules a trace-continuity verdict rests on: ``require``, else the chosen CORE."""
    if require is not None:
        return list(require)
    chosen = list(checks or _RULE_FUNCS)
    return [rule for rule in chosen if rule in CORE]


def evaluate(evidence: Sequence[RequestEvidence], tree: CallTree,
             rules: Iterable[str] | None = None) -> list[Check]:
    """Run the trace-continuity rules over every request; one :class:`Check` per rule."""
    chosen = list(rules or _RULE_FUNCS)
    unknown = [r for r in chosen if r not in _RULE_FUNCS]
    if unknown:
        raise ConfigurationError(f"unknown trace-continuity check(s) {unknown}; "
                                 f"known: {sorted(_RULE_FUNCS)}")
    checks = []
    for rule in chosen:
        # Unsampled requests leave no spans by design: only the sampled rule judges them.
        judged = [ev for ev in evidence if ev.sent.sampled or rule == "sampled"]
        if not judged:
            continue
        missing = NotJudged(_MISSING.get(rule, "no evidence"))
        results = [_RULE_FUNCS[rule](ev, tree) for ev in judged]
        checks.append(aggregate(rule, RULES[rule], _EXPECTED[rule],
                                [missing if r is None else r for r in results]))
    return checks
