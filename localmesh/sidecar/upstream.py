"""Envoy's router for one downstream request: tries, timers, retries and local replies.

Semantics (docs/fidelity.md):
- the global (route) timeout spans every try and is armed when the downstream
  request is complete (§1.1); a per-try timeout applies only if it is shorter
  (§1.2); on expiry the try's connection is closed (H1 reset, §1.1);
- a per-try timeout is retried only with ``5xx``/``gateway-error``/``reset``
  (§1.2); connect failures also with ``connect-failure`` (§1.3);
- backoff is fully jittered: the N-th retry waits [0, 2^(N-1)·25 ms), at most 250 ms (§1.3);
- ``x-envoy-expected-rq-timeout-ms`` is set only when > 0 and recomputed with
  the elapsed time on each retry (§1.5); ``x-envoy-attempt-count`` on each try;
- failures become Envoy's local replies with its bodies, details and flags (§1.6).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from localmesh.http.client import ClientConnection, ConnectionPool
from localmesh.http.errors import ConnectError, HttpError, HttpProtocolError, StreamReset
from localmesh.http.message import HOP_BY_HOP, Response
from localmesh.sidecar.config import Endpoint, RetryPolicy, RouteFault
from localmesh.sidecar.faults import FaultEngine, Hold, stall
from localmesh.sidecar.grpc import format_grpc_timeout, parse_grpc_timeout
from localmesh.sidecar.routing import Picker
from localmesh.sidecar.tracing import KIND_CLIENT, Span, format_traceparent, new_span_id, now_ns
from localmesh.sidecar.txn import Txn

__all__ = ["FastTry", "TraceCtx", "TryDone", "TryState", "Upstream", "backoff_s", "begin_try",
           "call_upstream", "grpc_route", "local_reply", "try_failure", "try_response",
           "try_timeout"]

_GRPC_RETRY = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8",
               "internal": "13", "unavailable": "14"}
_RESET_RETRY = frozenset({"5xx", "gateway-error", "reset"})
_BACKOFF_BASE_MS = 25
_BACKOFF_MAX_MS = 250


@dataclass(slots=True)
class TraceCtx:
    """The sidecar's own span context for one request; ``spans`` collects what to export."""

    trace_id: str
    span_id: str
    sampled: bool
    record: bool
    child_spans: bool
    name: str
    base_attrs: dict[str, str | int | float]
    spans: list[Span]


@dataclass(slots=True, kw_only=True)
class Upstream:
    """Where one request goes and under which policy (every duration in ms, 0 = none)."""

    cluster: str
    endpoints: list[Endpoint]
    pick_key: tuple[str, str]
    connect_timeout_ms: float
    timeout_ms: float  # the route's (global) timeout
    per_try_timeout_ms: float
    policy: RetryPolicy
    authority: str
    # Router-generated x-envoy-* request headers: outbound routes only (§1.3, §1.5).
    timeout_headers: bool
    # Faults shape the pod's network egress; the sidecar→app hop on lo is not shaped (§5.2).
    egress_faults: bool
    # The route's VirtualService fault, run before this router (§2.4); outbound routes only.
    fault: RouteFault | None = None
    # The cluster speaks HTTP/2 (Istio's protocol selection, docs/fidelity.md §2.5).
    http2: bool = False
    # A gRPC request's copy: finalTimeout's gRPC timeout applied, grpc-timeout rewritten
    # on each try (§1.9).
    grpc: bool = False


class _TryFailed(Exception):
    """One try ended without a usable response."""

    def __init__(self, kind: str, reason: str = "", transport: str = "") -> None:
        super().__init__(kind)
        self.kind = kind  # connect | reset | protocol | per_try_timeout
        self.reason = reason
        self.transport = transport


