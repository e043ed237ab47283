"""Server side of HTTP/1.1 on an asyncio protocol with httptools.

One :class:`ServerConnection` per accepted socket. Each complete request runs
the handler in its own task; pipelined requests wait their turn. When the
client goes away, the running handler task is cancelled and
:attr:`ServerConnection.lost` is set, so the handler can tell a downstream
disconnect (Envoy's ``DC``) from its own shutdown.

A task per request costs tens of µs. A server may also pass ``fast``, a plain
function tried first for each request (:data:`FastHandler`): returning ``True``
means it took the request and will answer with :meth:`ServerConnection.respond`
(now or from a later callback) or hand it over to a coroutine with
:meth:`ServerConnection.adopt`; while it holds the request,
:attr:`ServerConnection.on_lost` (if set) is called when the client goes away.
Returning ``False`` runs the ordinary ``handler`` task.

A server may also pass ``h2`` (:data:`H2Switch`): a connection that opens with the HTTP/2
preface (``PRI * HTTP/2.0``, h2c with prior knowledge) is handed to it, with every byte
received so far. The preface stops the HTTP/1.1 parser, so only that error path looks.

A server may also pass ``limits`` (:class:`HeadLimits`): a request head over either
limit is answered ``431`` at once and the connection closed, as Envoy's HTTP/1 codec
does (docs/fidelity.md §1.8); ``refused``, if given, builds that answer (the sidecar
logs it as Envoy's HCM would).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import httptools

from localmesh.http.message import NAMES as _NAMES
from localmesh.http.message import Request, Response, encode_response, header_name
from localmesh.http.tcp import quickack

__all__ = ["ENVOY_HEAD_LIMITS", "H2_PREFACE", "REQUEST_TASK_NAME", "FastHandler", "H2Switch",
           "Handler", "HeadLimits", "Refused", "ServerConnection", "in_flight", "serve"]

log = logging.getLogger("localmesh.http")

Handler = Callable[[Request, "ServerConnection"], Awaitable[Response | None]]
# Synchronous first chance at a request: True = taken (answer later with respond/adopt).
FastHandler = Callable[[Request, "ServerConnection"], bool]
# Every request's handler task carries this name, so a shutdown can wait for them.
REQUEST_TASK_NAME = "http-request"
# Takes over a connection that began with the HTTP/2 preface: (the HTTP/1.1 protocol
# object, its transport, every byte received so far).
H2Switch = Callable[["ServerConnection", asyncio.BaseTransport, bytes], None]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Interned method names: most requests use one of these.
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}
# Envoy's response code details for the two head limits (Http1ResponseCodeDetails).
HEADERS_TOO_LARGE = "http1.headers_too_large"
TOO_MANY_HEADERS = "http1.too_many_headers"


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Limits on one request head, checked while it is parsed (docs/fidelity.md §1.8).

    ``max_bytes`` bounds the request-target plus every field name and value (Envoy's
    ``getHeadersSize``: no separators, no CRLFs), ``max_count`` the number of fields; a
    head *over* either one (``>``, as Envoy compares) is refused with ``431``.
    """

    max_bytes: int
    max_count: int


# HttpConnectionManager.max_request_headers_kb (default 60) and
# HttpProtocolOptions.max_headers_count (default 100): what an Istio sidecar runs with.
ENVOY_HEAD_LIMITS = HeadLimits(max_bytes=60 * 1024, max_count=100)

# Builds the answer to a refused head: (the request so far, connection, status, details).
Refused = Callable[[Request, "ServerConnection", int, str], Response]


