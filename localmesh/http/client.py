"""Client side of HTTP/1.1: keep-alive connection pool on asyncio protocols + httptools.

Two levels:
- :meth:`ConnectionPool.acquire` / :meth:`ClientConnection.send` /
  :meth:`ConnectionPool.release` give the sidecar full control over each try
  (it arms its own timers and aborts the connection on expiry, the way Envoy's
  H1 pool closes the connection when a stream is reset, docs/fidelity.md §1.1);
- :meth:`ClientConnection.start` is :meth:`~ClientConnection.send` without a
  future: the response (or the error) is handed to a callback from the protocol's
  own parser callback, so a proxy can forward it with no task in between;
- :meth:`ConnectionPool.request` is the one-call API for services:
  ``await pool.request("GET", "http://orders:8080/x", headers, body, timeout=1.0)``.
  Cancelling it (or its timeout) closes the connection, so the server sees the
  caller go away.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Mapping
from typing import TypeVar, cast
from urllib.parse import urlsplit

import httptools

from localmesh.http.errors import ConnectError, ConnectionTerminated, HttpError, HttpProtocolError
from localmesh.http.message import NAMES as _NAMES
from localmesh.http.message import Headers, Response, encode_request, header_name
from localmesh.http.tcp import quickack

__all__ = ["ClientConnection", "ConnectionPool", "ResponseCallback", "open_connection"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def open_connection(factory: Callable[[], _P], key: tuple[str, int],
                          connect_timeout: float | None) -> _P:
    """Connect to ``key`` with ``factory``'s protocol; a failure is the ConnectError with
    the reason and transport failure Envoy logs for it (a refusal or reset is a "remote
    connection failure", a timeout a "connection timeout")."""
    host, port = key
    try:
        async with asyncio.timeout(connect_timeout):
            _, proto = await asyncio.get_running_loop().create_connection(factory, host, port)
    except TimeoutError:
        raise ConnectError(f"connect to {host}:{port} timed out after {connect_timeout}s",
                           reason="connection timeout") from None
    except OSError as exc:
        name = os.strerror(exc.errno) if exc.errno else str(exc)
        refused = exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET)
        raise ConnectError(
            f"connect to {host}:{port} failed: {name}",
            reason="remote connection failure" if refused else "local connection failure",
            transport_failure=f"delayed connect error: {name}") from exc
    return proto

# Called once per request started with ClientConnection.start: (response, None) or
# (None, the HttpError that ended the exchange).
ResponseCallback = Callable[[Response | None, HttpError | None], None]


class ClientConnection(asyncio.Protocol):
    """One upstream connection carrying one request at a time."""

    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._future: asyncio.Future[Response] | None = None
        self._callback: ResponseCallback | None = None
        self._sent = False  # a request was ever written: bytes before that are garbage
        self._headers: Headers = {}
        self._extra: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._head = False
        self._framed = False
        self.headers_at = 0.0
        self.local = ("", 0)
        self.local_text = ""
        self.reusable = False
        self.closed = False
        self._socket: object = None
        self._in_message = False
        # Set when connected. asyncio.get_running_loop() costs a getpid() syscall on
        # Python 3.11; a connection lives on one loop, so look it up once.
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.local = transport.get_extra_info("sockname") or ("", 0)
        self.local_text = f"{self.local[0]}:{self.local[1]}"
        self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if not self._sent:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpProtocolError(f"bad response from {self.key[0]}:{self.key[1]}: {exc}"))
            self.abort()
            return
        if self._in_message:
            quickack(self._socket)  # the rest may be held by the peer's Nagle until we ACK

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._transport = None
        if not self._waiting():
            return
        if self.headers_at and not self._framed:
            self.on_message_complete()  # body delimited by close (RFC 9112 §6.3)
            return
        self._fail(ConnectionTerminated(
            f"upstream {self.key[0]}:{self.key[1]} closed the connection",
            headers_received=bool(self.headers_at)))

    # -- httptools callbacks ----------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _NAMES.get(name)
        if key is None:
            key = header_name(name)
        text = value.decode("latin-1")
        if key == "set-cookie":
            self._extra.append((key, text))
            return
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.headers_at = (self._loop or asyncio.get_running_loop()).time()
        h = self._headers
        self._framed = "content-length" in h or "chunked" in h.get("transfer-encoding", "")
        if self._head or self._parser.get_status_code() in (204, 304):
            self._framed = True
            if self._head:
                # httptools cannot skip a HEAD body; finish now and never reuse.
                self.on_message_complete()
                self.reusable = False

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        callback = self._callback
        fut = self._future
        if callback is None and (fut is None or fut.done()):
            return
        self.reusable = (not self.closed and not self._head and self._framed
                         and self._parser.should_keep_alive())
        body = self._body
        resp = Response(self._parser.get_status_code(), self._headers,
                        (body[0] if len(body) == 1 else b"".join(body)) if body else b"",
                        self._extra or None)
        if callback is not None:
            self._callback = None
            callback(resp, None)
        elif fut is not None:
            fut.set_result(resp)

    def _waiting(self) -> bool:
        """A response is still expected for the request in flight."""
        if self._callback is not None:
            return True
        return self._future is not None and not self._future.done()

    # -- API ----------------------------------------------------------------------

    def send(self, method: str, target: str, host: str, headers: Headers,
             body: bytes) -> asyncio.Future[Response]:
        """Write one request; the future resolves with the whole response."""
        fut: asyncio.Future[Response] = (self._loop or asyncio.get_running_loop()).create_future()
        self._future = fut
        self._callback = None
        self._write(method, target, host, headers, body)
        return fut

    def start(self, method: str, target: str, host: str, headers: Headers, body: bytes,
              callback: ResponseCallback) -> None:
        """Write one request; ``callback`` gets the response or the error, exactly once
        (possibly before this returns, if the connection is already closed)."""
        self._future = None
        self._callback = callback
        self._write(method, target, host, headers, body)

    def cancel(self) -> None:
        """Forget the request in flight without a callback (its caller gave up) and abort."""
        self._callback = None
        self.abort()

    def _write(self, method: str, target: str, host: str, headers: Headers,
               body: bytes) -> None:
        self._sent = True
        self._in_message = True  # until on_message_complete (no on_message_begin: a callback less)
        self._headers, self._extra, self._body = {}, [], []
        self._head = method == "HEAD"
        self.headers_at = 0.0
        self.reusable = False
        if self._transport is None:
            self._fail(ConnectionTerminated(
                f"upstream {self.key[0]}:{self.key[1]} closed the connection"))
        else:
            self._transport.write(encode_request(method, target, host, headers, body))

    def abort(self) -> None:
        """Close now (a reset, in H1 terms); a pending response fails with a local reset."""
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: HttpError) -> None:
        callback = self._callback
        if callback is not None:
            self._callback = None
            callback(None, exc)
            return
        if self._future is not None and not self._future.done():
            self._future.set_exception(exc)
            # Retrieved by whoever awaits; avoid "exception never retrieved" if nobody does.
            self._future.exception()