def grpc_route(up: Upstream, headers: Mapping[str, str]) -> Upstream:
    """§1.9 ``FilterUtility::finalTimeout`` for a gRPC request: Istio sets the route's
    ``max_grpc_timeout`` to its timeout (0 on the inbound route and without one: no cap), so
    the global timeout is ``grpc-timeout`` capped at it, or the cap when the header is absent
    or unparsable; a per-try timeout counts only below the global one."""
    cap = up.timeout_ms
    header_ms = parse_grpc_timeout(headers.get("grpc-timeout"))
    timeout = float(header_ms) if header_ms is not None else 0.0
    if cap and (timeout == 0 or timeout > cap):
        timeout = cap
    per_try = up.per_try_timeout_ms
    if per_try and timeout and per_try >= timeout:
        per_try = 0.0
    return dataclasses.replace(up, timeout_ms=timeout, per_try_timeout_ms=per_try, grpc=True)


def local_reply(status: int, body: str) -> Response:
    data = body.encode()
    return Response(status, {"content-type": "text/plain", "server": "envoy"}, data)


def _reset_body(reason: str, transport: str, retried: bool) -> str:
    text = "upstream connect error or disconnect/reset before headers. "
    if retried:
        text += "retried and the latest "
    text += f"reset reason: {reason}"
    if transport:
        text += f", transport failure reason: {transport}"
    return text


def _reset_details(reason: str, transport: str) -> str:
    inner = reason if not transport else f"{reason}|{transport}"
    return "upstream_reset_before_response_started{" + inner.replace(" ", "_") + "}"


def _flag_for(kind: str) -> str:
    return {"connect": "UF", "reset": "UC", "protocol": "UPE", "stream_reset": "UR"}.get(kind, "UT")


def _retriable_failure(f: _TryFailed, retry_on: frozenset[str]) -> bool:
    if retry_on & _RESET_RETRY:
        return True
    if f.kind == "connect":
        return "connect-failure" in retry_on or "reset-before-request" in retry_on
    return f.reason == "remote refused stream reset" and "refused-stream" in retry_on


def _retriable_response(resp: Response, policy: RetryPolicy) -> bool:
    s, ro = resp.status, policy.retry_on
    if s >= 500 and "5xx" in ro:
        return True
    if s in (502, 503, 504) and "gateway-error" in ro:
        return True
    if s == 409 and "retriable-4xx" in ro:
        return True
    if "retriable-status-codes" in ro and s in policy.retriable_status_codes:
        return True
    grpc = resp.headers.get("grpc-status")
    if grpc is None:  # gRPC puts it in the trailers unless the answer is trailers-only
        trailers: dict[str, str] | None = getattr(resp, "trailers", None)
        grpc = trailers.get("grpc-status") if trailers else None
    return grpc is not None and any(_GRPC_RETRY.get(t) == grpc for t in ro)


def _expected_timeout(per_try_timeout_ms: float, timeout_ms: float, elapsed_ms: float) -> int:
    """§1.5 ``setTimeoutHeaders``: the value to send, 0 = no header."""
    expected = per_try_timeout_ms or timeout_ms
    if expected > 0 and timeout_ms > 0:
        expected = 1 if elapsed_ms >= timeout_ms else min(expected, timeout_ms - elapsed_ms)
    return int(expected) if expected > 0 else 0


async def _connect(pool: ConnectionPool, faults: FaultEngine | None, ep: Endpoint,
                   timeout_s: float) -> ClientConnection | None:
    """The stream for one try, as the connection pool hands it over; None = an established
    connection to a partitioned peer (ready at once, but every byte sent to it vanishes)."""
    if faults is not None and faults.partitioned(ep.peer):
        if pool.idle_count(ep.host, ep.port):
            return None
        await asyncio.sleep(timeout_s)  # SYNs vanish: the caller's own connect timeout
        raise _TryFailed("connect", "connection timeout")
    try:
        return await pool.acquire(ep.host, ep.port, timeout_s)
    except ConnectError as exc:
        raise _TryFailed("connect", exc.reason, exc.transport_failure) from None


