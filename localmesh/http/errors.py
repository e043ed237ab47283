"""Errors of the lean HTTP client, part of the :class:`localmesh.errors.MeshError` tree::

    MeshError
    └── HttpError
        ├── ConnectError          the TCP connect failed (refused, timed out)
        ├── ConnectionTerminated  the peer closed or reset before the response completed
        ├── StreamReset           an HTTP/2 peer reset the request's stream (RST_STREAM, GOAWAY)
        └── HttpProtocolError     the peer sent bytes that are not HTTP/1.1

The ``reason`` strings are Envoy's reset-reason names (docs/fidelity.md §1.6),
so the sidecar can put them into its local replies unchanged.
"""

from __future__ import annotations

from localmesh.errors import MeshError

__all__ = ["ConnectError", "ConnectionTerminated", "HttpError", "HttpProtocolError", "StreamReset"]


class HttpError(MeshError):
    """Root of the HTTP client's errors; ``reason`` is an Envoy reset reason."""

    reason = "local reset"

    def __init__(self, message: str, *, transport_failure: str = "") -> None:
        super().__init__(message)
        self.transport_failure = transport_failure


class ConnectError(HttpError, ConnectionError):
    """Connecting to the upstream failed: refused (``remote connection failure``) or timed out."""

    def __init__(self, message: str, *, reason: str, transport_failure: str = "") -> None:
        super().__init__(message, transport_failure=transport_failure)
        self.reason = reason


class ConnectionTerminated(HttpError, ConnectionError):
    """The upstream connection closed before the response was complete."""

    reason = "connection termination"

    def __init__(self, message: str, *, headers_received: bool = False) -> None:
        super().__init__(message)
        self.headers_received = headers_received


class StreamReset(HttpError, ConnectionError):
    """An HTTP/2 upstream reset the stream: Envoy's ``remote reset`` (flag ``UR``), or
    ``remote refused stream reset`` for ``REFUSED_STREAM`` and streams a GOAWAY left out."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.reason = "remote refused stream reset" if refused else "remote reset"


class HttpProtocolError(HttpError):
    """The upstream answered with something that does not parse as HTTP/1.1."""

    reason = "protocol error"
