"""HTTP/2 in the sidecar: cleartext h2c with prior knowledge, downstream and upstream.

The protocol stack is python-hyper's sans-I/O ``h2`` in its maintained fork ``jh2`` (same
API, HPACK compiled): measured side by side, a gRPC call through two sidecars costs
0.3 ms less with it than with ``h2`` itself (``benchmarks/bench_grpc.py``).

In-mesh gRPC under Istio without mTLS is h2c: the caller's client writes the HTTP/2
connection preface straight away, and Envoy's listener (``codec_type AUTO``) picks its
HTTP/2 codec from those first bytes. The HTTP/1.1 listener here does the same: its parser
stops on the preface (``PRI * HTTP/2.0``), and only then is the socket handed to
:class:`H2ServerConnection` (:func:`switch_to_h2`), so the HTTP/1.1 path pays nothing.

Upstream, a cluster of a Service port Istio gives HTTP/2 (``appProtocol`` ``grpc``/
``http2``, or a port name prefixed so; docs/fidelity.md §2.5) is called through
:class:`H2Pool`: one multiplexed connection per endpoint, as Envoy's HTTP/2 pool keeps
(streams up to Istio's ``max_concurrent_streams`` 2^30 share it). The pool hands
:func:`~localmesh.sidecar.upstream.call_upstream` one :class:`H2Call` per try, with the
interface of an HTTP/1.1 connection, so timers, retries and local replies are the
router's own; ending a try early (a timer, a downstream reset) resets that stream only,
with ``RST_STREAM`` ``NO_ERROR`` as Envoy's codec does (``reasonToReset``), and the callee
sees its call cancelled.

Codec behaviour (docs/fidelity.md §1.9): a frame that breaks the protocol ends the
connection with ``GOAWAY`` (h2's own error code, ``PROTOCOL_ERROR`` mostly); a request
head over Envoy's limits (60 KiB, 100 fields, pseudo-headers included) resets that stream
(``RST_STREAM`` ``INTERNAL_ERROR``, nghttp2's answer to Envoy's header-overflow callback)
and the connection lives on; a client ``RST_STREAM`` cancels the request (flag ``DR``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import cast

import jh2 as h2
import jh2.config
import jh2.connection
import jh2.events
import jh2.exceptions
import jh2.settings
from jh2.errors import ErrorCodes

from localmesh.http.client import open_connection
from localmesh.http.errors import ConnectionTerminated, StreamReset
from localmesh.http.message import Request, Response
from localmesh.http.server import ENVOY_HEAD_LIMITS, HeadLimits, ServerConnection

__all__ = ["H2Call", "H2Pool", "H2Response", "H2ServerConnection", "H2StreamConn",
           "StreamHandler", "switch_to_h2"]

log = logging.getLogger("localmesh.sidecar.h2")

# Envoy's Http2ProtocolOptions defaults: 256 MiB stream and connection windows, and (for a
# listener, which Istio leaves at Envoy's default) 2^31-1 concurrent streams; Istio sets
# 2^30 on its HTTP/2 clusters ("Envoy default value of 100 is too low for data path").
_WINDOW = 268_435_456
_DOWNSTREAM_MAX_STREAMS = 2**31 - 1
_UPSTREAM_MAX_STREAMS = 2**30
# hpack's own cap is 64 KiB; the sidecar applies Envoy's limits itself, per stream.
_DECODER_LIST_LIMIT = 1 << 20
# What HTTP/2 forbids in a message (RFC 9113 §8.2.2); ``te`` is kept only as "trailers".
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade", "host"})


class H2Response(Response):
    """A response that may end with trailers (gRPC's ``grpc-status`` lives there)."""

    __slots__ = ("trailers",)

    def __init__(self, status: int, headers: dict[str, str], body: bytes,
                 trailers: dict[str, str] | None) -> None:
        super().__init__(status, headers, body)
        self.trailers = trailers


def _new_connection(client: bool, max_streams: int) -> h2.connection.H2Connection:
    # What the sidecar sends is built from headers a codec already checked (lower-case names,
    # no connection-specific fields: _outgoing), so h2's per-field outbound checks are skipped;
    # what arrives is still validated (a bad field is a protocol error, as in Envoy).
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client, header_encoding="latin-1", validate_outbound_headers=False,
        normalize_outbound_headers=False))
    # Initial values count at once (h2 applies them without waiting for the ACK); they only
    # let the peer send more than the RFC's defaults, so applying them early is safe.
    conn.local_settings = h2.settings.Settings(client=client, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
    })
    conn.initiate_connection()
    conn.increment_flow_control_window(_WINDOW - 65_535)
    conn.decoder.max_header_list_size = _DECODER_LIST_LIMIT
    return conn