class TryState:
    """Where one request's router is: its tries so far and the current try's timers.

    ``stage`` says how :func:`call_upstream` resumes a request that the callback
    fast path (:class:`FastTry`) hands over: ``"new"`` starts a try, ``"prepared"``
    runs the try already begun (endpoint picked, headers set), ``"backoff"`` waits
    the retry backoff first.
    """

    __slots__ = ("attempt", "child", "ep", "global_deadline", "previous", "stage", "t0",
                 "try_deadline")

    def __init__(self, t0: float, up: Upstream) -> None:
        self.t0 = t0
        self.global_deadline = t0 + up.timeout_ms / 1000.0 if up.timeout_ms else None
        self.attempt = 0
        self.previous: set[tuple[str, int]] = set()
        self.ep: Endpoint | None = None
        self.child: Span | None = None
        self.try_deadline: float | None = None
        self.stage = "new"

    def deadline(self) -> float | None:
        """When the current try's timer fires (route or per-try timeout), if ever."""
        return _earliest(self.global_deadline, self.try_deadline)


def begin_try(st: TryState, now: float, picker: Picker, up: Upstream, txn: Txn,
              headers: dict[str, str], trace: TraceCtx | None) -> Endpoint:
    """Start the next try: pick the endpoint, set the router's headers, open the child span."""
    st.attempt = attempt = st.attempt + 1
    txn.attempts = attempt
    ep = picker.pick(up.pick_key, up.endpoints, st.previous)
    st.previous.add((ep.host, ep.port))
    st.ep = ep
    txn.upstream_host = ep.address
    if up.timeout_headers:
        headers["x-envoy-attempt-count"] = str(attempt)
        if up.per_try_timeout_ms or up.timeout_ms:
            # §1.5: elapsed is 0 on the first try; doRetry() recomputes it for retries
            elapsed_ms = (now - st.t0) * 1000 if attempt > 1 else 0.0
            expected = _expected_timeout(up.per_try_timeout_ms, up.timeout_ms, elapsed_ms)
            headers["x-envoy-expected-rq-timeout-ms"] = str(expected)
    if up.grpc:
        _grpc_timeout_header(st, now, up, headers)
    st.child = _start_child(trace, headers, attempt)
    st.try_deadline = now + up.per_try_timeout_ms / 1000.0 if up.per_try_timeout_ms else None
    return ep


def _grpc_timeout_header(st: TryState, now: float, up: Upstream,
                         headers: dict[str, str]) -> None:
    """§1.9 ``setTimeoutHeaders``: with ``max_grpc_timeout`` on the route (Istio always sets
    it), ``grpc-timeout`` becomes the try's expected timeout; none when that is 0."""
    elapsed_ms = (now - st.t0) * 1000 if st.attempt > 1 else 0.0
    expected = _expected_timeout(up.per_try_timeout_ms, up.timeout_ms, elapsed_ms)
    if expected > 0:
        headers["grpc-timeout"] = format_grpc_timeout(expected)


def try_response(st: TryState, up: Upstream, txn: Txn, trace: TraceCtx | None,
                 resp: Response, headers_at: float) -> Response | None:
    """A try got a response: the one to send downstream, or None to retry after a backoff."""
    _end_child(trace, st.child, resp.status, "")
    policy = up.policy
    status = resp.status
    if status < 409 and status not in policy.retriable_status_codes \
            and "grpc-status" not in resp.headers and not up.grpc:
        pass  # the common answer: no retry_on token can match it (see _retriable_response)
    elif policy.num_retries and _retriable_response(resp, policy):
        if st.attempt <= policy.num_retries:
            return None
        txn.add_flag("URX")
    return _proxied(resp, txn, headers_at - st.t0)


def try_failure(st: TryState, up: Upstream, txn: Txn, trace: TraceCtx | None,
                f: _TryFailed) -> Response | None:
    """A try failed (connect, reset, protocol): the local reply, or None to retry."""
    _end_child(trace, st.child, 0, f.reason)
    return _after_failure(st, up, txn, f, _retriable_failure(f, up.policy.retry_on))


