"""Envoy's two tables between HTTP statuses and gRPC status codes (docs/fidelity.md §1.9).

``http_to_grpc_status`` is what a sidecar answers a gRPC caller for a local reply; both
directions are what the reference chain's gRPC leg uses at its two ends.
"""

from __future__ import annotations

__all__ = ["grpc_to_http_status", "http_to_grpc_status"]

# Envoy source/common/grpc/status.cc Utility::grpcToHttpStatus
_GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
                 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


def http_to_grpc_status(status: int) -> int:
    """``Grpc::Utility::httpToGrpcStatus`` (gRPC's http-grpc-status-mapping.md)."""
    if status == 400:
        return 13  # INTERNAL
    if status == 401:
        return 16  # UNAUTHENTICATED
    if status == 403:
        return 7  # PERMISSION_DENIED
    if status == 404:
        return 12  # UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return 14  # UNAVAILABLE
    return 2  # UNKNOWN


def grpc_to_http_status(code: int) -> int:
    """``Grpc::Utility::grpcToHttpStatus``: an unknown code is 500, as in Envoy."""
    return _GRPC_TO_HTTP.get(code, 500)
