"""Envoy's gRPC rules in the router, as pure functions (docs/fidelity.md §1.9).

- ``grpc-timeout`` is read as Envoy's ``Grpc::Common::getGrpcTimeout`` reads it: at most
  8 digits and one unit of ``H M S m u n`` (``u``/``n`` rounded *up* to whole ms); any
  other value counts as absent;
- ``FilterUtility::finalTimeout``: for a gRPC request on a route with ``max_grpc_timeout``
  (Istio sets it to the route's timeout, 0 = no cap), the global timeout is the header's
  value capped at that maximum; no header (or an unparsable one) means the maximum;
- ``setTimeoutHeaders`` writes the try's expected timeout back as ``grpc-timeout``
  (``Grpc::Common::toGrpcTimeout``: ms while it fits 8 digits, then S, M, H);
- a local reply to a gRPC request is trailers-only: ``:status 200``, ``grpc-status`` from
  ``Grpc::Utility::httpToGrpcStatus`` and the body text, percent-encoded, as
  ``grpc-message``; a fault filter's gRPC abort gives its own status instead (§2.4).
"""

from __future__ import annotations

from collections.abc import Mapping

from localmesh.http.grpcstatus import (
    GRPC_STATUS_NAMES,
    format_grpc_timeout,
    http_to_grpc_status,
    parse_grpc_timeout,
)
from localmesh.http.message import Response

__all__ = ["GRPC_STATUS_NAMES", "format_grpc_timeout", "grpc_local_reply", "grpc_span_tags",
           "http_to_grpc_status", "is_grpc", "parse_grpc_timeout", "percent_encode"]

def is_grpc(headers: Mapping[str, str]) -> bool:
    """``Grpc::Common::isGrpcRequestHeaders``: content-type ``application/grpc[+…|;…]``."""
    ctype = headers.get("content-type", "")
    return ctype == "application/grpc" or ctype.startswith(("application/grpc+",
                                                            "application/grpc;"))


def percent_encode(text: str) -> str:
    """``PercentEncoding::encode`` for grpc-message: ``%`` and bytes outside 0x20-0x7e."""
    out: list[str] = []
    for byte in text.encode():
        if byte < 0x20 or byte > 0x7E or byte == 0x25:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def grpc_local_reply(local: Response, grpc_status: int | None = None) -> Response:
    """The trailers-only answer Envoy sends a gRPC caller instead of a local reply;
    ``grpc_status`` is ``sendLocalReply``'s override (a fault filter's gRPC abort), else the
    status is ``httpToGrpcStatus`` of the reply's."""
    code = grpc_status if grpc_status is not None else http_to_grpc_status(local.status)
    headers = {"content-type": "application/grpc", "grpc-status": str(code)}
    text = local.body.decode("utf-8", "replace")
    if text:
        headers["grpc-message"] = percent_encode(text)
    for name in ("server", "x-envoy-upstream-service-time"):
        if name in local.headers:
            headers[name] = local.headers[name]
    return Response(200, headers, b"")


# HttpTracerUtility's addGrpcResponseTags: the codes it counts as an upstream error.
_SPAN_ERROR_CODES = frozenset({2, 4, 8, 12, 13, 14, 15})


def grpc_span_tags(req_headers: Mapping[str, str], authority: str, status: int,
                   resp_headers: Mapping[str, str],
                   trailers: Mapping[str, str]) -> tuple[dict[str, str], bool]:
    """Envoy's gRPC tags on a sidecar's span (``finalizeDownstreamSpan``): the request's path,
    authority, content type and (rewritten) ``grpc-timeout``, then ``grpc.status_code`` and
    ``grpc.message`` of the answer's head or trailers (a local reply's trailers-only head
    carries ``httpToGrpcStatus``); the bool says whether the status is an error tag."""
    tags = {"grpc.authority": authority,
            "grpc.content_type": req_headers.get("content-type", "")}
    timeout = req_headers.get("grpc-timeout")
    if timeout is not None:
        tags["grpc.timeout"] = timeout
    source = resp_headers if "grpc-status" in resp_headers else trailers
    code = source.get("grpc-status")
    if code is None and status:
        code = str(http_to_grpc_status(status)) if status != 200 else None
    if code is None:
        return tags, False
    tags["grpc.status_code"] = code
    if source.get("grpc-message"):
        tags["grpc.message"] = source["grpc-message"]
    return tags, code.isdigit() and int(code) in _SPAN_ERROR_CODES