def try_timeout(st: TryState, up: Upstream, txn: Txn, trace: TraceCtx | None) -> Response | None:
    """The try's timer fired: a 504 for the route timeout, else per-try (None = retry)."""
    if st.try_deadline is None or (st.global_deadline is not None
                                   and st.global_deadline <= st.try_deadline):
        _end_child(trace, st.child, 0, "response_timeout")
        txn.add_flag("UT")
        txn.details = "response_timeout"
        return local_reply(504, "upstream request timeout")
    _end_child(trace, st.child, 0, "upstream_per_try_timeout")
    return _after_failure(st, up, txn, _TryFailed("per_try_timeout"),
                          bool(up.policy.retry_on & _RESET_RETRY))


def _after_failure(st: TryState, up: Upstream, txn: Txn, f: _TryFailed,
                   retriable: bool) -> Response | None:
    policy = up.policy
    if retriable and st.attempt <= policy.num_retries:
        return None
    return _failure_reply(f, txn, retried=st.attempt > 1,
                          exhausted=retriable and policy.num_retries > 0)


def _try_error(exc: HttpError) -> _TryFailed:
    if isinstance(exc, HttpProtocolError):
        return _TryFailed("protocol", exc.reason)
    if isinstance(exc, StreamReset):
        return _TryFailed("stream_reset", exc.reason)
    return _TryFailed("reset", exc.reason)


async def _stream(pool: ConnectionPool, shaping: FaultEngine | None, ep: Endpoint,
                  up: Upstream) -> ClientConnection | None:
    # Without faults an idle keep-alive connection needs no coroutine to be handed out.
    conn = pool.take_idle(ep.host, ep.port) if shaping is None else None
    if conn is None:
        return await _connect(pool, shaping, ep, up.connect_timeout_ms / 1000.0)
    return conn


async def _exchange(pool: ConnectionPool, shaping: FaultEngine | None, conn: ClientConnection |
                    None, up: Upstream, ep: Endpoint, method: str, target: str,
                    headers: dict[str, str], body: bytes, txn: Txn) -> tuple[Response, float]:
    if conn is None:
        await stall()  # established connections to a black hole just stall
        raise _TryFailed("reset")  # unreachable: stall() ends only by cancellation
    txn.upstream_local = conn.local_text
    try:
        if shaping is not None:
            await shaping.egress(ep.peer, len(body) + 256)
        resp = await conn.send(method, target, up.authority, headers, body)
    except HttpError as exc:  # ConnectionTerminated, HttpProtocolError, or another reset
        pool.discard(conn)
        raise _try_error(exc) from None
    except BaseException:
        pool.discard(conn)  # timer or downstream gone: close = H1 reset (§1.1)
        raise
    pool.release(conn)
    return resp, conn.headers_at


async def _one_try(pool: ConnectionPool, faults: FaultEngine, up: Upstream, ep: Endpoint,
                   st: TryState, method: str, target: str, headers: dict[str, str],
                   body: bytes, txn: Txn) -> tuple[Response, float]:
    """One try: the stream under the route timer alone, then the exchange under the route
    and per-try timers. Envoy arms the per-try timer when the pool hands the try a stream,
    so connection set-up does not count against it (docs/fidelity.md §1.2)."""
    shaping = faults if up.egress_faults and faults.active else None
    st.try_deadline = None
    async with asyncio.timeout_at(st.global_deadline):
        conn = await _stream(pool, shaping, ep, up)
    loop = asyncio.get_running_loop()
    st.try_deadline = loop.time() + up.per_try_timeout_ms / 1000.0 \
        if up.per_try_timeout_ms else None
    async with asyncio.timeout_at(st.deadline()):
        return await _exchange(pool, shaping, conn, up, ep, method, target, headers, body, txn)


