"""Errors of the local mesh.

One tree, rooted at :class:`MeshError`. API-facing errors carry the Kubernetes
``Status`` fields (code, reason, the offending field) so the API server can turn
any of them into the body a real API server would send::

    MeshError
    ├── ApiError                 (code, reason: a Kubernetes Status)
    │   ├── NotFound             404 NotFound
    │   ├── AlreadyExists        409 AlreadyExists
    │   ├── Conflict             409 Conflict (resourceVersion mismatch)
    │   ├── Invalid              422 Invalid, names the field
    │   ├── BadRequest           400 BadRequest (malformed body, bad selector)
    │   ├── Unauthorized         401 Unauthorized (no or a wrong bearer token)
    │   ├── MethodNotAllowed     405 MethodNotAllowed
    │   ├── NotAcceptable        406 NotAcceptable (an Accept type the server does not serve)
    │   └── Expired              410 Expired (a watch from a resourceVersion no longer kept)
    ├── ManifestError            a manifest file that cannot be loaded (names file, object, field)
    ├── StateDirError            a state dir that is live, locked or unreadable
    ├── ProcessError             a pod's process could not start or stay up
    ├── SidecarConfigError       a pushed sidecar configuration that cannot be applied
    ├── ChaosSpecError           a Chaos Mesh duration, percentage, rate or selector value
    │   │                        that does not parse (also a ValueError)
    │   └── UnknownMode          a selector mode Chaos Mesh does not have
    ├── NoPodSelected            a chaos selector that matches no pod (also a LookupError)
    ├── EffectError              a chaos record that could not be applied or recovered
    ├── QueryError               a trace query parameter Jaeger answers with 400 (also a ValueError)
    └── OtlpDecodeError          an OTLP/HTTP body that is not an ExportTraceServiceRequest
                                 (also a ValueError)
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "ChaosSpecError",
    "Conflict",
    "EffectError",
    "Expired",
    "Invalid",
    "ManifestError",
    "MeshError",
    "MethodNotAllowed",
    "NoPodSelected",
    "NotAcceptable",
    "NotFound",
    "OtlpDecodeError",
    "ProcessError",
    "QueryError",
    "SidecarConfigError",
    "StateDirError",
    "Unauthorized",
    "UnknownMode",
]


class MeshError(Exception):
    """Root of every error the local mesh raises."""


class ApiError(MeshError):
    """An error the Kubernetes API subset reports as a ``Status`` object."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, kind: str = "", name: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.field = field

    def to_status(self) -> dict[str, object]:
        """Render the error as the ``Status`` body a Kubernetes API server returns."""
        details: dict[str, object] = {}
        if self.name:
            details["name"] = self.name
        if self.kind:
            details["kind"] = self.kind
        if self.field:
            details["causes"] = [
                {"reason": "FieldValueInvalid", "message": self.message, "field": self.field}
            ]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": details,
            "code": self.code,
        }


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Conflict(ApiError):
    code = 409
    reason = "Conflict"


class Invalid(ApiError):
    code = 422
    reason = "Invalid"


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Unauthorized(ApiError):
    code = 401
    reason = "Unauthorized"


class MethodNotAllowed(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class NotAcceptable(ApiError):
    code = 406
    reason = "NotAcceptable"


class Expired(ApiError):
    code = 410
    reason = "Expired"


class ManifestError(MeshError, ValueError):
    """A manifest file that cannot be loaded; the message names file, object and field."""


class StateDirError(MeshError):
    """A state directory that belongs to a live mesh or cannot be used."""


class ProcessError(MeshError):
    """A pod's process that could not be started or supervised."""


class SidecarConfigError(MeshError, ValueError):
    """A sidecar configuration pushed by the control plane that cannot be applied."""


class ChaosSpecError(MeshError, ValueError):
    """A Chaos Mesh string quantity (duration, percentage, rate, selector mode or value)
    that does not parse; the message is the reason (``"is not a duration"``), which the
    admission hook prefixes with the field and the value."""


class UnknownMode(ChaosSpecError):
    """A selector ``mode`` that is none of Chaos Mesh's modes (the field at fault is the
    mode, not its value)."""


class NoPodSelected(MeshError, LookupError):
    """Raised when a selector matches no pod (Chaos Mesh's "no pod is selected")."""

    def __init__(self) -> None:
        super().__init__("no pod is selected")


class EffectError(MeshError):
    """Raised when a chaos record could not be applied; the message goes into a Failed event."""


class QueryError(MeshError, ValueError):
    """A trace query parameter Jaeger would answer with 400."""


class OtlpDecodeError(MeshError, ValueError):
    """A request body that is not an ExportTraceServiceRequest."""