def _fields(headers: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """(pseudo-headers, regular fields joined as HTTP/1.1 joins a repeated name)."""
    pseudo: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(":"):
            pseudo[name] = value
        elif name in out:
            out[name] = f"{out[name]}{'; ' if name == 'cookie' else ', '}{value}"
        else:
            out[name] = value
    return pseudo, out


def _outgoing(headers: dict[str, str], extra: list[tuple[str, str]] | None = None
              ) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in headers.items()
           if k not in _CONNECTION_SPECIFIC and (k != "te" or v == "trailers")]
    if extra:
        out += extra
    return out


class _Sender:
    """Writes bodies within the peer's flow-control windows, resuming on WINDOW_UPDATE."""

    def __init__(self) -> None:
        self.h2: h2.connection.H2Connection | None = None
        # stream id -> (body still to send, trailers to end with, or None to end on data)
        self.pending: dict[int, tuple[bytes, list[tuple[str, str]] | None]] = {}

    def send(self, sid: int, body: bytes, trailers: list[tuple[str, str]] | None) -> None:
        self.pending[sid] = (body, trailers)
        self.pump(sid)

    def pump(self, sid: int) -> None:
        conn = self.h2
        item = self.pending.get(sid)
        if conn is None or item is None:
            return
        body, trailers = item
        try:
            while body:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    self.pending[sid] = (body, trailers)
                    return
                chunk, body = body[:room], body[room:]
                conn.send_data(sid, chunk, end_stream=not body and trailers is None)
            if trailers is not None:
                conn.send_headers(sid, trailers, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the peer reset the stream meanwhile: nothing more to say on it
        del self.pending[sid]

    def pump_all(self) -> None:
        for sid in list(self.pending):
            self.pump(sid)


# -- downstream ----------------------------------------------------------------------------


class H2StreamConn:
    """One downstream stream as the sidecar's request code sees its connection."""

    __slots__ = ("local_text", "loop", "lost", "lost_details", "lost_flag", "peer_text")

    def __init__(self, loop: asyncio.AbstractEventLoop, local_text: str, peer_text: str) -> None:
        self.loop = loop
        self.local_text, self.peer_text = local_text, peer_text
        self.lost = False
        # How the access log tells why the stream went away (docs/fidelity.md §1.9).
        self.lost_flag, self.lost_details = "DC", "downstream_remote_disconnect"


# One request of a stream: the sidecar's answer (None: write nothing, reset the stream).
StreamHandler = Callable[[Request, H2StreamConn], Awaitable[Response | None]]


class _Inbound:
    __slots__ = ("body", "conn", "headers", "task")

    def __init__(self, headers: list[tuple[str, str]], conn: H2StreamConn) -> None:
        self.headers = headers
        self.body: list[bytes] = []
        self.conn = conn
        self.task: asyncio.Task[None] | None = None


class H2ServerConnection(asyncio.Protocol):
    """One downstream HTTP/2 connection; each stream's request runs in its own task."""

    def __init__(self, handler: StreamHandler, limits: HeadLimits = ENVOY_HEAD_LIMITS) -> None:
        self._handler = handler
        self._limits = limits
        self._h2 = _new_connection(client=False, max_streams=_DOWNSTREAM_MAX_STREAMS)
        self._sender = _Sender()
        self._sender.h2 = self._h2
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Inbound] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local_text = self._peer_text = ""
        self._goaway = False
        self.refused_streams = 0  # heads over the limits, reset

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self._peer_text, self._local_text = f"{peer[0]}:{peer[1]}", f"{local[0]}:{local[1]}"
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued GOAWAY with the error's code: send it, end the connection.
            log.info("downstream HTTP/2 protocol error from %s: %s", self._peer_text, exc)
            self._flush()
            self._end_streams("DPE", "http2.codec_error")
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            self._event(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._end_streams("DC", "downstream_remote_disconnect")

    # -- events ---------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._begin(event.stream_id, cast(list[tuple[str, str]], event.headers),
                        event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            st = self._streams.get(event.stream_id)
            if st is not None and st.task is None:
                st.body.append(event.data)
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            st = self._streams.get(event.stream_id)
            if st is not None and st.task is None:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.StreamReset):
            self._sender.pending.pop(event.stream_id, None)
            st = self._streams.pop(event.stream_id, None)
            if st is not None:
                self._cancel(st, "DR", "http2.remote_reset")
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self._sender.pump(event.stream_id)
            else:
                self._sender.pump_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway = True  # a client's GOAWAY: finish what is open, then close
            self._close_if_done()

    def _begin(self, sid: int, headers: list[tuple[str, str]], ended: bool) -> None:
        size = sum(len(n) + len(v) for n, v in headers)
        if size > self._limits.max_bytes or len(headers) > self._limits.max_count:
            # Envoy's saveHeader returns the temporal callback failure: nghttp2 resets it.
            self.refused_streams += 1
            self._h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            return
        loop = self._loop or asyncio.get_running_loop()
        st = _Inbound(headers, H2StreamConn(loop, self._local_text, self._peer_text))
        self._streams[sid] = st
        if ended:
            self._dispatch(sid, st)

    def _dispatch(self, sid: int, st: _Inbound) -> None:
        pseudo, fields = _fields(st.headers)
        authority = pseudo.get(":authority") or fields.get("host", "")
        fields["host"] = authority
        body = st.body[0] if len(st.body) == 1 else b"".join(st.body)
        req = Request(pseudo.get(":method", "GET"), pseudo.get(":path", "/"), fields, body)
        loop = self._loop or asyncio.get_running_loop()
        st.task = loop.create_task(self._run(sid, st, req), name="http-request")

    async def _run(self, sid: int, st: _Inbound, req: Request) -> None:
        try:
            resp = await self._handler(req, st.conn)
        except asyncio.CancelledError:
            return  # reset by the client or the connection went away: nothing to write
        except Exception:
            log.exception("HTTP/2 handler failed for %s %s", req.method, req.target)
            resp = Response(500, {"content-type": "text/plain"}, b"internal error")
        if self._streams.pop(sid, None) is None or self._transport is None:
            return
        if resp is None:
            self._h2.reset_stream(sid, ErrorCodes.NO_ERROR)
        else:
            self._write(sid, resp)
        self._flush()
        self._close_if_done()

    def _write(self, sid: int, resp: Response) -> None:
        trailers = resp.trailers if isinstance(resp, H2Response) else None
        head = [(":status", str(resp.status)), *_outgoing(resp.headers, resp.extra)]
        try:
            if not resp.body and not trailers:
                self._h2.send_headers(sid, head, end_stream=True)  # gRPC's trailers-only too
                return
            self._h2.send_headers(sid, head)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._sender.send(sid, resp.body, _outgoing(trailers) if trailers else None)

    def _cancel(self, st: _Inbound, flag: str, details: str) -> None:
        st.conn.lost = True
        st.conn.lost_flag, st.conn.lost_details = flag, details
        if st.task is not None and not st.task.done():
            st.task.cancel()

    def _end_streams(self, flag: str, details: str) -> None:
        streams, self._streams = self._streams, {}
        for st in streams.values():
            self._cancel(st, flag, details)

    def _close_if_done(self) -> None:
        if self._goaway and not self._streams and self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)


