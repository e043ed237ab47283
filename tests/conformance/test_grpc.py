"""gRPC through a sidecar pair: a real grpcio client → front's outbound (h2c) → leaf's
inbound → a real grpcio server, answered as Envoy answers (docs/fidelity.md §1.9).

The server is a generic handler on raw bytes (no protoc): the request's text says what
to do (``sleep:<s>``, ``abort:<code>``, ``slow-first:<s>``); every call records its
metadata, the deadline it saw and whether it was cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import grpc
import jh2 as h2
import jh2.config
import jh2.connection
import jh2.events
import jh2.settings
import pytest
from jh2.errors import ErrorCodes

from localmesh.http import ConnectionPool
from tests.conformance.conftest import (
    LEAF,
    NS,
    OtlpReceiver,
    SidecarProc,
    Sidecars,
    config,
    endpoint,
    field_of,
    leaf_route,
)

METHOD = "/meshchaos.Echo/Unary"
AUTHORITY = "leaf:8080"
UPSTREAM_LOCAL = 17  # %UPSTREAM_LOCAL_ADDRESS% in the conftest's EXTENDED_FORMAT


@dataclass
class Call:
    """What the server saw of one call."""

    metadata: dict[str, str]
    time_remaining: float | None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class GrpcApp:
    """The leaf's app: a grpcio aio server with one unary method on raw bytes."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._slow_done: set[str] = set()

    async def _unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen = Call({k: str(v) for k, v in context.invocation_metadata() or ()},
                    context.time_remaining())
        self.calls.append(seen)
        context.add_done_callback(
            lambda ctx: seen.cancelled.set() if ctx.cancelled() else None)
        action, _, arg = request.decode().partition(":")
        try:
            if action == "sleep":
                await asyncio.sleep(float(arg))
            elif action == "slow-first" and arg not in self._slow_done:
                self._slow_done.add(arg)
                await asyncio.sleep(2.0)
            elif action == "abort-first" and arg not in self._slow_done:
                self._slow_done.add(arg)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return b"echo:" + request

    async def start(self) -> None:
        self._server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "meshchaos.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(self._unary)})
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


def grpc_services(pair: GrpcPair) -> dict[str, Any]:
    """The leaf Service's port 8080 is ``grpc``: Istio gives it an HTTP/2 cluster (§2.5)."""
    return {LEAF: {"name": "leaf", "namespace": NS, "ports": [8080], "h2_ports": [8080],
                   "endpoints": [endpoint("leaf-1", pair.leaf.ports["inbound"])]},
            f"front.{NS}.svc.cluster.local": {
                "name": "front", "namespace": NS, "ports": [8080],
                "endpoints": [endpoint("front-1", pair.front.ports["inbound"])]}}


@dataclass
class GrpcPair:
    front: SidecarProc
    leaf: SidecarProc
    app: GrpcApp
    channel: grpc.aio.Channel
    version: int = 0

    async def configure(self, app_port: int = 0, **kw: Any) -> None:
        self.version += 1
        svcs = grpc_services(self)
        for sc, name, port in ((self.front, "front", 1),
                               (self.leaf, "leaf", app_port or self.app.port)):
            resp = await sc.push(config(sc.pod, name, services=svcs, app_port=port,
                                        version=self.version, **kw))
            assert resp.status == 200, resp.body

    def stub(self) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(METHOD)


P = TypeVar("P", bound=GrpcPair)


@contextlib.asynccontextmanager
async def running_pair(sidecars: Sidecars, kind: type[P]) -> AsyncIterator[P]:
    """A grpcio server behind leaf's sidecar, and a channel into front's outbound listener."""
    app = GrpcApp()
    await app.start()
    front, leaf = await asyncio.gather(sidecars.start("front-1", "front", app_port=1),
                                       sidecars.start("leaf-1", "leaf", app_port=app.port))
    # The front app dials its sidecar's outbound listener as iptables would redirect it;
    # the Service it means is the :authority (grpcio's default_authority).
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{front.ports['outbound']}",
        options=[("grpc.default_authority", AUTHORITY), ("grpc.enable_retries", 0),
                 ("grpc.enable_http_proxy", 0)])
    try:
        yield kind(front, leaf, app, channel)
    finally:
        await channel.close()
        await app.stop()