def backoff_s(retry_number: int) -> float:
    """The wait before the ``retry_number``-th retry (1-based), as Envoy's backoff code draws
    it: a whole number of ms in ``[0, interval)``, the interval starting at the 25 ms base and
    doubling per retry up to 250 ms (docs/fidelity.md §1.3, DOC≠CODE: the code, not the doc)."""
    interval_ms = min(2 ** (max(retry_number, 1) - 1) * _BACKOFF_BASE_MS, _BACKOFF_MAX_MS)
    return random.randrange(interval_ms) / 1000.0


async def call_upstream(pool: ConnectionPool, picker: Picker, faults: FaultEngine,
                        up: Upstream, txn: Txn, method: str, target: str,
                        headers: dict[str, str], body: bytes,
                        trace: TraceCtx | None, state: TryState | None = None) -> Response:
    """Run every try of one request (from ``state``, if the fast path began it);
    return the response to send downstream."""
    loop = asyncio.get_running_loop()
    st = state if state is not None else TryState(loop.time(), up)
    stage = st.stage
    while True:
        if stage == "backoff" and not await _wait_backoff(loop, st.attempt,
                                                          st.global_deadline, txn):
            return local_reply(504, "upstream request timeout")
        if stage != "prepared":
            begin_try(st, loop.time(), picker, up, txn, headers, trace)
        stage = "backoff"
        ep = st.ep
        assert ep is not None  # begin_try picked it
        verdict: Response | None
        try:
            resp, headers_at = await _one_try(pool, faults, up, ep, st, method, target,
                                              headers, body, txn)
        except _TryFailed as f:
            verdict = try_failure(st, up, txn, trace, f)
        except TimeoutError:
            verdict = try_timeout(st, up, txn, trace)
        except BaseException:
            _end_child(trace, st.child, 0, "downstream_remote_disconnect")
            raise
        else:
            verdict = try_response(st, up, txn, trace, resp, headers_at)
        if verdict is not None:
            return verdict


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


async def _wait_backoff(loop: asyncio.AbstractEventLoop, retry_number: int,
                        global_deadline: float | None, txn: Txn) -> bool:
    """Sleep the jittered backoff; False when the route timeout fires first (504 UT)."""
    delay = backoff_s(retry_number)
    if global_deadline is not None and loop.time() + delay >= global_deadline:
        await asyncio.sleep(max(global_deadline - loop.time(), 0))
        txn.add_flag("UT")
        txn.details = "response_timeout"
        return False
    await asyncio.sleep(delay)
    return True


def _failure_reply(f: _TryFailed, txn: Txn, *, retried: bool, exhausted: bool) -> Response:
    txn.add_flag(_flag_for(f.kind))
    if exhausted:
        txn.add_flag("URX")
    if f.kind == "per_try_timeout":
        txn.details = "upstream_per_try_timeout"
        return local_reply(504, "upstream request timeout")
    txn.transport_failure = f.transport
    txn.details = _reset_details(f.reason, f.transport)
    status = 502 if f.kind == "protocol" else 503
    return local_reply(status, _reset_body(f.reason, f.transport, retried))


def _proxied(resp: Response, txn: Txn, service_time_s: float) -> Response:
    """The upstream's response as sent downstream; it is ours alone, so edit it in place."""
    headers = resp.headers
    headers.pop("content-length", None)  # in nearly every response: no set needed for it
    if not HOP_BY_HOP.isdisjoint(headers):
        for name in HOP_BY_HOP.intersection(headers):
            del headers[name]
    ms = int(service_time_s * 1000)
    headers["x-envoy-upstream-service-time"] = str(ms) if ms > 0 else "0"
    txn.details = "via_upstream"
    return resp


def _start_child(trace: TraceCtx | None, headers: dict[str, str], attempt: int) -> Span | None:
    """Envoy ``start_child_span``: one CLIENT span per try, the parent of the next hop."""
    if trace is None or not trace.child_spans:
        return None
    span_id = new_span_id()
    headers["traceparent"] = format_traceparent(trace.trace_id, span_id, trace.sampled)
    if not trace.record:
        return None
    attrs: dict[str, str | int | float] = {"meshchaos.attempt": attempt}
    return Span(trace.trace_id, span_id, trace.span_id, trace.name, KIND_CLIENT, now_ns(),
                attributes=attrs, shared=trace.base_attrs)