class ConnectionPool:
    """Idle keep-alive connections per ``(host, port)``, newest first."""

    def __init__(self, *, max_idle_per_host: int = 64) -> None:
        self._idle: dict[tuple[str, int], list[ClientConnection]] = {}
        self._max_idle = max_idle_per_host
        self._busy: set[ClientConnection] = set()

    def idle_count(self, host: str, port: int) -> int:
        return sum(1 for c in self._idle.get((host, port), ()) if not c.closed)

    async def acquire(self, host: str, port: int,
                      connect_timeout: float | None) -> ClientConnection:
        """An idle connection to ``host:port``, else a new one (raises :class:`ConnectError`)."""
        conn = self.take_idle(host, port)
        if conn is None:
            conn = await self._connect((host, port), connect_timeout)
            self._busy.add(conn)
        return conn

    def take_idle(self, host: str, port: int) -> ClientConnection | None:
        """An idle connection to ``host:port`` if there is one (no await: the common case)."""
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._busy.add(conn)
                return conn
        return None

    def release(self, conn: ClientConnection) -> None:
        """Give a connection back after its response completed; unusable ones are closed."""
        self._busy.discard(conn)
        if not conn.reusable or conn.closed:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            idle.pop(0).abort()
        idle.append(conn)

    def discard(self, conn: ClientConnection) -> None:
        """Abort a connection that must not be reused (timed out, cancelled)."""
        self._busy.discard(conn)
        conn.abort()

    async def _connect(self, key: tuple[str, int],
                       connect_timeout: float | None) -> ClientConnection:
        return await open_connection(lambda: ClientConnection(key), key, connect_timeout)

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      body: bytes = b"", timeout: float | None = None, *,  # noqa: ASYNC109
                      connect_timeout: float | None = 10.0, proxy: str | None = None) -> Response:
        """Send one request to an absolute ``http://`` URL and return the whole response.

        ``timeout`` bounds the whole exchange (``TimeoutError``); on timeout or
        cancellation the connection is closed, so the server sees the caller leave.
        ``proxy`` (``http://host:port``, e.g. ``HTTP_PROXY``) sends the request in
        absolute form to that proxy, as HTTP clients do with a forward proxy.
        """
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only absolute http:// URLs are supported, got {url!r}")
        host, port = parts.hostname, parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        if proxy:
            via = urlsplit(proxy)
            if via.scheme != "http" or not via.hostname:
                raise ValueError(f"proxy must be an http://host:port URL, got {proxy!r}")
            host, port = via.hostname, via.port or 80
            target = f"http://{parts.netloc}{target}"
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        async with asyncio.timeout(timeout):
            conn = await self.acquire(host, port, connect_timeout)
            try:
                resp = await conn.send(method, target, hdrs.pop("host", parts.netloc), hdrs, body)
            except BaseException:
                self.discard(conn)
                raise
        self.release(conn)
        return resp

    async def close(self) -> None:
        """Close every connection, idle or busy."""
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        await asyncio.sleep(0)