@pytest.fixture
async def gpair(sidecars: Sidecars) -> AsyncIterator[GrpcPair]:
    async with running_pair(sidecars, GrpcPair) as pair:
        yield pair


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def is_grpc_line(line: str) -> bool:
    return METHOD in line


# -- the happy path -----------------------------------------------------------------------


async def test_a_unary_call_crosses_both_sidecars_over_http2_and_is_logged_as_such(
        gpair: GrpcPair) -> None:
    """Istio Protocol Selection: a ``grpc`` port is HTTP/2 on every hop; the access log's
    %PROTOCOL% is ``HTTP/2`` (docs/fidelity.md §1.9, §2.5)."""
    await gpair.configure(routes=leaf_route())
    assert await gpair.stub()(b"hi", timeout=5) == b"echo:hi"
    front = await gpair.front.wait_log(is_grpc_line)
    leaf = await gpair.leaf.wait_log(is_grpc_line)
    for line in (front, leaf):
        assert f'"POST {METHOD} HTTP/2" 200 - via_upstream' in line, line
    assert "outbound|8080||" + LEAF in front
    md = gpair.app.calls[-1].metadata
    assert md["x-request-id"] and md["traceparent"].startswith("00-")
    assert "x-envoy-peer-metadata-id" not in md and "meshchaos-peer" not in md


async def test_concurrent_calls_share_one_upstream_connection_per_endpoint(
        gpair: GrpcPair) -> None:
    """Envoy's HTTP/2 pool multiplexes every stream to an endpoint on one connection: all
    front lines show the same %UPSTREAM_LOCAL_ADDRESS% (§1.9)."""
    await gpair.configure(routes=leaf_route())
    stub = gpair.stub()
    replies = await asyncio.gather(*(stub(f"n{i}".encode(), timeout=10) for i in range(20)))
    assert replies == [f"echo:n{i}".encode() for i in range(20)]
    await gpair.front.wait_log(lambda _: sum(is_grpc_line(x) for x in gpair.front.lines) >= 20)
    locals_ = {field_of(x, UPSTREAM_LOCAL) for x in gpair.front.lines if is_grpc_line(x)}
    assert len(locals_) == 1 and next(iter(locals_)).startswith("127.0.0.1:"), locals_


# -- timeouts -------------------------------------------------------------------------------


async def test_the_route_timeout_is_unavailable_upstream_request_timeout_and_cancels_the_callee(
        gpair: GrpcPair) -> None:
    """Envoy's local reply to a gRPC request is trailers-only with ``httpToGrpcStatus(504)``
    = 14 UNAVAILABLE and the body as grpc-message; the log says ``504 UT``; the upstream
    stream is reset, so the server's context is cancelled (§1.9, §1.1)."""
    await gpair.configure(routes=leaf_route(timeout_ms=300))
    t0 = time.monotonic()
    err = await rpc_error(gpair.stub()(b"sleep:3", timeout=5))
    elapsed = time.monotonic() - t0
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "upstream request timeout"
    assert 0.28 <= elapsed < 0.8, elapsed
    call = gpair.app.calls[-1]
    # The client's 5 s deadline was capped at the route's 300 ms and rewritten (grpc-timeout).
    assert call.time_remaining is not None and call.time_remaining <= 0.3
    await asyncio.wait_for(call.cancelled.wait(), 2.0)
    # Both sidecars run the same 300 ms timer (the leaf's from the rewritten grpc-timeout);
    # the caller's starts first, and whichever fires first logs the UT.
    lines = [await gpair.front.wait_log(is_grpc_line), await gpair.leaf.wait_log(is_grpc_line)]
    assert any(" 504 UT response_timeout " in x for x in lines), lines


