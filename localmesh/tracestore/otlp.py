"""The OTLP/HTTP trace receiver (``POST /v1/traces``).

Accepts ``application/x-protobuf`` (an ExportTraceServiceRequest) and
``application/json`` (the protobuf JSON mapping, where OTLP/JSON writes trace and
span ids as hex; base64 ids are accepted too), optionally gzip-compressed
(aiohttp inflates the body).
Answers as the OTLP specification asks: 200 with an ExportTraceServiceResponse in
the request's encoding (``partialSuccess`` counting spans rejected for bad ids),
400 with a ``google.rpc.Status`` for a body that cannot be decoded, 415 for other
media types.

With a token (the local mesh always gives one) every export must carry
``Authorization: Bearer <token>``; any other is refused before its body is read, as the
OpenTelemetry Collector's ``confighttp`` auth interceptor does: 401 with a
``google.rpc.Status`` UNAUTHENTICATED (16) in the request's encoding, which OTLP/HTTP
clients do not retry (docs/fidelity.md §8.5). Without one (tests embedding the app)
anyone may export.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from localmesh.errors import OtlpDecodeError
from localmesh.tracestore.model import Span, SpanEvent, TraceStore

__all__ = ["OtlpDecodeError", "create_otlp_app", "decode_request", "spans_from_request"]

log = logging.getLogger("localmesh.tracestore")

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_INVALID_ARGUMENT = 3
_UNAUTHENTICATED = 16  # google.rpc.Code; the Collector's mapping of HTTP 401
_ID_KEYS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_KINDS = {trace_pb2.Span.SPAN_KIND_SERVER: "server", trace_pb2.Span.SPAN_KIND_CLIENT: "client",
          trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
          trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
          trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer"}
_STATUS = {trace_pb2.Status.STATUS_CODE_OK: "OK", trace_pb2.Status.STATUS_CODE_ERROR: "ERROR"}
_STORE: web.AppKey[TraceStore] = web.AppKey("trace_store", TraceStore)


# -- decoding -------------------------------------------------------------------------

def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex where the protobuf JSON mapping expects base64."""
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        width = _ID_KEYS.get(key)
        if width and isinstance(value, str) and len(value) == width and _HEX.match(value):
            value = base64.b64encode(bytes.fromhex(value)).decode()
        out[key] = _hex_ids_to_base64(value)
    return out


def decode_request(body: bytes, content_type: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """Decode a request body of either encoding; OtlpDecodeError when it is garbage."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    if content_type == _PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpDecodeError(f"the body is not an ExportTraceServiceRequest: {exc}") from exc
        return request
    try:
        document = json.loads(body.decode("utf-8"))
        json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
    except (UnicodeDecodeError, json.JSONDecodeError, json_format.ParseError) as exc:
        raise OtlpDecodeError(f"the body is not OTLP/JSON: {exc}") from exc
    return request


def _value(any_value: common_pb2.AnyValue) -> Any:
    which = any_value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if which == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(any_value.bytes_value).decode()
    return getattr(any_value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def spans_from_request(request: trace_service_pb2.ExportTraceServiceRequest,
                       ) -> tuple[list[Span], int]:
    """Convert to store spans; returns (spans, how many were rejected for bad ids)."""
    spans: list[Span] = []
    rejected = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(
                        span.trace_id) or not any(span.span_id):
                    rejected += 1
                    continue
                spans.append(_span(span, service, resource))
    return spans, rejected


def _span(span: trace_pb2.Span, service: str, resource: dict[str, Any]) -> Span:
    parent = span.parent_span_id.hex() if len(span.parent_span_id) == 8 else ""
    return Span(
        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
        parent_span_id="" if parent == "0" * 16 else parent,
        name=span.name, kind=_KINDS.get(span.kind, ""),
        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
        service=service, attributes=_attributes(span.attributes),
        events=tuple(SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes))
                     for e in span.events),
        status_code=_STATUS.get(span.status.code, "UNSET"),
        status_message=span.status.message, resource=resource,
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links))


# -- the receiver ---------------------------------------------------------------------

def _reply(message: Any, content_type: str, status: int = 200) -> web.Response:
    if content_type == _PROTOBUF:
        return web.Response(body=message.SerializeToString(), status=status,
                            content_type=_PROTOBUF)
    return web.Response(text=json_format.MessageToJson(message, indent=None), status=status,
                        content_type=_JSON)


async def _body(request: web.Request) -> bytes:
    # aiohttp inflates gzip/deflate bodies (Content-Encoding) itself; a broken one
    # surfaces here as a payload error.
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        raise OtlpDecodeError(f"the body cannot be decompressed: {exc}") from exc


async def _receive(request: web.Request) -> web.Response:
    content_type = request.content_type
    if content_type not in (_PROTOBUF, _JSON):
        return web.Response(status=415, text=f"unsupported Content-Type '{content_type}', "
                            f"expected {_PROTOBUF} or {_JSON}")
    try:
        spans, rejected = spans_from_request(decode_request(await _body(request), content_type))
    except OtlpDecodeError as exc:
        log.warning("rejected an OTLP export: %s", exc)
        status = status_pb2.Status(code=_INVALID_ARGUMENT, message=str(exc))
        return _reply(status, content_type, 400)
    request.app[_STORE].add(spans)
    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = (
            f"{rejected} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, "
            "not all zero")
    return _reply(response, content_type)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unauthorized(content_type: str) -> web.Response:
    """401 as the Collector's OTLP receiver writes it: a Status in the request's encoding
    (plain text for another media type), plus the challenge RFC 9110 §11.6.1 asks of a 401."""
    message = "Unauthorized: this receiver takes exports bearing the mesh's OTLP token"
    if content_type in (_PROTOBUF, _JSON):
        response = _reply(status_pb2.Status(code=_UNAUTHENTICATED, message=message),
                          content_type, 401)
    else:
        response = web.Response(status=401, text=message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="meshchaos-otlp"'
    return response


def _authenticate(token: str) -> Middleware:
    """Refuse any request without ``Authorization: Bearer <token>`` before reading its body
    (the scheme in any case: RFC 9110 §11.1, as Kubernetes' bearer authenticator reads it)."""
    expected = token.encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Bytes as they came (aiohttp keeps undecodable ones as surrogates: a strict encode
        # would raise, a 500), compared in constant time: no guessing the token by timing.
        presented = given.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, expected):
            log.warning("refused an OTLP export from %s without the mesh's token",
                        request.remote)
            return _unauthorized(request.content_type)
        return await handler(request)
    return authenticate


def create_otlp_app(store: TraceStore, *, token: str | None = None) -> web.Application:
    """The OTLP/HTTP receiver application over ``store``.

    With ``token``, every export must bear it (401 otherwise, nothing stored); the local
    mesh always gives one. Without, anyone may export (tests embed the app so).
    """
    app = web.Application(client_max_size=32 * 1024 * 1024,
                          middlewares=[_authenticate(token)] if token else [])
    app[_STORE] = store
    app.router.add_post("/v1/traces", _receive)
    return app

