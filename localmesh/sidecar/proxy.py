"""The sidecar: inbound and outbound listeners, live configuration, spans and access log.

One :class:`Sidecar` per pod. The listeners share the configuration, which the
admin endpoint replaces atomically (``apply_config``): a request reads
``self.cfg`` once and keeps that snapshot to the end.

Two paths, one behaviour. Everything before the first try is synchronous
(``_inbound``/``_outbound``). The common request (an idle keep-alive upstream
connection, no fault on it but perhaps a caller-side delay) then runs on
callbacks with no task (``fast_inbound``/``fast_outbound`` as the server's fast
hook, :class:`~localmesh.sidecar.upstream.FastTry`); anything that has to wait
(a new connection, a retry's backoff, a stall, loss, bandwidth, a response
hold) continues in the coroutine ``_rest`` → ``call_upstream`` from the same
router state, and both paths take their verdicts from the same functions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, cast

from localmesh.http.client import ConnectionPool
from localmesh.http.message import HOP_BY_HOP as _HOP_BY_HOP
from localmesh.http.message import Request, Response
from localmesh.http.server import ServerConnection
from localmesh.sidecar import admin
from localmesh.sidecar.accesslog import AccessLog
from localmesh.sidecar.config import (
    RouteFault,
    SidecarConfig,
    parse_config,
)
from localmesh.sidecar.faults import FaultEngine, hold, stall
from localmesh.sidecar.grpc import grpc_local_reply, grpc_span_tags, is_grpc
from localmesh.sidecar.h2 import H2Pool, H2Response, H2StreamConn, switch_to_h2
from localmesh.sidecar.headers import (
    PEER_HEADER,
    clean_request_headers,
    new_request_id,
    parse_peer_id,
    peer_id,
    strip_internal,
)
from localmesh.sidecar.httpfaults import HttpChaos
from localmesh.sidecar.planner import Reject, RoutePlanner, sanitize, split_target
from localmesh.sidecar.routing import (
    Picker,
)
from localmesh.sidecar.tracing import (
    KIND_CLIENT,
    KIND_SERVER,
    Span,
    SpanExporter,
    format_traceparent,
    new_span_id,
    new_trace_id,
    now_ns,
    parse_traceparent,
)
from localmesh.sidecar.txn import Txn
from localmesh.sidecar.upstream import (
    FastTry,
    TraceCtx,
    TryState,
    Upstream,
    begin_try,
    call_upstream,
    grpc_route,
    local_reply,
)

__all__ = ["Sidecar"]

log = logging.getLogger("localmesh.sidecar")

_NO_ATTRS: dict[str, str | int | float] = {}


class _Exchange:
    """One downstream request between its synchronous prelude and its response."""

    __slots__ = ("conn", "headers", "kind", "parent", "peer", "req", "start_ns", "target",
                 "trace", "txn", "up")

    def __init__(self, kind: int, req: Request, conn: ServerConnection, txn: Txn,
                 headers: dict[str, str], target: str, peer: str | None, up: Upstream | None,
                 trace: TraceCtx | None, parent: str, start_ns: int) -> None:
        self.kind = kind  # KIND_SERVER: inbound listener; KIND_CLIENT: outbound
        self.req, self.conn, self.txn, self.headers = req, conn, txn, headers
        self.target = target  # what the upstream request line carries
        self.peer = peer  # inbound: the calling pod (ns/pod), if it said
        # None only for a request answered before routing (never forwarded). Declared as
        # such: a mypyc build checks the declared type on assignment.
        self.up = up
        self.trace, self.parent, self.start_ns = trace, parent, start_ns


class Sidecar:
    """State and request handling of one sidecar process."""

    def __init__(self, *, pod: str, namespace: str, service: str, mode: str = "sidecar",
                 app_port: int = 0, log_fd: int = 1) -> None:
        self.pod, self.namespace, self.service, self.mode = pod, namespace, service, mode
        self.app_port = app_port
        self.cfg: SidecarConfig | None = None
        self.pool = ConnectionPool(max_idle_per_host=256)
        self.h2_pool = H2Pool()  # HTTP/2 clusters: one multiplexed connection per endpoint
        self.picker = Picker()
        self.faults = FaultEngine()
        self.http_chaos = HttpChaos(hold)  # HTTPChaos rules, in front of the inbound (§5.5)
        self.access_log = AccessLog(log_fd)
        self.exporter: SpanExporter | None = None
        self.peer_id = peer_id(pod, namespace)
        self.fqdn = f"{service}.{namespace}.svc.cluster.local"
        self.stats: dict[str, int] = {
            "downstream_rq_inbound": 0, "downstream_rq_outbound": 0, "upstream_rq_retry": 0,
            "rq_timeout": 0, "downstream_cx_destroy_remote": 0, "config_updates": 0,
            "config_rejected": 0, "downstream_rq_http2": 0,
            # HTTP/2 streams into the app while HTTPChaos rules were on: not acted on (§5.5).
            "http_chaos_http2_unaffected": 0,
        }
        self._old_exporters: set[asyncio.Task[None]] = set()
        self.planner = RoutePlanner(self.picker, pod=pod, namespace=namespace, fqdn=self.fqdn,
                                    mode=mode)
        # The attributes every span of this sidecar starts with (§3), built once.
        self._span_base: dict[str, str | int | float] = {
            "node_id": self.peer_id, "component": "proxy", "istio.namespace": namespace,
            "istio.canonical_service": service, "meshchaos.pod": pod}
        self.quit_event: asyncio.Event | None = None  # set by the process runner
        # Requests on the callback path (no task), for the shutdown drain.
        self.fast_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the listeners' loop

    # -- configuration ----------------------------------------------------------

    def apply_config(self, doc: Any) -> SidecarConfig:
        """Check and install a whole configuration document (SidecarConfigError if bad)."""
        cfg = parse_config(doc)
        al = cfg.mesh.access_log
        # Compiling the log format is the last step that can fail; nothing changed before it.
        self.access_log.configure(al.enabled, al.encoding, al.format)
        self.faults.set_rules(cfg.faults)
        self.http_chaos.set_rules(cfg.http_faults)
        if cfg.app_port:
            self.app_port = cfg.app_port
        self._configure_exporter(cfg.mesh.otlp_endpoint, cfg.mesh.otlp_headers)
        self.planner.reset()
        self.cfg = cfg
        self.stats["config_updates"] += 1
        return cfg

    def _configure_exporter(self, endpoint: str,
                            headers: tuple[tuple[str, str], ...] = ()) -> None:
        if (self.exporter is not None and self.exporter.endpoint == endpoint.rstrip("/")
                and self.exporter.headers == headers):
            return
        if self.exporter is not None:
            task = asyncio.get_running_loop().create_task(self.exporter.stop())
            self._old_exporters.add(task)
            task.add_done_callback(self._old_exporters.discard)
            self.exporter = None
        if endpoint:
            self.exporter = SpanExporter(
                endpoint, f"{self.service}.{self.namespace}",
                {"k8s.pod.name": self.pod, "k8s.namespace.name": self.namespace},
                headers=headers)
            self.exporter.start()

    async def close(self) -> None:
        """Flush the access log and the spans, close upstream connections."""
        self.access_log.close()
        if self.exporter is not None:
            await self.exporter.stop()
        for task in list(self._old_exporters):
            await task
        await self.pool.close()
        await self.h2_pool.close()

    # -- tracing ------------------------------------------------------------------

    def _trace(self, cfg: SidecarConfig, headers: dict[str, str], name: str, *,
               child_spans: bool,
               repeated: dict[str, list[str]] | None = None) -> tuple[TraceCtx | None, str]:
        """Extract, decide sampling and make this sidecar's span context (§3).

        ``repeated`` holds the separate values of fields sent more than once: Envoy's
        extractor reads the *first* ``traceparent`` field and all ``tracestate`` fields
        joined with ``,``; its ``injectContext`` then sets one ``traceparent`` and sets
        ``tracestate`` to the span's, which is empty for a trace this sidecar starts.
        """
        incoming = headers.get("traceparent")
        parent = ""
        tracestate = ""
        if incoming is None:
            trace_id = new_trace_id()
            sampled = random.random() * 100.0 < cfg.mesh.sampling_percent
        else:
            if repeated is not None and "traceparent" in repeated:
                incoming = repeated["traceparent"][0]
            ctx = parse_traceparent(incoming)
            if ctx is None:
                return None, ""  # Envoy's NullSpan: headers pass through unchanged
            trace_id, sampled, parent = ctx.trace_id, ctx.sampled, ctx.span_id
            if repeated is not None and "tracestate" in repeated:
                tracestate = ",".join(repeated["tracestate"])
            else:
                tracestate = headers.get("tracestate", "")
        span_id = new_span_id()
        if not child_spans:
            headers["traceparent"] = format_traceparent(trace_id, span_id, sampled)
        headers["tracestate"] = tracestate
        record = sampled and self.exporter is not None
        # Shared, never mutated: spans copy it before adding their own attributes.
        attrs = self._span_base if record else _NO_ATTRS
        return TraceCtx(trace_id, span_id, sampled, record, child_spans, name, attrs, []), parent

    def _finish_spans(self, trace: TraceCtx | None, parent: str, txn: Txn, kind: int,
                      start_ns: int) -> None:
        if trace is None or not trace.record or self.exporter is None:
            return
        direction = "inbound" if kind == KIND_SERVER else "outbound"
        url = self._url(txn)
        attrs: dict[str, str | int | float] = {
            "http.method": txn.method, "http.url": url, "http.status_code": txn.status,
            "response_flags": txn.flags_text(), "upstream_cluster": txn.upstream_cluster or "-",
            "guid:x-request-id": txn.req_headers.get("x-request-id", ""),
            "meshchaos.direction": direction, "http.protocol": txn.protocol,
        }
        error = txn.status == 0 or txn.status >= 500
        if txn.protocol != "HTTP/1.1" and is_grpc(txn.req_headers):
            # §1.9: Envoy's addGrpcRequestTags / addGrpcResponseTags on the sidecar's span.
            tags, grpc_error = grpc_span_tags(txn.req_headers, txn.authority, txn.status,
                                              txn.resp_headers, txn.resp_trailers)
            attrs.update(tags)
            attrs["grpc.path"] = txn.path
            error = error or grpc_error
        if kind == KIND_CLIENT:
            attrs["meshchaos.attempt"] = txn.attempts
            expected = txn.req_headers.get("x-envoy-expected-rq-timeout-ms")
            if expected and expected.isdigit():
                attrs["meshchaos.expected_rq_timeout_ms"] = int(expected)
        span = Span(trace.trace_id, trace.span_id, parent, trace.name, kind, start_ns, now_ns(),
                    attrs, error, trace.base_attrs)
        exporter = self.exporter
        exporter.add(span)
        for child in trace.spans:
            child_attrs = child.attributes
            child_attrs["upstream_cluster"] = attrs["upstream_cluster"]
            child_attrs["guid:x-request-id"] = attrs["guid:x-request-id"]
            child_attrs["http.method"] = txn.method
            child_attrs["http.url"] = url
            exporter.add(child)

    # -- shared request plumbing ----------------------------------------------------

    def _begin(self, req: Request, conn: ServerConnection, path: str,
               authority: str) -> tuple[Txn, dict[str, str]]:
        headers = req.headers
        if "connection" not in headers and _HOP_BY_HOP.isdisjoint(headers):
            # The common case, edited in place: the parsed request's dict is ours alone.
            headers.pop("host", None)
            headers.pop("x-envoy-internal", None)  # as clean_request_headers does (§1.7.1)
        else:
            headers = clean_request_headers(headers)
        # The connection's loop: asyncio.get_running_loop() is a getpid() syscall on 3.11.
        loop = self._loop = conn.loop or asyncio.get_running_loop()
        txn = Txn(loop.time(), time.time(), req.method, path, authority, headers)
        txn.downstream_local = conn.local_text
        txn.downstream_remote = conn.peer_text
        txn.bytes_received = len(req.body)
        if type(conn) is not ServerConnection:  # an HTTP/2 stream (H2StreamConn)
            txn.protocol = "HTTP/2"
        return txn, headers

    def _end(self, txn: Txn, resp: Response | None) -> None:
        txn.end = (self._loop or asyncio.get_running_loop()).time()
        if resp is not None:
            txn.status = resp.status
            txn.resp_headers = resp.headers
            txn.bytes_sent = len(resp.body)
        self.access_log.log(txn)

    def _disconnected(self, txn: Txn, flag: str = "DC",
                      details: str = "downstream_remote_disconnect") -> None:
        """The downstream closed before we answered: Envoy logs ``0 DC`` (§1.6), or ``0 DR``
        for an HTTP/2 stream the client reset (§1.9)."""
        txn.status = 0
        txn.add_flag(flag)
        txn.details = details
        self.stats["downstream_cx_destroy_remote"] += 1

    @staticmethod
    def _ensure_ids(headers: dict[str, str]) -> None:
        if "x-request-id" not in headers:
            headers["x-request-id"] = new_request_id()
        if "x-forwarded-proto" not in headers:
            headers["x-forwarded-proto"] = "http"

    # -- both listeners: the request after its prelude -------------------------------------

    def _settle(self, ex: _Exchange, resp: Response) -> None:
        """Record a finished exchange: counters, access log line, spans."""
        txn = ex.txn
        if type(resp) is H2Response and resp.trailers:
            txn.resp_trailers = resp.trailers  # %GRPC_STATUS%, %TRAILER()%, the span's tags
        if ex.kind == KIND_CLIENT:
            if txn.flags and "UT" in txn.flags:
                self.stats["rq_timeout"] += 1
            if txn.attempts > 1:
                self.stats["upstream_rq_retry"] += txn.attempts - 1
        self._end(txn, resp)
        self._finish_spans(ex.trace, ex.parent, txn, ex.kind, ex.start_ns)

    def _lost(self, ex: _Exchange) -> None:
        """The downstream left mid-request: ``0 DC`` in the log and the span (§1.6)."""
        self._disconnected(ex.txn, getattr(ex.conn, "lost_flag", "DC"),
                           getattr(ex.conn, "lost_details", "downstream_remote_disconnect"))
        self._end(ex.txn, None)
        self._finish_spans(ex.trace, ex.parent, ex.txn, ex.kind, ex.start_ns)

    async def _rest(self, ex: _Exchange, state: TryState | None) -> Response:
        """The coroutine path: fault holds, new connections, retries after a backoff."""
        try:
            if ex.kind == KIND_SERVER and self.faults.active and self.faults.partitioned(ex.peer):
                await stall()  # packets from a black-holed peer never arrive
            assert ex.up is not None  # only a local reply has no upstream; it is not forwarded
            # An HTTP/2 cluster's tries take streams from the HTTP/2 pool, which has the
            # HTTP/1.1 pool's interface (localmesh/sidecar/h2.py).
            pool = cast(ConnectionPool, self.h2_pool) if ex.up.http2 else self.pool
            resp = await call_upstream(pool, self.picker, self.faults, ex.up, ex.txn,
                                       ex.req.method, ex.target, ex.headers, ex.req.body,
                                       ex.trace, state)
        except asyncio.CancelledError:
            if ex.conn.lost:
                self._lost(ex)
            raise
        self._settle(ex, resp)
        if ex.kind == KIND_SERVER and self.faults.active:
            # The response is this pod's egress: netem holds it after Envoy wrote it.
            await self.faults.egress(ex.peer, len(resp.body) + 256)
        return resp

    def _fast(self, ex: _Exchange) -> None:
        """The callback path for a request whose first try needs no task: an idle
        keep-alive connection is ready and no fault touches the request, or (outbound) only
        a delay, held by the fault engine; anything else goes on in :meth:`_rest`, from the
        try already begun (outbound) or from the start (inbound, whose partition stall
        comes before any try)."""
        up, faults, conn = ex.up, self.faults, ex.conn
        assert up is not None  # only a local reply has no upstream; it is not forwarded
        if up.http2 or (faults.active and ex.kind == KIND_SERVER and faults.affects(ex.peer)):
            # A possible partition stall comes before any try (no upstream in the log line);
            # an HTTP/2 cluster's streams are not on the callback path.
            conn.adopt(self._rest(ex, None))
            return
        loop = self._loop or asyncio.get_running_loop()
        st = TryState(loop.time(), up)
        ep = begin_try(st, st.t0, self.picker, up, ex.txn, ex.headers, ex.trace)
        st.stage = "prepared"
        upstream = None
        delay = 0.0
        if not faults.active or ex.kind == KIND_SERVER \
                or not (up.egress_faults and faults.affects(ep.peer)):
            upstream = self.pool.take_idle(ep.host, ep.port)
        elif ex.kind == KIND_CLIENT and faults.delay_only(ep.peer):
            # A delayed send is held here, by the fault engine's deadline heap, rather than
            # in a sleeping task: released on the first poll past its deadline.
            upstream = self.pool.take_idle(ep.host, ep.port)
            if upstream is not None:
                delay = faults.delay_for(ep.peer, len(ex.req.body) + 256) or 0.0
        if upstream is None:
            conn.adopt(self._rest(ex, st))
            return
        self.fast_in_flight += 1
        ftry = FastTry(self.pool, up, st, ex.txn, ex.trace,
                       lambda resp: self._fast_done(ex, st, resp))
        conn.on_lost = lambda: self._fast_lost(ex, ftry)
        ftry.start(loop, upstream, ex.req.method, ex.target, ex.headers, ex.req.body,
                   faults if delay else None, delay)

    def _fast_done(self, ex: _Exchange, st: TryState, resp: Response | None) -> None:
        self.fast_in_flight -= 1
        conn = ex.conn
        if resp is None:  # a retry: its backoff and the next tries run in a coroutine
            st.stage = "backoff"
            conn.adopt(self._rest(ex, st))
        else:
            # The answer first (the bookkeeping is off the latency path), then the log line,
            # then the connection's next pipelined request, so log lines keep request order.
            req = ex.req
            conn.write(resp, req.keep_alive, req.method == "HEAD")
            try:
                self._settle(ex, resp)
            except Exception:  # a bug here must not leave the downstream hanging
                log.exception("settling %s %s failed", req.method, ex.target)
            conn.respond(None)
        self.faults.run_due()  # each I/O callback polls the fault holds (see faults.py)

    def _fast_lost(self, ex: _Exchange, ftry: FastTry) -> None:
        self.fast_in_flight -= 1
        ftry.abandon()
        self._lost(ex)

    # -- inbound ------------------------------------------------------------------------

    def _inbound(self, req: Request, conn: ServerConnection) -> _Exchange | Response:
        """Everything before the first try (synchronous); a Response is an early answer."""
        cfg = self.cfg
        self.stats["downstream_rq_inbound"] += 1
        txn, headers = self._begin(req, conn, req.target, req.headers.get("host", ""))
        peer = parse_peer_id(headers.pop(PEER_HEADER, None))
        if cfg is None:
            early = local_reply(503, "no configuration yet")
            self._end(txn, early)
            return early
        if not cfg.mesh.honor_app_envoy_headers:
            strip_internal(headers)
        self._ensure_ids(headers)
        up, span_name = self.planner.inbound(cfg, txn.authority, self.app_port)
        txn.upstream_cluster = up.cluster
        txn.route_name = "default"
        start_ns = now_ns()
        trace, parent = self._trace(cfg, headers, span_name, child_spans=False,
                                    repeated=req.repeated)
        return _Exchange(KIND_SERVER, req, conn, txn, headers, req.target, peer, up, trace,
                         parent, start_ns)

    async def handle_inbound(self, req: Request, conn: ServerConnection) -> Response | None:
        """Callers' sidecars → this pod's app (listener ``inbound|<port>||``)."""
        if self.http_chaos.active:  # chaos-tproxy is on the wire before the sidecar (§5.5)
            return await self.http_chaos.serve(
                req, conn, self.app_port, lambda r: self._serve(self._inbound(r, conn)))
        return await self._serve(self._inbound(req, conn))

    def fast_inbound(self, req: Request, conn: ServerConnection) -> bool:
        """:meth:`handle_inbound` without a task in the common case (server fast hook)."""
        self.faults.run_due()  # each I/O callback polls the fault holds (see faults.py)
        if self.http_chaos.active:
            return False  # HTTPChaos edits the answer: the coroutine path, handle_inbound
        return self._serve_fast(self._inbound(req, conn), conn)

    async def _serve(self, ex: _Exchange | Response) -> Response | None:
        if isinstance(ex, Response):
            return ex
        if ex.up is not None and ex.up.fault is not None:
            verdict = self._fault_filter(ex)
            if isinstance(verdict, Response):
                return verdict
            if verdict:
                return await self._after_delay(ex, verdict)
        return await self._rest(ex, None)

    def _serve_fast(self, ex: _Exchange | Response, conn: ServerConnection) -> bool:
        if isinstance(ex, Response):
            conn.respond(ex)
            return True
        if ex.up is not None and ex.up.fault is not None:
            verdict = self._fault_filter(ex)
            if isinstance(verdict, Response):
                conn.respond(verdict)
                return True
            if verdict:
                conn.adopt(self._after_delay(ex, verdict))
                return True
        self._fast(ex)
        return True

    # -- the route's fault filter, before the router (docs/fidelity.md §2.4) ----------------

    def _fault_filter(self, ex: _Exchange) -> Response | float:
        """Envoy's ``FaultFilter::decodeHeaders``: the seconds to delay (flag DI), else the
        abort's local reply (flag FI), else 0.0 (on to the router)."""
        assert ex.up is not None and ex.up.fault is not None  # the caller checked
        fault = ex.up.fault
        if fault.delays():
            ex.txn.add_flag("DI")
            return fault.delay_s
        if fault.aborts():
            return self._abort(ex, fault)
        return 0.0

    async def _after_delay(self, ex: _Exchange, delay_s: float) -> Response:
        """Hold the request (never shorter than asked), then, as ``postDelayInjection``
        does, abort it or hand it to the router, whose route timer only starts now."""
        loop = asyncio.get_running_loop()
        released: asyncio.Future[None] = loop.create_future()
        hold = self.faults.after(loop, time.monotonic(), delay_s,
                                 lambda: None if released.done() else released.set_result(None))
        try:
            await released
        except asyncio.CancelledError:
            hold.cancel()  # the downstream left during the delay: nothing goes upstream
            if ex.conn.lost:
                self._lost(ex)
            raise
        assert ex.up is not None and ex.up.fault is not None  # set when the delay began
        if ex.up.fault.aborts():
            return self._abort(ex, ex.up.fault)
        return await self._rest(ex, None)

    def _abort(self, ex: _Exchange, fault: RouteFault) -> Response:
        """``FaultFilter::abortWithStatus``: a local reply that never reaches the router, so
        it has no upstream host, no try and no retry. A gRPC abort is answered 200 and, to a
        gRPC request, trailers-only with its own ``grpc-status`` and the body as
        ``grpc-message`` (``sendLocalReply``'s ``grpc_status`` override), so the log's
        %GRPC_STATUS% and the span read that code (§2.4, §1.9)."""
        txn = ex.txn
        txn.add_flag("FI")
        txn.details = "fault_filter_abort"
        resp = local_reply(fault.abort_status, "fault filter abort")
        if fault.abort_grpc_status is not None and txn.protocol == "HTTP/2" \
                and is_grpc(ex.headers):
            resp = grpc_local_reply(resp, fault.abort_grpc_status)
        self._settle(ex, resp)
        return resp

    @staticmethod
    def _url(txn: Txn) -> str:
        return f"http://{txn.authority}{txn.path}"

    # -- outbound -------------------------------------------------------------------------

    def _outbound(self, req: Request, conn: ServerConnection) -> _Exchange | Response:
        """Everything before the first try (synchronous); a Response is a local reply."""
        cfg = self.cfg
        self.stats["downstream_rq_outbound"] += 1
        path, authority = split_target(req)
        txn, headers = self._begin(req, conn, path, authority)
        if cfg is None:
            early = local_reply(503, "no configuration yet")
            self._end(txn, early)
            return early
        overrides = sanitize(cfg, headers)
        headers[PEER_HEADER] = self.peer_id
        self._ensure_ids(headers)
        start_ns = now_ns()
        # The span starts before routing (as the HCM's does), so local replies (NR, UH)
        # still appear in the trace; it is renamed after the route once one is found.
        trace, parent = self._trace(cfg, headers, f"{txn.authority}/*", child_spans=True,
                                    repeated=req.repeated)
        try:
            up, name = self.planner.outbound(cfg, txn, headers, overrides)
        except Reject as rej:
            txn.add_flag(rej.flag)
            txn.details = rej.details
            resp = local_reply(rej.status, rej.body)
            self._settle(_Exchange(KIND_CLIENT, req, conn, txn, headers, path, None, None,
                                   trace, parent, start_ns), resp)
            return resp
        if trace is not None:
            trace.name = name
        return _Exchange(KIND_CLIENT, req, conn, txn, headers, path, None, up, trace, parent,
                         start_ns)

    async def handle_outbound(self, req: Request, conn: ServerConnection) -> Response | None:
        """The app's HTTP_PROXY (or, in gateway mode, the ingress) → a Service."""
        return await self._serve(self._outbound(req, conn))

    def fast_outbound(self, req: Request, conn: ServerConnection) -> bool:
        """:meth:`handle_outbound` without a task in the common case (server fast hook)."""
        self.faults.run_due()  # each I/O callback polls the fault holds (see faults.py)
        return self._serve_fast(self._outbound(req, conn), conn)

    # -- HTTP/2 streams (localmesh/sidecar/h2.py, docs/fidelity.md §1.9) -----------------------

    def h2_switch(self, outbound: bool) -> Any:
        """The listener's hook for a connection that opens with the HTTP/2 preface."""
        def switch(conn: ServerConnection, transport: asyncio.BaseTransport,
                   received: bytes) -> None:
            switch_to_h2(conn, transport, received,
                         lambda req, sconn: self.serve_h2(req, sconn, outbound))
        return switch

    async def serve_h2(self, req: Request, sconn: H2StreamConn,
                       outbound: bool) -> Response | None:
        """One HTTP/2 stream's request through the same listener code as HTTP/1.1; a gRPC
        request gets Envoy's gRPC timeout and its local replies trailers-only (§1.9)."""
        self.stats["downstream_rq_http2"] += 1
        if not outbound and self.http_chaos.active:
            # The HTTPChaos rules are HTTP/1.1 ones (httpfaults.py): an HTTP/2 stream passes
            # them by, counted here; the chaos object carries a Warning event (§5.5).
            self.stats["http_chaos_http2_unaffected"] += 1
        conn = cast(ServerConnection, sconn)  # the request code reads loop, addresses, lost
        te = req.headers.get("te")
        grpc = is_grpc(req.headers)
        ex = self._outbound(req, conn) if outbound else self._inbound(req, conn)
        if isinstance(ex, Response):
            return grpc_local_reply(ex) if grpc else ex
        if te == "trailers":
            # The one TE value HTTP/2 allows (RFC 9113 §8.2.2), which gRPC servers require;
            # Envoy's sanitising keeps it where HTTP/1.1's hop-by-hop rule drops the field.
            ex.headers["te"] = te
        if grpc and ex.up is not None:
            ex.up = grpc_route(ex.up, ex.headers)
        resp = await self._serve(ex)
        if grpc and resp is not None and ex.txn.details != "via_upstream" \
                and "grpc-status" not in resp.headers:  # a gRPC abort already is (§2.4)
            return grpc_local_reply(resp)
        return resp

    # -- a request head over Envoy's limits ---------------------------------------------

    def refuse_head(self, req: Request, conn: ServerConnection, status: int,
                    details: str) -> Response:
        """The codec's local reply to a head over a limit (§1.8): ``431``, flag ``DPE``
        (the HCM's codec error), no route, no upstream, no span; the connection closes."""
        path, authority = split_target(req)
        txn, _ = self._begin(req, conn, path, authority)
        txn.add_flag("DPE")
        txn.details = details
        resp = Response(status, {"content-type": "text/plain"}, b"Request Header Fields Too Large")
        self._end(txn, resp)
        return resp

    # -- admin --------------------------------------------------------------------------

    async def handle_admin(self, req: Request, conn: ServerConnection) -> Response | None:
        """The admin listener (``localmesh.sidecar.admin``)."""
        return admin.handle(self, req)

    def stats_snapshot(self) -> dict[str, Any]:
        """Counters for ``GET /stats``."""
        out: dict[str, Any] = dict(self.stats)
        out["config_version"] = self.cfg.version if self.cfg else None
        out["access_log_lines"] = self.access_log.lines_written
        out["fault_holds"] = self.faults.holds
        out["fault_hold_seconds_total"] = round(self.faults.hold_seconds_total, 6)
        out["fault_last_hold_ms"] = round(self.faults.last_hold_s * 1000, 3)
        out["fault_hold_overshoot_us"] = self.faults.overshoot.snapshot()
        out.update(self.http_chaos.stats)
        if self.exporter is not None:
            out["spans_exported"] = self.exporter.exported
            out["spans_dropped"] = self.exporter.dropped
            out["span_batches_failed"] = self.exporter.failed_batches
        return out

    def request_quit(self) -> None:
        if self.quit_event is not None:
            self.quit_event.set()