async def test_a_per_try_timeout_is_retried_and_the_retry_answers(gpair: GrpcPair) -> None:
    """Per-try timeout 200 ms with retryOn ``reset``: the first try is reset (the callee sees
    the cancel), the second answers; each try's grpc-timeout is the per-try budget (§1.2,
    §1.9 setTimeoutHeaders)."""
    await gpair.configure(routes=leaf_route(timeout_ms=3000, retries={
        "attempts": 2, "per_try_timeout_ms": 200, "retry_on": ["reset"]}))
    t0 = time.monotonic()
    assert await gpair.stub()(b"slow-first:a", timeout=5) == b"echo:slow-first:a"
    elapsed = time.monotonic() - t0
    assert 0.19 <= elapsed < 1.0, elapsed
    first, second = gpair.app.calls[-2:]
    await asyncio.wait_for(first.cancelled.wait(), 2.0)
    for c in (first, second):
        assert c.time_remaining is not None and c.time_remaining <= 0.2
    assert [first.metadata["x-envoy-attempt-count"], second.metadata["x-envoy-attempt-count"]] \
        == ["1", "2"]
    line = await gpair.front.wait_log(is_grpc_line)
    assert " 200 - via_upstream " in line and line.rstrip().endswith('"2"'), line


async def test_a_per_try_timeout_not_retried_ends_in_unavailable(gpair: GrpcPair) -> None:
    """Istio's default retryOn has no ``reset``/``5xx``: a per-try timeout is final, 504 UT
    to the log and UNAVAILABLE "upstream request timeout" to the caller (§1.2, §1.9)."""
    await gpair.configure(routes=leaf_route(timeout_ms=3000, retries={
        "attempts": 2, "per_try_timeout_ms": 200}))
    t0 = time.monotonic()
    err = await rpc_error(gpair.stub()(b"sleep:3", timeout=5))
    assert time.monotonic() - t0 < 1.0
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "upstream request timeout")
    line = await gpair.front.wait_log(is_grpc_line)
    assert " 504 UT upstream_per_try_timeout " in line, line


async def test_retry_on_unavailable_reads_the_grpc_status_of_the_answer(gpair: GrpcPair) -> None:
    """retryOn ``unavailable`` retries an answer whose grpc-status is 14 (Envoy's
    RetryStateImpl reads grpc-status from trailers or a trailers-only head, §1.9)."""
    await gpair.configure(routes=leaf_route(timeout_ms=3000, retries={
        "attempts": 2, "retry_on": ["unavailable"]}))
    assert await gpair.stub()(b"abort-first:u", timeout=5) == b"echo:abort-first:u"
    assert len([c for c in gpair.app.calls if c.metadata.get("x-envoy-attempt-count")]) == 2
    line = await gpair.front.wait_log(is_grpc_line)
    assert line.rstrip().endswith('"2"'), line


async def test_a_client_deadline_shorter_than_the_route_timeout_is_what_the_callee_gets(
        gpair: GrpcPair) -> None:
    """finalTimeout: grpc-timeout (300 ms) under a 5 s route timeout wins; it is passed on
    rewritten and the callee sees its cancellation. The caller's own deadline and the
    sidecars' timers end at the same instant: whichever fires first answers, its
    DEADLINE_EXCEEDED or Envoy's UNAVAILABLE "upstream request timeout" (as with Envoy)."""
    await gpair.configure(routes=leaf_route(timeout_ms=5000))
    t0 = time.monotonic()
    err = await rpc_error(gpair.stub()(b"sleep:3", timeout=0.3))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
        err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "upstream request timeout"), \
        (err.code(), err.details())
    assert 0.28 <= time.monotonic() - t0 < 0.8
    call = gpair.app.calls[-1]
    assert call.time_remaining is not None and call.time_remaining <= 0.3
    await asyncio.wait_for(call.cancelled.wait(), 2.0)


