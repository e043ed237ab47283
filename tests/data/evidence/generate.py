"""Write the recorded evidence cases under tests/data/evidence/ (run: python generate.py).

Each case is what the reference chain (frontend → orders → inventory → pricing, plus
orders → ratings in parallel) leaves behind for one probe request on the local mesh,
in exactly the shapes of docs/architecture.md: Jaeger JSON for the trace store
("Trace store", "Spans", "The reference chain's telemetry contract") and the extended
TEXT access-log format for each pod's istio-proxy log ("Access log").
The defective cases change exactly what the matching twin (CHAIN_DEFECT) changes, at
hop ``orders``. The output is committed; this script documents how it was made.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NS = "shop"
PODS = {"frontend": "frontend-5d4f9c7b8-x2x9q", "orders": "orders-7c9d8f6b5-k4m2p",
        "inventory": "inventory-6b8c7d9f4-q7w3e", "pricing": "pricing-59f7c8d6b-z8r5t",
        "ratings": "ratings-8d6f5c7b9-m3n6v"}
CALLS = {"frontend": ["orders"], "orders": ["inventory", "ratings"], "inventory": ["pricing"]}
GATEWAY = "istio-ingressgateway-5f8c9d7b6-g1h2j"
T0_US = 1_795_713_903_123_000  # 2026-11-26T17:25:03.123Z
WORK_BEFORE_CALLS_US = 20_000
LEAF_WORK_US = 5_000
MARGIN_MS = 5


def _fmt_time(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{(us // 1000) % 1000:03d}Z"


@dataclass
class Scenario:
    """How the chain behaves for one case (the defect acts at hop ``orders``)."""

    name: str
    defect: str = "none"
    honor: bool = True  # the mesh keeps x-envoy-* timeout headers (§1.7 switch)
    entry_budget_ms: int | None = 1000
    slow_hop: str | None = None  # this hop's work takes slow_us
    slow_us: int = 0
    route_timeout_ms: dict[str, int] = field(default_factory=dict)  # caller-side timeouts
    failing_hop: str | None = None  # answers 503
    mesh_retry_spans: bool = True  # the sidecar emits one span per attempt
    mesh_attempts: int = 1  # tries the callee sidecar logs for calls to failing_hop
    client_timeout_us: int | None = None  # the probe gives up after this long (no answer)
    unreachable_hop: str | None = None  # its pod is down: callers get 503 UF,URX (§2.2)
    sampled: bool = True  # the probe's traceparent flags
    store_unsampled: bool = False  # the trace store keeps spans of an unsampled trace (a bug)


class Chain:
    """Simulates one request through the chain and records spans and access-log lines."""

    def __init__(self, sc: Scenario, seed: int) -> None:
        self.sc = sc
        self.rnd = random.Random(seed)
        self.spans: list[dict[str, Any]] = []
        self.logs: dict[str, list[str]] = defaultdict(list)
        self.trace = self._hex(32)
        self.request_id = self._uuid()
        self.tracestate = "meshchaos=run-1"
        self.flags = "01" if sc.sampled else "00"
        self.probe_parent = self._hex(16)

    def _hex(self, n: int) -> str:
        return "".join(self.rnd.choice("0123456789abcdef") for _ in range(n))

    def _uuid(self) -> str:
        h = self._hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    # ---- records ---------------------------------------------------------------------
    def span(self, trace: str, parent: str | None, service: str, name: str, kind: str,
             start: int, end: int, tags: dict[str, Any], events: list[tuple[int, str]] = (),
             tracestate: str | None = None, error: str | None = None) -> str:
        span_id = self._hex(16)
        all_tags = [{"key": "span.kind", "type": "string", "value": kind}]
        for key, value in tags.items():
            kind_name = ("int64" if isinstance(value, int) and not isinstance(value, bool)
                         else "bool" if isinstance(value, bool) else "string")
            all_tags.append({"key": key, "type": kind_name, "value": value})
        if tracestate:
            all_tags.append({"key": "w3c.tracestate", "type": "string", "value": tracestate})
        if error:
            all_tags += [{"key": "otel.status_code", "type": "string", "value": "ERROR"},
                         {"key": "otel.status_description", "type": "string", "value": error},
                         {"key": "error", "type": "bool", "value": True}]
        self.spans.append({
            "traceID": trace, "spanID": span_id, "operationName": name,
            "references": ([{"refType": "CHILD_OF", "traceID": trace, "spanID": parent}]
                           if parent else []),
            "startTime": start, "duration": end - start, "tags": all_tags,
            "logs": [{"timestamp": t, "fields": [{"key": "event", "type": "string",
                                                  "value": e}]} for t, e in events],
            "processID": service, "warnings": None})
        return span_id

    def log(self, pod: str, start: int, end: int, code: int, flags: str, request_id: str,
            authority: str, cluster: str, traceparent: str | None, expected: int | None,
            attempt: int | None) -> None:
        details = {200: "via_upstream",
                   503: "upstream_reset_before_response_started{connection_failure}",
                   504: "response_timeout", 0: "downstream_remote_disconnect"}
        line = (f'[{_fmt_time(start)}] "GET /api HTTP/1.1" {code} {flags or "-"} '
                f'{details.get(code, "via_upstream")} - "-" 0 {0 if code == 0 else 128} '
                f'{max(0, (end - start) // 1000)} {"-" if code in (0, 504) else 3} "-" '
                f'"python-requests/2.34" "{request_id}" "{authority}:8080" '
                f'"127.0.0.1:40{self.rnd.randint(100, 999)}" {cluster} '
                f'127.0.0.1:5{self.rnd.randint(1000, 9999)} '
                f'127.0.0.1:8080 127.0.0.1:4{self.rnd.randint(1000, 9999)} - default '
                f'"{traceparent or "-"}" "{expected if expected is not None else "-"}" '
                f'"{attempt if attempt is not None else "-"}"')
        self.logs[pod].append(line)

    # ---- the chain ---------------------------------------------------------------------
    def run(self) -> None:
        sc = self.sc
        start = T0_US
        gw_expected = sc.entry_budget_ms
        gw = self.span(self.trace, self.probe_parent, "istio-ingressgateway.istio-system",
                       "frontend.shop.svc.cluster.local:8080/*", "client", start, start,
                       self._sidecar_tags("istio-ingressgateway", GATEWAY, "outbound",
                                          "frontend", gw_expected, 1),
                       tracestate=self.tracestate)
        gw_try = self.span(self.trace, gw, "istio-ingressgateway.istio-system",
                           "frontend.shop.svc.cluster.local:8080/*", "client", start, start,
                           self._sidecar_tags("istio-ingressgateway", GATEWAY, "attempt",
                                              "frontend", None, 1), tracestate=self.tracestate)
        ctx = {"trace": self.trace, "parent": gw_try, "tracestate": self.tracestate,
               "b3": self.trace, "request_id": self.request_id, "sampled": True}
        # The probe leaving resets the gateway's call to frontend right away (§1.6).
        leave = start + sc.client_timeout_us + 1_000 if sc.client_timeout_us else None
        end, _ = self.hop("frontend", start + 500, ctx,
                          gw_expected if sc.honor else None, gw_expected, 1, leave)
        self._patch_end(gw, end + 300)
        self._patch_end(gw_try, end + 200)

    def _sidecar_tags(self, hop: str, pod: str, direction: str, peer: str,
                      expected: int | None, attempt: int | None, code: int = 200,
                      flags: str = "-", request_id: str | None = None) -> dict[str, Any]:
        cluster = (f"outbound|8080|v1|{peer}.{NS}.svc.cluster.local"
                   if direction in ("outbound", "attempt") else "inbound|8080||")
        tags: dict[str, Any] = {
            "component": "proxy", "node_id": f"sidecar~127.0.0.1~{pod}.{NS}~{NS}.svc.cluster.local",
            "istio.namespace": NS, "istio.canonical_service": hop, "meshchaos.pod": pod,
            "upstream_cluster": cluster,
            "http.method": "GET", "http.url": f"http://{peer}:8080/api",
            "http.status_code": str(code), "response_flags": flags,
            "guid:x-request-id": request_id or self.request_id}
        if direction != "attempt":  # the per-attempt child span carries no direction
            tags["meshchaos.direction"] = direction
        if direction != "inbound":
            tags["meshchaos.attempt"] = attempt or 1
            if expected is not None:
                tags["meshchaos.expected_rq_timeout_ms"] = expected
        return tags

    def _patch_end(self, span_id: str, end: int) -> None:
        for span in self.spans:
            if span["spanID"] == span_id:
                span["duration"] = max(0, end - span["startTime"])

    def _span_of(self, span_id: str) -> dict[str, Any]:
        return next(s for s in self.spans if s["spanID"] == span_id)

    def hop(self, hop: str, start: int, ctx: dict[str, Any], budget: int | None,
            caller_expected: int | None, attempt: int = 1,
            reset_at: int | None = None) -> tuple[int, int]:
        """Run ``hop`` from ``start``; return (end_us, status) as its caller sees it."""
        sc, pod = self.sc, PODS[hop]
        trace, ts = ctx["trace"], ctx["tracestate"]
        inbound = self.span(trace, ctx["parent"], f"{hop}.{NS}",
                            f"{hop}.{NS}.svc.cluster.local:8080/*", "server", start, start,
                            self._sidecar_tags(hop, pod, "inbound", hop, None, None,
                                               request_id=ctx["request_id"]), tracestate=ts)
        server_start = start + 300
        tags: dict[str, Any] = {"http.request.method": "GET", "url.path": "/api",
                                "meshchaos.hop": hop, "meshchaos.defect":
                                sc.defect if hop == "orders" else "none"}
        if budget is not None:
            tags["meshchaos.budget_ms"] = budget
        if ctx["b3"]:
            tags["http.request.header.x-b3-traceid"] = json.dumps([ctx["b3"]])
        server = self.span(trace, inbound, hop, "GET /api", "server", server_start,
                           server_start, tags, tracestate=ts)
        status = 503 if sc.failing_hop == hop else 200
        now = server_start + WORK_BEFORE_CALLS_US
        # no-cancel never notices its caller leaving; cancel-self-only stops its own work but
        # leaves its calls running; the correct chain cancels both (fixtures/chain/defects.py).
        notices = not (hop == "orders" and sc.defect == "no-cancel")
        cancels_calls = notices and not (hop == "orders" and sc.defect == "cancel-self-only")
        child_reset = reset_at + 2_000 if reset_at is not None and cancels_calls else None
        ends = []
        for callee in CALLS.get(hop, []):
            end, child_status = self.call(hop, callee, now, ctx, budget, server_start, server,
                                          child_reset)
            ends.append(end)
            if child_status >= 500:
                status = 502
        finish = max([now + (sc.slow_us if sc.slow_hop == hop else LEAF_WORK_US), *ends])
        events = [(server_start + 100, "work.start")]
        error = None
        # The caller's side was reset: this hop's inbound sidecar logs 0 DC at that moment.
        gone = reset_at is not None and finish > reset_at
        if gone and notices:
            cancelled_at = reset_at + 4_000
            finish = cancelled_at
            events.append((cancelled_at, "work.cancelled"))
            error = "cancelled: caller-gone"
        else:
            events.append((finish - 50, "work.end"))
        self._span_of(server)["logs"] = [
            {"timestamp": t, "fields": [{"key": "event", "type": "string", "value": e}]}
            for t, e in events]
        if error:
            tags_list = self._span_of(server)["tags"]
            tags_list += [{"key": "otel.status_code", "type": "string", "value": "ERROR"},
                          {"key": "otel.status_description", "type": "string", "value": error}]
        self._patch_end(server, finish)
        end = finish + 300
        if gone:
            code, flags, log_end = 0, "DC", reset_at + 1_000
        else:
            code, flags, log_end = status, "-", end
        self._patch_end(inbound, log_end)
        self._span_of(inbound)["tags"] = [t for t in self._span_of(inbound)["tags"]
                                          if t["key"] not in ("http.status_code", "response_flags")]
        self._span_of(inbound)["tags"] += [
            {"key": "http.status_code", "type": "string", "value": str(code)},
            {"key": "response_flags", "type": "string", "value": flags}]
        received_tp = f"00-{trace}-{ctx['parent']}-{self.flags}"
        self.log(pod, start, log_end, code, flags, ctx["request_id"], hop, "inbound|8080||",
                 received_tp, caller_expected if sc.honor else None, attempt)
        return log_end, code if code else 504

    def call(self, hop: str, callee: str, now: int, ctx: dict[str, Any], budget: int | None,
             server_start: int, server: str, reset_at: int | None) -> tuple[int, int]:
        """``hop``'s app calls ``callee`` at ``now``: CLIENT span, outbound sidecar, callee."""
        sc = self.sc
        defective = hop == "orders"
        app_attempts = 3 if defective and sc.defect == "app-retries" and \
            sc.failing_hop in [callee, *_below(callee)] else 1
        end, status = now, 200
        for app_attempt in range(1, app_attempts + 1):
            elapsed_ms = (now - server_start) // 1000
            sent: int | None = None
            if budget is not None and not (defective and sc.defect == "ignore-budget"):
                sent = (budget + elapsed_ms if defective and sc.defect == "add-elapsed"
                        else budget - elapsed_ms) - MARGIN_MS
            tags: dict[str, Any] = {"http.request.method": "GET", "url.path": "/api",
                                    "server.address": callee, "meshchaos.hop": hop,
                                    "meshchaos.attempt": app_attempt,
                                    "meshchaos.defect": sc.defect if defective else "none"}
            if sent is not None:
                tags["meshchaos.timeout_sent_ms"] = sent
            client = self.span(ctx["trace"], server, hop, f"GET {callee}", "client", now, now,
                               tags, tracestate=ctx["tracestate"])
            end, status = self.outbound(hop, callee, now + 200, ctx, client, sent, defective,
                                        reset_at)
            self._patch_end(client, end + 200)
            now = end + 25_000
        return end + 200, status

    def outbound(self, hop: str, callee: str, start: int, ctx: dict[str, Any], client: str,
                 sent: int | None, defective: bool, reset_at: int | None) -> tuple[int, int]:
        sc, pod = self.sc, PODS[hop]
        defect = sc.defect if defective else "none"
        trace, parent, tp_sent = ctx["trace"], client, f"00-{ctx['trace']}-{client}-{self.flags}"
        request_id, tracestate, b3 = ctx["request_id"], ctx["tracestate"], ctx["b3"]
        if defect == "drop-traceparent":
            trace, parent, tp_sent = self._hex(32), None, None  # the sidecar starts a new trace
        elif defect == "reuse-parent":  # forwards the traceparent it received, unchanged
            inbound_id = self._inbound_of(hop)
            parent, tp_sent = inbound_id, f"00-{trace}-{inbound_id}-{self.flags}"
        if defect == "drop-tracestate":
            tracestate = None
        if defect == "drop-b3":
            b3 = None
        if defect == "drop-request-id":
            request_id = self._uuid()  # the outbound sidecar generates one
        route = sc.route_timeout_ms.get(callee)
        expected = sent if sc.honor and sent is not None else None
        if route is not None:
            expected = min(expected, route) if expected is not None else route
        tries = sc.mesh_attempts if sc.failing_hop == callee else 1
        out_spans, end, status = [], start, 200
        child_ctx = {"trace": trace, "tracestate": tracestate, "b3": b3,
                     "request_id": request_id, "sampled": True}
        deadline = start + expected * 1000 if route is not None and expected else None
        child_reset = deadline if deadline is not None else reset_at
        operation = f"{callee}.{NS}.svc.cluster.local:8080/*"
        out = self.span(trace, parent, f"{hop}.{NS}", operation, "client", end, end,
                        self._sidecar_tags(hop, pod, "outbound", callee, expected, 1,
                                           request_id=request_id), tracestate=tracestate)
        out_spans.append(out)
        if sc.unreachable_hop == callee:  # every try fails to connect; nothing reaches it
            for attempt in range(1, 4):
                out_spans.append(self.span(
                    trace, out, f"{hop}.{NS}", operation, "client", end, end + 1_000,
                    self._sidecar_tags(hop, pod, "attempt", callee, None, attempt, 503, "UF",
                                       request_id), tracestate=tracestate))
                end += 26_000
            for span_id in out_spans:
                tags = self._span_of(span_id)["tags"]
                for t in tags:
                    if t["key"] in ("http.status_code", "response_flags"):
                        t["value"] = "503" if t["key"] == "http.status_code" else "UF,URX"
            self._patch_end(out, end)
            self.log(pod, start, end, 503, "UF,URX", request_id, callee,
                     f"outbound|8080|v1|{callee}.{NS}.svc.cluster.local", tp_sent, expected, None)
            return end, 503
        for attempt in range(1, tries + 1):
            # Envoy start_child_span: one child CLIENT span per upstream attempt.
            child = self.span(trace, out, f"{hop}.{NS}", operation, "client", end, end,
                              self._sidecar_tags(hop, pod, "attempt", callee, None, attempt,
                                                 request_id=request_id), tracestate=tracestate)
            if sc.mesh_retry_spans or attempt == 1:
                out_spans.append(child)
            else:
                self.spans.pop()
                child = out_spans[1]
            child_ctx["parent"] = child
            child_end, status = self.hop(callee, end + 200, child_ctx,
                                         expected if sc.honor else None, expected, attempt,
                                         child_reset)
            end = child_end + 100
            self._patch_end(out, end)
        code, flags = status, "-"
        if deadline is not None and end > deadline:
            code, flags, end = 504, "UT", deadline
        elif reset_at is not None and end > reset_at:
            code, flags, end = 0, "DC", reset_at
        elif status == 503 and tries > 1:
            flags = "URX"
        for out in out_spans:
            tags = self._span_of(out)["tags"]
            for t in tags:
                if t["key"] == "http.status_code":
                    t["value"] = str(code)
                if t["key"] == "response_flags":
                    t["value"] = flags
            if code in (0, 504):
                self._patch_end(out, end)
        self.log(pod, start, end, code, flags, request_id, callee,
                 f"outbound|8080||{callee}.{NS}.svc.cluster.local", tp_sent, expected, None)
        return end, code

    def _inbound_of(self, hop: str) -> str:
        return next(s["spanID"] for s in self.spans
                    if s["processID"] == f"{hop}.{NS}" and
                    any(t["key"] == "meshchaos.direction" and t["value"] == "inbound"
                        for t in s["tags"]))


