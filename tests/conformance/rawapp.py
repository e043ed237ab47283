"""A loopback app that records every header field line it receives, repeats included.

The conformance apps of ``conftest`` (aiohttp) fold repeated fields and refuse field lines
over 8 KiB; the W3C edge cases (two ``traceparent`` lines) and Envoy's head limits (60 KiB)
need an app that keeps each line as it came and takes any size.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httptools


@dataclass
class RawRequest:
    """One request as the app received it: target and header lines in order."""

    target: str
    fields: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        """Every value of ``name`` (case-insensitive), one per field line."""
        return [v for k, v in self.fields if k == name.lower()]

    def one(self, name: str) -> str:
        """The value of a field that must arrive exactly once."""
        (value,) = self.values(name)
        return value


class _Conn(asyncio.Protocol):
    def __init__(self, app: RawApp) -> None:
        self._app = app
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._req = RawRequest("")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._req.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._req.fields.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        self._app.seen.append(self._req)
        self._req = RawRequest("")
        assert self._transport is not None
        self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                              b"content-length: 2\r\n\r\nok")


class RawApp:
    """Listens on 127.0.0.1 (``port`` once started) and answers every request ``200 ok``."""

    def __init__(self) -> None:
        self.seen: list[RawRequest] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def send_raw(port: int, head: bytes, within: float = 5.0) -> tuple[int, bytes]:
    """Write ``head`` to 127.0.0.1:``port`` as is; (status, the whole response)."""
    status, data, _ = await _exchange(port, head, within, False)
    return status, data


async def send_raw_then_eof(port: int, head: bytes,
                            within: float = 5.0) -> tuple[int, bytes, bool]:
    """As :func:`send_raw`, and whether the server closed the connection after answering
    (waits up to 1 s for the close)."""
    return await _exchange(port, head, within, True)


async def _exchange(port: int, head: bytes, within: float,
                    wait_close: bool) -> tuple[int, bytes, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closed = False
    try:
        async with asyncio.timeout(within):
            writer.write(head)
            await writer.drain()
            data = await reader.readuntil(b"\r\n\r\n")
            status = int(data.split(b" ", 2)[1])
            length = next((int(line.split(b":", 1)[1]) for line in data.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            data += await reader.readexactly(length)
        if wait_close:
            try:
                closed = await asyncio.wait_for(reader.read(1), 1.0) == b""
            except TimeoutError:
                closed = False
    finally:
        writer.close()
    return status, data, closed