# -- cancellation and resets ---------------------------------------------------------------


async def test_a_cancelled_call_is_logged_dr_and_cancels_the_callee(gpair: GrpcPair) -> None:
    """A client's RST_STREAM: both sidecars log ``0 DR`` and reset their upstream stream, so
    the server's context is cancelled (§1.9)."""
    await gpair.configure(routes=leaf_route())
    call = gpair.stub()(b"sleep:5")
    await asyncio.sleep(0.3)
    assert call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await asyncio.wait_for(gpair.app.calls[-1].cancelled.wait(), 2.0)
    for sc in (gpair.front, gpair.leaf):
        line = await sc.wait_log(is_grpc_line)
        assert 'HTTP/2" 0 DR http2.remote_reset ' in line, line


class ResettingApp(asyncio.Protocol):
    """An h2c app that resets every stream it is sent (RST_STREAM INTERNAL_ERROR)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.conn.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
        self.transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]


class PlainH2App(asyncio.Protocol):
    """An h2c app answering every request 200 with its path (no gRPC); ``goaway``: then
    GOAWAY and close, as a server draining for a restart does."""

    goaway = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1"))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers)[":path"].encode()
                self.conn.send_headers(event.stream_id, [(":status", "200"),
                                                         ("content-type", "text/plain")])
                self.conn.send_data(event.stream_id, path, end_stream=True)
                if self.goaway:
                    self.conn.close_connection(last_stream_id=event.stream_id)
        self.transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]
        if self.goaway and self.conn.state_machine.state.name == "CLOSED":
            self.transport.close()


class DrainingH2App(PlainH2App):
    goaway = True


async def test_an_http1_caller_reaches_an_http2_service_through_the_sidecars(
        gpair: GrpcPair) -> None:
    """Envoy translates between codecs: the app's HTTP/1.1 request leaves its sidecar as
    HTTP/2 on the Service's HTTP/2 cluster and reaches an h2c app (§1.9, §2.5)."""
    server = await asyncio.get_running_loop().create_server(PlainH2App, "127.0.0.1", 0)
    pool = ConnectionPool()
    try:
        await gpair.configure(app_port=server.sockets[0].getsockname()[1], routes=leaf_route())
        resp = await pool.request("GET", "http://leaf:8080/plain?x=1", timeout=5,
                                  proxy=f"http://127.0.0.1:{gpair.front.ports['outbound']}")
        assert (resp.status, resp.body) == (200, b"/plain?x=1")
        front = await gpair.front.wait_log(lambda x: "/plain" in x)
        leaf = await gpair.leaf.wait_log(lambda x: "/plain" in x)
        assert '"GET /plain?x=1 HTTP/1.1" 200 - via_upstream' in front, front
        assert '"GET /plain?x=1 HTTP/2" 200 - via_upstream' in leaf, leaf
    finally:
        await pool.close()
        server.close()


async def test_after_an_upstream_goaway_the_next_request_opens_a_new_connection(
        gpair: GrpcPair) -> None:
    """A GOAWAY takes the connection out of Envoy's HTTP/2 pool: the streams it covered
    finish, the next request gets a new connection (RFC 9113 §6.8, §1.9)."""
    server = await asyncio.get_running_loop().create_server(DrainingH2App, "127.0.0.1", 0)
    pool = ConnectionPool()
    try:
        await gpair.configure(app_port=server.sockets[0].getsockname()[1], routes=leaf_route())
        proxy = f"http://127.0.0.1:{gpair.front.ports['outbound']}"
        for i in range(3):
            resp = await pool.request("GET", f"http://leaf:8080/d{i}", timeout=5, proxy=proxy)
            assert (resp.status, resp.body) == (200, f"/d{i}".encode())
        await gpair.leaf.wait_log(lambda x: "/d2" in x)
        lines = [x for x in gpair.leaf.lines if "/d" in x]
        assert len({field_of(x, UPSTREAM_LOCAL) for x in lines}) == 3, lines
    finally:
        await pool.close()
        server.close()