def _below(hop: str) -> list[str]:
    out = []
    for callee in CALLS.get(hop, []):
        out += [callee, *_below(callee)]
    return out


def jaeger(chain: Chain, trace_ids: list[str]) -> dict[str, Any]:
    """The trace store's answer for the probe's trace ids (other traces are not returned)."""
    data = []
    for trace in trace_ids:
        spans = [dict(s) for s in chain.spans if s["traceID"] == trace]
        services = sorted({s["processID"] for s in spans})
        pids = {svc: f"p{i + 1}" for i, svc in enumerate(services)}
        for s in spans:
            s["processID"] = pids[s["processID"]]
        data.append({"traceID": trace, "spans": spans, "warnings": None,
                     "processes": {pid: {"serviceName": svc, "tags": []}
                                   for svc, pid in pids.items()}})
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}


def write_case(sc: Scenario, seed: int) -> None:
    chain = Chain(sc, seed)
    chain.run()
    out = HERE / sc.name
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    sent = {"trace_id": chain.trace, "parent_id": chain.probe_parent, "sampled": sc.sampled,
            "tracestate": chain.tracestate, "request_id": chain.request_id,
            "b3_trace_id": chain.trace, "b3_span_id": chain.probe_parent,
            "status": None if sc.client_timeout_us else 200,
            "latency_ms": (sc.client_timeout_us or 60_000) / 1000, "started_us": T0_US}
    (out / "requests.json").write_text(json.dumps([sent], indent=1) + "\n")
    kept = [chain.trace] if sc.sampled or sc.store_unsampled else []
    (out / "traces.json").write_text(json.dumps(jaeger(chain, kept), indent=1) + "\n")
    for pod in PODS.values():
        lines = chain.logs.get(pod, [])
        (out / "logs" / f"{NS}_{pod}.log").write_text("".join(line + "\n" for line in lines))


