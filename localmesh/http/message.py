"""HTTP/1.1 messages as plain slotted objects, and their wire encoding.

Header names are kept lowercase; repeated request headers are joined with
``", "`` (RFC 9110 §5.3), which is what every consumer of a request here wants;
:attr:`Request.repeated` keeps the separate field values of a repeated name for
the one consumer that must not join them (the sidecar's tracer reads the first
``traceparent`` field, as Envoy's header map does: docs/fidelity.md §3).
Bodies are whole ``bytes``: the data path forwards buffered bodies with a fresh
``content-length``, so framing headers never cross a hop.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "Request",
    "Response",
    "encode_request",
    "encode_response",
    "reason_phrase",
]

Headers = dict[str, str]

# RFC 9110 §7.6.1 connection-specific fields, plus framing we always recompute.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authenticate", "proxy-authorization", "content-length",
})

_REQUEST_SKIP = HOP_BY_HOP | {"host"}

_REASONS = {s.value: s.phrase for s in HTTPStatus}
# "HTTP/1.1 200 OK\r\n" per known status: one lookup per response instead of a format.
_STATUS_LINES = {code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


# Field name as received -> lowercase text. Peers send the same few names on every
# message; bounded, since names come from the network.
NAMES: dict[bytes, str] = {}
_MAX_NAMES = 1024


def header_name(raw: bytes) -> str:
    """The lowercase text of a received field name, remembered for the next message."""
    name = raw.decode("latin-1").lower()
    if len(NAMES) < _MAX_NAMES:
        NAMES[raw] = name
    return name


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class Request:
    """A parsed request; ``target`` is the raw request-target (origin or absolute form)."""

    __slots__ = ("body", "headers", "keep_alive", "method", "repeated", "target")

    def __init__(self, method: str, target: str, headers: Headers, body: bytes = b"",
                 keep_alive: bool = True,
                 repeated: dict[str, list[str]] | None = None) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        # name -> each field value in arrival order, only for names sent more than once
        # (None when none was: the common request pays nothing for it).
        self.repeated = repeated


class Response:
    """A response; ``headers`` may hold repeated fields as a list of pairs in ``extra``."""

    __slots__ = ("body", "extra", "headers", "status")

    def __init__(self, status: int, headers: Headers | None = None, body: bytes = b"",
                 extra: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else {}
        self.body = body
        # Repeated response fields that must not be joined (set-cookie).
        self.extra = extra


def _encode_fields(lines: list[str], headers: Headers, skip: frozenset[str]) -> None:
    # One flat list of name, ": ", value, CRLF pieces: join() is cheaper than an f-string each.
    for name, value in headers.items():
        if name not in skip:
            lines += (name, ": ", value, "\r\n")


def encode_request(method: str, target: str, host: str, headers: Headers, body: bytes) -> bytes:
    lines = [method, " ", target, " HTTP/1.1\r\nhost: ", host, "\r\n"]
    _encode_fields(lines, headers, _REQUEST_SKIP)
    if body or method in _BODY_METHODS:
        lines += ("content-length: ", str(len(body)), "\r\n")
    lines.append("\r\n")
    data = "".join(lines).encode("latin-1")
    return data + body if body else data


def encode_response(resp: Response, keep_alive: bool, head: bool = False) -> bytes:
    status = resp.status
    line = _STATUS_LINES.get(status)
    lines = [line if line is not None else f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    _encode_fields(lines, resp.headers, HOP_BY_HOP)
    if resp.extra:
        for name, value in resp.extra:
            lines += (name, ": ", value, "\r\n")
    if status >= 200 and status != 204 and status != 304:
        lines += ("content-length: ", str(len(resp.body)), "\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    data = "".join(lines).encode("latin-1")
    return data + resp.body if resp.body and not head else data