async def test_an_upstream_reset_is_unavailable_with_envoys_reset_text(gpair: GrpcPair) -> None:
    """The app resets the stream: the leaf's sidecar logs ``503 UR`` and replies as Envoy
    does (reset reason ``remote reset``), which the caller gets as UNAVAILABLE (§1.6, §1.9)."""
    server = await asyncio.get_running_loop().create_server(ResettingApp, "127.0.0.1", 0)
    try:
        await gpair.configure(app_port=server.sockets[0].getsockname()[1], routes=leaf_route())
        err = await rpc_error(gpair.stub()(b"hi", timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == ("upstream connect error or disconnect/reset before headers. "
                                 "reset reason: remote reset")
        line = await gpair.leaf.wait_log(is_grpc_line)
        assert " 503 UR upstream_reset_before_response_started{remote_reset} " in line, line
    finally:
        server.close()


# -- bad input ------------------------------------------------------------------------------


class RawH2:
    """A bare HTTP/2 client (the sidecar's own h2 stack, jh2, on an asyncio stream), for
    what grpcio would never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="latin-1", validate_outbound_headers=False))
        self.events: list[h2.events.Event] = []
        self.conn.initiate_connection()
        self.flush()

    @classmethod
    async def open(cls, port: int) -> RawH2:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def request(self, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                     (":authority", AUTHORITY), (":path", METHOD), *headers],
                               end_stream=not body)
        for at in range(0, len(body), 16384):  # the RFC's initial SETTINGS_MAX_FRAME_SIZE
            self.conn.send_data(sid, body[at:at + 16384], end_stream=at + 16384 >= len(body))
        self.flush()
        return sid

    async def until(self, pred: Any, within: float = 5.0) -> h2.events.Event:
        async with asyncio.timeout(within):
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                new = self.conn.receive_data(data)
                for ev in new:
                    if isinstance(ev, h2.events.DataReceived):  # give the window back
                        self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                            ev.stream_id)
                self.events += new
                self.flush()

    def close(self) -> None:
        self.writer.close()


def grpc_frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def ended(sid: int) -> Any:
    return lambda ev: isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) \
        and ev.stream_id == sid


async def test_a_malformed_frame_ends_the_connection_with_goaway_protocol_error(
        gpair: GrpcPair) -> None:
    """RFC 9113 §6.1: DATA on stream 0 is a connection error PROTOCOL_ERROR; Envoy's codec
    answers GOAWAY and closes; the sidecar serves the next connection (§1.9)."""
    await gpair.configure(routes=leaf_route())
    raw = await RawH2.open(gpair.front.ports["outbound"])
    await raw.until(lambda ev: isinstance(ev, h2.events.RemoteSettingsChanged))
    raw.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA, stream 0
    goaway = await raw.until(lambda ev: isinstance(ev, h2.events.ConnectionTerminated))
    assert isinstance(goaway, h2.events.ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert await raw.reader.read() == b""
    raw.close()
    assert await gpair.stub()(b"after", timeout=5) == b"echo:after"


@pytest.mark.parametrize("value", ["123456789m", "100x", "m", "-5S"])
async def test_an_invalid_grpc_timeout_counts_as_absent(gpair: GrpcPair, value: str) -> None:
    """Grpc::Common::getGrpcTimeout: at most 8 digits and a unit of HMSmun, else no timeout;
    the route's 1 s (max_grpc_timeout) applies and is what the callee gets (§1.9)."""
    await gpair.configure(routes=leaf_route(timeout_ms=1000))
    raw = await RawH2.open(gpair.front.ports["outbound"])
    sid = raw.request([*GRPC_HEADERS, ("grpc-timeout", value)], grpc_frame(b"hi"))
    await raw.until(ended(sid))
    raw.close()
    remaining = gpair.app.calls[-1].time_remaining
    assert remaining is not None and 0.7 < remaining <= 1.0, remaining


async def test_a_grpc_timeout_header_shorter_than_the_route_is_the_sidecars_timer(
        gpair: GrpcPair) -> None:
    """Without a client-side deadline, the sidecars' own timer (grpc-timeout 200m under a
    5 s route) answers: trailers-only, grpc-status 14, "upstream request timeout" (§1.9)."""
    await gpair.configure(routes=leaf_route(timeout_ms=5000))
    raw = await RawH2.open(gpair.front.ports["outbound"])
    t0 = time.monotonic()
    sid = raw.request([*GRPC_HEADERS, ("grpc-timeout", "200m")], grpc_frame(b"sleep:3"))
    head = await raw.until(lambda ev: isinstance(ev, h2.events.ResponseReceived)
                           and ev.stream_id == sid)
    elapsed = time.monotonic() - t0
    raw.close()
    assert isinstance(head, h2.events.ResponseReceived)
    fields = dict(cast(list[tuple[str, str]], head.headers))
    assert head.stream_ended is not None  # trailers-only
    assert (fields[":status"], fields["grpc-status"], fields["grpc-message"]) == \
        ("200", "14", "upstream request timeout")
    assert 0.19 <= elapsed < 0.7, elapsed


async def test_a_body_larger_than_the_clients_window_is_sent_as_the_window_allows(
        gpair: GrpcPair) -> None:
    """RFC 9113 §6.9: a sender stays within the receiver's flow-control window and resumes
    on WINDOW_UPDATE. The client allows 1 KiB per stream; the 60 KB answer arrives whole,
    in DATA frames none larger than the window (§1.9)."""
    await gpair.configure(routes=leaf_route())
    raw = await RawH2.open(gpair.front.ports["outbound"])
    raw.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024})
    raw.flush()
    payload = b"z" * 60_000  # the request fits the RFC's initial 64 KiB window
    sid = raw.request(GRPC_HEADERS, grpc_frame(payload))
    end = await raw.until(ended(sid), within=10)
    raw.close()
    assert isinstance(end, h2.events.StreamEnded)
    chunks = [ev for ev in raw.events
              if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid]
    body = b"".join(ev.data for ev in chunks)
    assert body == grpc_frame(b"echo:" + payload)
    assert len(chunks) >= 59 and max(len(ev.data) for ev in chunks) <= 1024