def switch_to_h2(conn: ServerConnection, transport: asyncio.BaseTransport, received: bytes,
                 handler: StreamHandler) -> None:
    """Hand a listener's socket, whose first bytes were the HTTP/2 preface, to the codec."""
    del conn  # its parser state (a half request "PRI *") is simply dropped
    proto = H2ServerConnection(handler)
    transport.set_protocol(proto)
    proto.connection_made(transport)
    proto.data_received(received)


# -- upstream --------------------------------------------------------------------------------


class H2Call:
    """One try's stream on a pooled HTTP/2 connection (what an HTTP/1.1 try gets as its
    connection: ``send``, ``local_text``, ``headers_at``)."""

    __slots__ = ("_body", "_conn", "_done", "_headers", "_status", "_trailers", "headers_at",
                 "local_text", "sid")

    def __init__(self, conn: H2ClientConnection) -> None:
        self._conn = conn
        self.local_text = conn.local_text
        self.headers_at = 0.0
        self.sid = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._trailers: dict[str, str] | None = None
        self._done: asyncio.Future[H2Response] | None = None

    async def send(self, method: str, target: str, authority: str, headers: dict[str, str],
                   body: bytes) -> H2Response:
        loop = self._conn.loop
        self._done = loop.create_future()
        self._conn.open(self, method, target, authority, headers, body)
        return await self._done

    def reset(self) -> None:
        """End the try early: ``RST_STREAM`` ``NO_ERROR`` (Envoy's reset of a local reset)."""
        if self._done is not None and not self._done.done():
            self._done.cancel()
        self._conn.reset(self)

    # -- from the connection --------------------------------------------------------------

    def on_headers(self, headers: list[tuple[str, str]], at: float) -> None:
        pseudo, fields = _fields(headers)  # the final head (h2 reports 1xx and trailers apart)
        self._status = int(pseudo.get(":status", "0") or 0)
        self._headers = fields
        self.headers_at = at

    def on_data(self, data: bytes) -> None:
        self._body.append(data)

    def on_trailers(self, headers: list[tuple[str, str]]) -> None:
        self._trailers = _fields(headers)[1]

    def on_end(self) -> None:
        done = self._done
        if done is not None and not done.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            done.set_result(H2Response(self._status, self._headers, body, self._trailers))

    def on_error(self, exc: Exception) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_exception(exc)