def _end_child(trace: TraceCtx | None, span: Span | None, status: int, failure: str) -> None:
    if trace is None or span is None:
        return
    span.end_ns = now_ns()
    span.attributes["http.status_code"] = status
    if failure:
        span.attributes["meshchaos.try_failure"] = failure
    span.error = status == 0 or status >= 500
    trace.spans.append(span)


# Called once when a fast try ends: the response to send downstream, or None when the
# router must go on in a coroutine (a retry after its backoff; the TryState says so).
TryDone = Callable[[Response | None], None]


class FastTry:
    """One try on an idle keep-alive connection, driven by callbacks instead of a task.

    The common case of a request (no fault on the path, a connection ready) costs no
    coroutine, future or task: the request is written at once, the response arrives
    in the connection's parser callback, the route/per-try timer is a loop timer
    handle. The verdicts are :func:`call_upstream`'s (``try_response``,
    ``try_failure``, ``try_timeout``), so the semantics are the same; anything that
    needs waiting (a backoff, a new connection) continues in :func:`call_upstream`.
    """

    __slots__ = ("_conn", "_done", "_handle", "_hold", "_pool", "_st", "_trace", "_txn", "_up")

    def __init__(self, pool: ConnectionPool, up: Upstream, st: TryState, txn: Txn,
                 trace: TraceCtx | None, done: TryDone) -> None:
        self._pool, self._up, self._st, self._txn, self._trace = pool, up, st, txn, trace
        self._done = done
        self._conn: ClientConnection | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._hold: Hold | None = None

    def start(self, loop: asyncio.AbstractEventLoop, conn: ClientConnection, method: str,
              target: str, headers: dict[str, str], body: bytes,
              faults: FaultEngine | None = None, delay: float = 0.0) -> None:
        """Send the try begun with :func:`begin_try` on ``conn`` (taken from the pool),
        after holding it ``delay`` seconds in ``faults`` (a delay-only fault, §5.2)."""
        self._conn = conn
        self._txn.upstream_local = conn.local_text
        st = self._st
        if st.global_deadline is not None or st.try_deadline is not None:  # else no timer
            deadline = st.deadline()
            if deadline is not None:
                self._handle = loop.call_at(deadline, self._expired)
        if faults is not None and delay > 0:
            start = time.monotonic()

            def release() -> None:
                self._hold = None
                faults.record_hold(delay, start)
                conn.start(method, target, self._up.authority, headers, body, self._response)
            self._hold = faults.after(loop, start, delay, release)
            return
        conn.start(method, target, self._up.authority, headers, body, self._response)

    def abandon(self) -> None:
        """The downstream went away: reset the try (close the connection, §1.1)."""
        if self._handle is not None:
            self._handle.cancel()
        if self._hold is not None:
            self._hold.cancel()
        conn = self._conn
        if conn is not None:
            conn.cancel()
            self._pool.discard(conn)
        _end_child(self._trace, self._st.child, 0, "downstream_remote_disconnect")

    def _response(self, resp: Response | None, exc: HttpError | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
        conn = self._conn
        assert conn is not None  # start() set it before the request was written
        st, up, txn, trace = self._st, self._up, self._txn, self._trace
        if resp is None:
            self._pool.discard(conn)
            failed = _try_error(exc) if exc is not None else _TryFailed("reset")
            self._done(try_failure(st, up, txn, trace, failed))
            return
        self._pool.release(conn)
        self._done(try_response(st, up, txn, trace, resp, conn.headers_at))

    def _expired(self) -> None:
        if self._hold is not None:
            self._hold.cancel()  # the route timer covers the fault hold too, as in _one_try
        conn = self._conn
        if conn is not None:
            conn.cancel()  # close = H1 reset (§1.1); no callback for the dead request
            self._pool.discard(conn)
        self._done(try_timeout(self._st, self._up, self._txn, self._trace))