async def test_a_head_over_the_limit_resets_that_stream_only(gpair: GrpcPair) -> None:
    """Envoy's HTTP/2 codec: a head over max_request_headers_kb (60) or max_headers_count
    (100) makes nghttp2 reset the stream (RST_STREAM INTERNAL_ERROR); the connection lives
    on and its next stream is served (§1.8, §1.9)."""
    await gpair.configure(routes=leaf_route())
    raw = await RawH2.open(gpair.front.ports["outbound"])
    big = raw.request([*GRPC_HEADERS, ("x-big", "v" * (61 * 1024))], grpc_frame(b"big"))
    reset = await raw.until(ended(big))
    assert isinstance(reset, h2.events.StreamReset)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    many = raw.request([*GRPC_HEADERS, *((f"x-f{i}", "1") for i in range(100))],
                       grpc_frame(b"many"))
    reset = await raw.until(ended(many))
    assert isinstance(reset, h2.events.StreamReset)
    ok = raw.request(GRPC_HEADERS, grpc_frame(b"fine"))
    end = await raw.until(ended(ok))
    assert isinstance(end, h2.events.StreamEnded)
    raw.close()
    assert all(c.metadata.get("x-big") is None for c in gpair.app.calls)


async def test_a_thousand_streams_on_one_connection_are_all_served(gpair: GrpcPair) -> None:
    """Envoy's listener default max_concurrent_streams is 2^31-1 (Istio leaves it): 1,000
    concurrent streams of one client connection are all answered (§1.9)."""
    await gpair.configure(routes=leaf_route())
    raw = await RawH2.open(gpair.front.ports["outbound"])
    settings = await raw.until(lambda ev: isinstance(ev, h2.events.RemoteSettingsChanged))
    assert isinstance(settings, h2.events.RemoteSettingsChanged)
    max_streams = settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
    assert max_streams.new_value == 2**31 - 1
    raw.close()
    stub = gpair.stub()
    replies = await asyncio.gather(*(stub(b"x", timeout=30) for _ in range(1000)))
    assert replies == [b"echo:x"] * 1000


