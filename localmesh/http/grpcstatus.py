"""gRPC's wire vocabulary as Envoy reads it (docs/fidelity.md §1.9): the two tables between
HTTP statuses and gRPC status codes, the status names ``%GRPC_STATUS%`` prints, and the
``grpc-timeout`` header.

The sidecar answers local replies with ``http_to_grpc_status``; the reference chain's gRPC
leg maps both ways at its two ends; the probes read access-log lines with the names and the
timeout parser. Kept here, in the lean HTTP package, so the chain image and the probes get
them without the sidecar.
"""

from __future__ import annotations

__all__ = ["GRPC_STATUS_NAMES", "format_grpc_timeout", "grpc_status_code", "grpc_to_http_status",
           "http_to_grpc_status", "parse_grpc_timeout"]

_MAX_VALUE = 99_999_999  # "TimeoutValue → {positive integer as ASCII string of at most 8 digits}"
_UNIT_MS = {"H": 3_600_000, "M": 60_000, "S": 1000, "m": 1}

# Grpc::Utility::grpcStatusToString: the names %GRPC_STATUS% prints by default (CAMEL_STRING).
GRPC_STATUS_NAMES = ("Ok", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
                     "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
                     "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented", "Internal",
                     "Unavailable", "DataLoss", "Unauthenticated")

# Any of %GRPC_STATUS%'s spellings, lower-cased without "_", to its code (SNAKE_STRING says
# CANCELLED where CAMEL_STRING says Canceled).
_CODE_BY_NAME = {name.lower(): code for code, name in enumerate(GRPC_STATUS_NAMES)}
_CODE_BY_NAME["cancelled"] = 1

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


def parse_grpc_timeout(value: str | None) -> int | None:
    """The header's timeout in ms, or None when absent or not a valid ``grpc-timeout``."""
    if not value or len(value) < 2:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isdigit() or not digits.isascii() or int(digits) > _MAX_VALUE:
        return None
    n = int(digits)
    if unit in _UNIT_MS:
        return n * _UNIT_MS[unit]
    if unit == "u":
        return -(-n // 1000)  # rounded up, as Envoy does
    if unit == "n":
        return -(-n // 1_000_000)
    return None


def format_grpc_timeout(ms: int) -> str:
    """``Grpc::Common::toGrpcTimeout``: the largest precision that fits 8 digits."""
    if ms <= _MAX_VALUE:
        return f"{ms}m"
    t = ms // 1000
    for unit in ("S", "M"):
        if t <= _MAX_VALUE:
            return f"{t}{unit}"
        t //= 60
    return f"{min(t, _MAX_VALUE)}H"


def grpc_status_code(value: str | None) -> int | None:
    """A ``%GRPC_STATUS%`` value in any of its formats (CAMEL_STRING ``Unavailable``,
    SNAKE_STRING ``UNAVAILABLE``, NUMBER ``14``) as its code; None when absent or unknown."""
    if not value:
        return None
    if value.isdigit():
        return int(value)
    return _CODE_BY_NAME.get(value.replace("_", "").lower())