# Envoy's delayed_close_timeout default (1 s): how long a refused connection is drained.
_DELAYED_CLOSE_S = 1.0


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head over a limit."""


def in_flight() -> list[asyncio.Task[object]]:
    """The handler tasks of requests still being served on this loop."""
    return [t for t in asyncio.all_tasks() if t.get_name() == REQUEST_TASK_NAME and not t.done()]


class ServerConnection(asyncio.Protocol):
    """One downstream connection: parses requests, runs the handler, writes responses."""

    def __init__(self, handler: Handler, fast: FastHandler | None = None, *,
                 limits: HeadLimits | None = None, refused: Refused | None = None,
                 h2: H2Switch | None = None) -> None:
        self._handler = handler
        self._h2 = h2
        self._fast = fast
        self._limits = limits
        self._refused = refused
        self._head_bytes = 0  # the current head's size and field count, with limits only
        self._head_count = 0
        self._refusal = ""  # the details of the limit the current head crossed
        self._repeats: dict[str, list[str]] | None = None  # names seen twice in this head
        self._discarding = False  # after a refused head: input is dropped until the close
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        # The request being handled (by the task or the fast handler); None when idle.
        self._current: Request | None = None
        # Set by a fast handler while it holds a request: called once if the client leaves.
        self.on_lost: Callable[[], None] | None = None
        self.lost = False
        self.peer = ("", 0)
        self.local = ("", 0)
        self.peer_text = ""  # "host:port", rendered once per connection
        self.local_text = ""
        self.bytes_received = 0
        self._socket: object = None
        self._in_message = False
        # The loop serving this connection, set when connected: asyncio.get_running_loop()
        # costs a getpid() syscall on Python 3.11, so handlers read this instead.
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self._transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.peer = transport.get_extra_info("peername") or ("", 0)
        self.local = transport.get_extra_info("sockname") or ("", 0)
        self.peer_text = f"{self.peer[0]}:{self.peer[1]}"
        self.local_text = f"{self.local[0]}:{self.local[1]}"
        self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._discarding:
            return  # a refused head: the rest is read and dropped until the close
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._switch_h2(data):
                self._reply_and_close(501, b"upgrade not supported")
        except httptools.HttpParserError as exc:
            if self._switch_h2(data):
                return
            if self._refusal:
                self._refuse_head()
            else:
                self._reply_and_close(400, f"bad request: {exc}".encode())
            return
        if self._in_message:
            quickack(self._socket)  # a client's Nagle may hold the body until we ACK

    def _switch_h2(self, data: bytes) -> bool:
        """llhttp pauses right after the preface's head ``PRI * HTTP/2.0\\r\\n\\r\\n``: what it
        consumed before ``data`` was a prefix of the preface, so the input is rebuilt whole."""
        if self._h2 is None or self._transport is None:
            return False
        seen = self.bytes_received - len(data)
        if seen > len(H2_PREFACE):
            return False
        received = H2_PREFACE[:seen] + data
        if not received.startswith(H2_PREFACE):
            return False
        transport, self._transport = self._transport, None
        self._h2(self, transport, received)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback()

    # -- httptools callbacks ----------------------------------------------------

    # No on_message_begin: each Python callback costs; on_message_complete resets the state
    # for the next message and on_url (the first callback of every request) marks it begun.
    def on_url(self, url: bytes) -> None:
        self._in_message = True
        self._url += url
        if self._limits is not None:
            self._head_bytes += len(url)
            if self._head_bytes > self._limits.max_bytes:
                self._stop_head(HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _NAMES.get(name)
        if key is None:
            key = header_name(name)
        text = value.decode("latin-1")
        old = self._headers.get(key)
        if old is None:
            self._headers[key] = text
        else:
            self._headers[key] = f"{old}, {text}"
            self._repeat(key, old, text)
        limits = self._limits
        if limits is not None:
            # Envoy checks the size as the bytes arrive and the count as each field ends;
            # a head over both limits is refused for its size, as Envoy's order has it.
            self._head_bytes += len(name) + len(value)
            self._head_count += 1
            if self._head_bytes > limits.max_bytes:
                self._stop_head(HEADERS_TOO_LARGE)
            if self._head_count > limits.max_count:
                self._stop_head(TOO_MANY_HEADERS)

    def _repeat(self, key: str, first: str, text: str) -> None:
        """Keep each value of a repeated name (rare: only then is the dict made)."""
        repeats = self._repeats
        if repeats is None:
            repeats = self._repeats = {}
        values = repeats.get(key)
        if values is None:
            repeats[key] = [first, text]
        else:
            values.append(text)

    def _stop_head(self, details: str) -> None:
        self._refusal = details
        raise _HeadRefused(details)

    def _refuse_head(self) -> None:
        """Answer a head over a limit ``431`` and close, as Envoy's codec does (§1.8)."""
        details, self._refusal = self._refusal, ""
        raw = self._parser.get_method()
        req = Request(_METHODS.get(raw) or raw.decode("latin-1"), self._url.decode("latin-1"),
                      self._headers, b"", False, self._repeats)
        self._url, self._headers, self._body, self._repeats = b"", {}, [], None
        resp: Response | None = None
        if self._refused is not None:
            try:
                resp = self._refused(req, self, 431, details)
            except Exception:  # a bug in the hook must not leave the client without an answer
                log.exception("refusal hook failed for a head over a limit (%s)", details)
        if resp is None:
            resp = Response(431, {"content-type": "text/plain"},
                            b"Request Header Fields Too Large")
        self.write(resp, keep_alive=False)
        self._close_after_flush()

    def _close_after_flush(self) -> None:
        """Envoy's ``FlushWriteAndDelay``: send the answer, stop writing, and read (and drop)
        what the client still sends for a while before closing; closing a socket with
        unread input makes the kernel reset it, and the client could lose the answer."""
        transport = self._transport
        if transport is None:
            return
        self._discarding = True
        if transport.can_write_eof():
            transport.write_eof()
        loop = self.loop or asyncio.get_running_loop()
        loop.call_later(_DELAYED_CLOSE_S, self.close)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        parser = self._parser
        raw = parser.get_method()
        method = _METHODS.get(raw) or raw.decode("ascii")
        body = self._body
        req = Request(method, self._url.decode("latin-1"), self._headers,
                      (body[0] if len(body) == 1 else b"".join(body)) if body else b"",
                      parser.should_keep_alive(), self._repeats)
        self._url, self._headers, self._body = b"", {}, []
        if self._repeats is not None:
            self._repeats = None
        if self._limits is not None:
            self._head_bytes = self._head_count = 0
        if self._current is None:
            self._start(req)
        else:
            self._pending.append(req)

    # -- request processing -----------------------------------------------------

    def _start(self, req: Request) -> None:
        self._current = req
        fast = self._fast
        if fast is not None:
            try:
                if fast(req, self):
                    return
            except Exception:  # a bug in the fast handler: answer, never hang the client
                log.exception("fast handler failed for %s %s", req.method, req.target)
                self._finish(req, Response(500, {"content-type": "text/plain"},
                                           b"internal error"))
                return
        loop = self.loop or asyncio.get_running_loop()
        self._task = loop.create_task(self._run(req, self._handler(req, self)),
                                      name=REQUEST_TASK_NAME)

    def adopt(self, handling: Awaitable[Response | None]) -> None:
        """Finish the request a fast handler took in a task (awaiting ``handling``)."""
        req = self._current
        if req is None:
            raise RuntimeError("adopt() without a request taken by the fast handler")
        self.on_lost = None
        loop = self.loop or asyncio.get_running_loop()
        self._task = loop.create_task(self._run(req, handling), name=REQUEST_TASK_NAME)
        if self._transport is None:
            # The client already left: cancel once the coroutine has started, so its
            # own CancelledError handling (a DC record) runs.
            loop.call_soon(self._task.cancel)

    def respond(self, resp: Response | None) -> None:
        """Answer the request a fast handler took (``None``: write nothing)."""
        req = self._current
        if req is None:
            return
        self.on_lost = None
        self._finish(req, resp)

    async def _run(self, req: Request, handling: Awaitable[Response | None]) -> None:
        try:
            resp = await handling
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception:
            log.exception("handler failed for %s %s", req.method, req.target)
            resp = Response(500, {"content-type": "text/plain"}, b"internal error")
        self._task = None
        self._finish(req, resp)

    def _finish(self, req: Request, resp: Response | None) -> None:
        self._current = None
        if self._transport is None:
            return
        if resp is not None:
            self.write(resp, req.keep_alive, req.method == "HEAD")
        if not req.keep_alive:
            self.close()
        elif self._pending:
            self._start(self._pending.popleft())

    def write(self, resp: Response, keep_alive: bool = True, head: bool = False) -> int:
        """Write one response; returns the number of bytes handed to the socket."""
        if self._transport is None:
            return 0
        data = encode_response(resp, keep_alive, head)
        self._transport.write(data)
        return len(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _reply_and_close(self, status: int, body: bytes) -> None:
        self.write(Response(status, {"content-type": "text/plain"}, body), keep_alive=False)
        self.close()


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
                backlog: int = 1024, fast: FastHandler | None = None,
                limits: HeadLimits | None = None, refused: Refused | None = None,
                h2: H2Switch | None = None) -> asyncio.Server:
    """Listen on ``host:port`` (0 = pick) and serve every connection with ``handler``
    (``fast``, if given, gets the first chance at each request; ``limits`` and
    ``refused`` bound the request heads, ``h2`` takes HTTP/2 connections: see the module
    doc)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: ServerConnection(handler, fast, limits=limits, refused=refused, h2=h2), host, port,
        backlog=backlog, reuse_address=True)