async def test_the_access_log_has_grpc_status_from_trailers_head_or_http_code(
        gpair: GrpcPair) -> None:
    """%GRPC_STATUS% (Envoy's GrpcStatusFormatter): trailers first, then the head, then
    httpToGrpcStatus of %RESPONSE_CODE%; CAMEL_STRING by default, NUMBER on request (§1.9)."""
    fmt = ("%PROTOCOL% %RESPONSE_CODE% %GRPC_STATUS% %GRPC_STATUS(NUMBER)% "
           "%TRAILER(GRPC-STATUS)%\n")
    await gpair.configure(routes=leaf_route(timeout_ms=300), mesh={"access_log": {
        "enabled": True, "encoding": "TEXT", "format": fmt}})
    assert await gpair.stub()(b"ok", timeout=5) == b"echo:ok"
    assert await gpair.front.wait_log(lambda x: x.startswith("HTTP/2 200")) == \
        "HTTP/2 200 Ok 0 0"
    await rpc_error(gpair.stub()(b"sleep:3", timeout=5))
    assert await gpair.front.wait_log(lambda x: " 504 " in x or "Unavailable" in x) in (
        "HTTP/2 504 Unavailable 14 -", "HTTP/2 200 Unavailable 14 -")


async def test_each_sidecar_span_carries_envoys_grpc_tags(gpair: GrpcPair,
                                                          otlp: OtlpReceiver) -> None:
    """HttpTracerUtility::finalizeDownstreamSpan: grpc.path/authority/content_type/timeout
    from the request, grpc.status_code from the answer (a route timeout's trailers-only 14,
    tagged as an error), http.protocol HTTP/2 (§1.9, §3)."""
    await gpair.configure(routes=leaf_route(timeout_ms=300), mesh={
        "sampling_percent": 100.0, "otlp_endpoint": otlp.endpoint})
    assert await gpair.stub()(b"ok", timeout=5) == b"echo:ok"
    await rpc_error(gpair.stub()(b"sleep:3", timeout=5))

    def sidecar_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in spans if "grpc.path" in s["attrs"]]
    await otlp.wait_spans(lambda spans: len(sidecar_spans(spans)) >= 4)
    by_status: dict[str, list[dict[str, Any]]] = {}
    for span in sidecar_spans(otlp.spans):
        attrs = span["attrs"]
        assert attrs["grpc.path"] == METHOD and attrs["grpc.authority"] == AUTHORITY
        assert attrs["grpc.content_type"] == "application/grpc"
        assert attrs["http.protocol"] == "HTTP/2"
        by_status.setdefault(str(attrs.get("grpc.status_code")), []).append(span)
    assert {"0", "14"} <= set(by_status), by_status.keys()
    assert all(s["status"] == 2 for s in by_status["14"])  # STATUS_CODE_ERROR
    assert all(s["status"] != 2 for s in by_status["0"])
    # The callee's sidecar saw the grpc-timeout its caller's sidecar rewrote (300 ms cap).
    timeouts = {s["attrs"].get("grpc.timeout") for s in by_status["14"]}
    assert timeouts and all(t is not None and t.endswith("m") and int(t[:-1]) <= 300
                            for t in timeouts), timeouts