class H2ClientConnection(asyncio.Protocol):
    """One upstream HTTP/2 connection, shared by every try to its endpoint."""

    def __init__(self, key: tuple[str, int], on_closed: Callable[[H2ClientConnection], None]
                 ) -> None:
        self.key = key
        self._on_closed = on_closed
        self._h2 = _new_connection(client=True, max_streams=_UPSTREAM_MAX_STREAMS)
        self._sender = _Sender()
        self._sender.h2 = self._h2
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, H2Call] = {}
        self.loop = asyncio.get_running_loop()  # built by create_connection, on the loop
        self.local_text = ""
        self.usable = True  # False after GOAWAY or close: no new streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        local = transport.get_extra_info("sockname") or ("", 0)
        self.local_text = f"{local[0]}:{local[1]}"
        self._flush()

    def open(self, call: H2Call, method: str, target: str, authority: str,
             headers: dict[str, str], body: bytes) -> None:
        if not self.usable or self._transport is None:
            call.on_error(ConnectionTerminated(f"HTTP/2 connection to {self.key} is closing"))
            return
        sid = self._h2.get_next_available_stream_id()
        call.sid = sid
        self._calls[sid] = call
        head = [(":method", method), (":scheme", "http"), (":authority", authority),
                (":path", target), *_outgoing(headers)]
        self._h2.send_headers(sid, head, end_stream=not body)
        if body:
            self._sender.send(sid, body, None)
        self._flush()

    def reset(self, call: H2Call) -> None:
        if self._calls.pop(call.sid, None) is None:
            return  # already ended
        self._sender.pending.pop(call.sid, None)
        try:
            self._h2.reset_stream(call.sid, ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()
            self._fail_all(ConnectionTerminated(f"HTTP/2 protocol error from {self.key}: {exc}"))
            self.abort()
            return
        now = self.loop.time()
        for event in events:
            self._event(event, now)
        self._flush()

    def _event(self, event: h2.events.Event, now: float) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.on_headers(cast(list[tuple[str, str]], event.headers), now)
                if event.stream_ended is not None:
                    self._end(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.on_data(event.data)
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.on_trailers(cast(list[tuple[str, str]], event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            self._end(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._sender.pending.pop(event.stream_id, None)
            call = self._calls.pop(event.stream_id, None)
            if call is not None:
                call.on_error(StreamReset(f"{self.key} reset stream {event.stream_id}",
                                          refused=event.error_code == ErrorCodes.REFUSED_STREAM))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self._sender.pump(event.stream_id)
            else:
                self._sender.pump_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event.last_stream_id)

    def _end(self, sid: int) -> None:
        call = self._calls.pop(sid, None)
        if call is not None:
            call.on_end()

    def _goaway(self, last_stream_id: int | None) -> None:
        """A GOAWAY: no new streams; those above ``last_stream_id`` were never processed."""
        self.usable = False
        self._on_closed(self)
        last = last_stream_id or 0
        for sid in [s for s in self._calls if s > last]:
            self._calls.pop(sid).on_error(StreamReset(
                f"{self.key} went away before stream {sid}", refused=True))
        if not self._calls:
            self.abort()

    def _fail_all(self, exc: Exception) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.usable = False
        self._on_closed(self)
        self._fail_all(ConnectionTerminated(f"HTTP/2 connection to {self.key} closed"))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)


class H2Pool:
    """Envoy's HTTP/2 connection pool: one connection per endpoint, a stream per try."""

    def __init__(self) -> None:
        self._conns: dict[tuple[str, int], H2ClientConnection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[H2ClientConnection]] = {}

    def idle_count(self, host: str, port: int) -> int:
        """1 while a connection to the endpoint is up (the fault engine's "established")."""
        conn = self._conns.get((host, port))
        return 1 if conn is not None and conn.usable else 0

    def take_idle(self, host: str, port: int) -> H2Call | None:
        conn = self._conns.get((host, port))
        return H2Call(conn) if conn is not None and conn.usable else None

    async def acquire(self, host: str, port: int, connect_timeout: float | None) -> H2Call:
        call = self.take_idle(host, port)
        if call is not None:
            return call
        key = (host, port)
        pending = self._connecting.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._connecting[key] = pending
            try:
                conn = await self._connect(key, connect_timeout)
            except BaseException as exc:
                del self._connecting[key]
                if isinstance(exc, Exception):
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: waiters may be gone
                else:
                    pending.cancel()
                raise
            del self._connecting[key]
            self._conns[key] = conn
            pending.set_result(conn)
            return H2Call(conn)
        # Another try is connecting to this endpoint: streams share that connection.
        async with asyncio.timeout(connect_timeout):
            conn = await asyncio.shield(pending)
        return H2Call(conn)

    async def _connect(self, key: tuple[str, int],
                       connect_timeout: float | None) -> H2ClientConnection:
        return await open_connection(lambda: H2ClientConnection(key, self._closed), key,
                                     connect_timeout)

    def _closed(self, conn: H2ClientConnection) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]

    def release(self, call: H2Call) -> None:
        """The try's stream ended with its response: the connection stays for the next."""

    def discard(self, call: H2Call) -> None:
        """The try ended early (timer, downstream reset, error): reset its stream only."""
        call.reset()

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.abort()
        self._conns.clear()
        await asyncio.sleep(0)