SCENARIOS = [
    Scenario("correct"),
    Scenario("drop-traceparent", "drop-traceparent"),
    Scenario("reuse-parent", "reuse-parent"),
    Scenario("drop-tracestate", "drop-tracestate"),
    Scenario("drop-b3", "drop-b3"),
    Scenario("drop-request-id", "drop-request-id"),
    Scenario("ignore-budget", "ignore-budget"),
    Scenario("add-elapsed", "add-elapsed"),
    Scenario("stripped", honor=False),
    Scenario("timeout-correct", honor=False, slow_hop="pricing", slow_us=900_000,
             route_timeout_ms={"orders": 300}),
    Scenario("no-cancel", "no-cancel", honor=False, slow_hop="pricing", slow_us=900_000,
             route_timeout_ms={"orders": 300}),
    Scenario("cancel-self-only", "cancel-self-only", honor=False, slow_hop="pricing",
             slow_us=900_000, route_timeout_ms={"orders": 300}),
    Scenario("client-gone-correct", slow_hop="pricing", slow_us=800_000,
             client_timeout_us=200_000),
    Scenario("client-gone-no-cancel", "no-cancel", slow_hop="pricing", slow_us=800_000,
             client_timeout_us=200_000),
    Scenario("client-gone-cancel-self-only", "cancel-self-only", slow_hop="pricing",
             slow_us=800_000, client_timeout_us=200_000),
    Scenario("unsampled", sampled=False),
    Scenario("unsampled-recorded", sampled=False, store_unsampled=True),
    Scenario("leaf-unreachable", unreachable_hop="pricing"),
    Scenario("retries-correct", failing_hop="pricing", mesh_attempts=2),
    Scenario("retried-midchain", failing_hop="inventory", mesh_attempts=2),
    Scenario("retries-one-span", failing_hop="pricing", mesh_attempts=2, mesh_retry_spans=False),
    Scenario("app-retries", "app-retries", failing_hop="pricing", mesh_attempts=2),
]


if __name__ == "__main__":
    for number, scenario in enumerate(SCENARIOS):
        write_case(scenario, seed=number + 1)
        print(f"wrote {scenario.name}", file=sys.stderr)
