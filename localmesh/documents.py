"""The shapes of the documents that cross a process boundary (docs/architecture.md).

- :data:`KubeObject`: a Kubernetes object as the store, the API server and the
  controllers pass it around (a JSON object; its ``metadata`` is an :class:`ObjectMeta`).
- :class:`SidecarConfigDoc`: the configuration document ``localmesh.xds`` builds for one
  sidecar and POSTs to its admin ``/config`` ("Sidecar" in docs/architecture.md). The
  writer is checked by mypy against these TypedDicts; the reader,
  ``localmesh.sidecar.config``, checks a received document against them once
  (``localmesh.doccheck``) before it builds the objects the data path reads.

Field types carry their runtime constraints as :data:`typing.Annotated` metadata
(:class:`Minimum`, :class:`NonEmpty`, :class:`OneOf`), which mypy ignores and the reader
enforces. A ``NotRequired`` field is one the reader has a default for (said next to it);
every other field must be present. All durations are milliseconds, 0 = none.

This module deliberately does not use ``from __future__ import annotations``: on Python
3.11 a TypedDict with string annotations reports every key as required.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypeAlias, TypedDict

__all__ = [
    "ACCESS_LOG_ENCODINGS",
    "FAULT_ACTIONS",
    "RETRY_ON_TOKENS",
    "SIDECAR_MODES",
    "AccessLogDoc",
    "AccessLogEncoding",
    "BandwidthDoc",
    "Count",
    "DelayDoc",
    "DestinationDoc",
    "EndpointDoc",
    "FaultAbortDoc",
    "FaultAction",
    "FaultDelayDoc",
    "FaultParamsDoc",
    "FaultRuleDoc",
    "FractionDenominator",
    "FractionalPercentDoc",
    "GatewayRoutesDoc",
    "HeaderMatchDoc",
    "HttpChaosPatchDoc",
    "HttpChaosReplaceDoc",
    "HttpChaosRuleDoc",
    "HttpChaosSelectorDoc",
    "HttpChaosTarget",
    "HttpFaultDoc",
    "KubeObject",
    "LossDoc",
    "MeshDoc",
    "Millis",
    "Minimum",
    "NodeDoc",
    "NonEmpty",
    "ObjectMeta",
    "OneOf",
    "OwnerReference",
    "Percent",
    "PercentDoc",
    "Port",
    "RetriesDoc",
    "RetryOn",
    "RouteDoc",
    "RouteMatchDoc",
    "ServiceDoc",
    "SidecarConfigDoc",
    "SidecarMode",
    "StatusCode",
]

# -- Kubernetes objects -------------------------------------------------------------------

KubeObject: TypeAlias = dict[str, Any]
"""A Kubernetes object (``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``…).

Kept a plain dict: every kind has its own ``spec``, and the store, admission hooks and
patches read and write arbitrary paths of it. Read ``metadata`` as :class:`ObjectMeta`
where its fields are used (``meta: ObjectMeta = obj["metadata"]``).
"""


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict, total=False):
    """The ``metadata`` fields the local mesh reads or writes (Kubernetes ObjectMeta)."""

    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    deletionGracePeriodSeconds: int
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    finalizers: list[str]


# -- constraints the reader enforces ------------------------------------------------------


@dataclass(frozen=True)
class Minimum:
    """A number's lower bound; ``exclusive``: the bound itself is out."""

    bound: float
    exclusive: bool = False


@dataclass(frozen=True)
class NonEmpty:
    """A string or a list with at least one element."""


@dataclass(frozen=True)
class OneOf:
    """A string from a fixed set (where the writer holds a plain ``str``, not a Literal)."""

    choices: frozenset[str]


Count = Annotated[int, Minimum(0)]
Port = Annotated[int, Minimum(0)]  # 0 = none
Millis = Annotated[float, Minimum(0)]  # milliseconds, 0 = none
Percent = Annotated[float, Minimum(0)]
_Bytes = Annotated[float, Minimum(0)]

SidecarMode = Literal["sidecar", "gateway"]
AccessLogEncoding = Literal["TEXT", "JSON"]
FaultAction = Literal["delay", "loss", "duplicate", "corrupt", "partition", "bandwidth", "netem"]
SIDECAR_MODES: tuple[SidecarMode, ...] = ("sidecar", "gateway")
ACCESS_LOG_ENCODINGS: tuple[AccessLogEncoding, ...] = ("TEXT", "JSON")
FAULT_ACTIONS: tuple[FaultAction, ...] = ("delay", "loss", "duplicate", "corrupt", "partition",
                                          "bandwidth", "netem")

# Envoy's x-envoy-retry-on conditions, HTTP and gRPC (docs/fidelity.md §1.3).
RETRY_ON_TOKENS = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "refused-stream", "retriable-4xx", "retriable-status-codes", "retriable-headers",
    "envoy-ratelimited", "http3-post-connect-failure", "cancelled", "deadline-exceeded",
    "internal", "resource-exhausted", "unavailable",
})
RetryOn = Annotated[str, OneOf(RETRY_ON_TOKENS)]
StatusCode = Annotated[int, Minimum(0)]

# -- the sidecar configuration document ---------------------------------------------------


class NodeDoc(TypedDict):
    """Who this sidecar is."""

    pod: str
    namespace: str
    service: str
    mode: NotRequired[SidecarMode]  # default "sidecar"
    app_port: NotRequired[Port]  # default 0: the port given on the command line


class AccessLogDoc(TypedDict, total=False):
    enabled: bool  # default true
    encoding: AccessLogEncoding  # default "TEXT"
    format: str  # default "": Istio's default format of the encoding


class MeshDoc(TypedDict, total=False):
    """Mesh-wide settings (``MeshConfig.to_doc``); each field defaults as in Istio."""

    honor_app_envoy_headers: bool  # default false
    sampling_percent: Percent  # default 1.0
    access_log: AccessLogDoc
    connect_timeout_ms: Millis  # default (and 0 =) 10000
    otlp_endpoint: str  # default "": no span export
    # default {}: sent on every export POST (the mesh's ``Authorization: Bearer <OTLP token>``,
    # docs/fidelity.md §8.5); a secret: the sidecar never logs it and redacts it in GET /config
    otlp_headers: dict[str, str]


class EndpointDoc(TypedDict):
    pod: str
    namespace: str
    host: NotRequired[str]  # default "127.0.0.1"
    port: Port
    labels: NotRequired[dict[str, str]]  # default {}
    ready: NotRequired[bool]  # default true
    tcp_port: NotRequired[Port]  # the pod's inbound TCP listener (tcp_proxy), when it has one


class ServiceDoc(TypedDict, total=False):
    """One Service, keyed by its FQDN in ``SidecarConfigDoc.services``."""

    name: str  # default: the FQDN's first label
    namespace: str  # default ""
    ports: list[Port]  # default []
    endpoints: list[EndpointDoc]  # default []
    tcp_ports: list[Port]  # default []: the ports Istio proxies as TCP (docs/fidelity.md §2.5)
    h2_ports: list[Port]  # default []: the ports Istio speaks HTTP/2 to (grpc, http2; §2.5)


class HeaderMatchDoc(TypedDict, total=False):
    """Exactly one of the three is read (the first present, in this order)."""

    exact: str
    prefix: str
    regex: str


class RouteMatchDoc(TypedDict, total=False):
    """The path condition (at most one of prefix/exact/regex; none = any path) and headers."""

    prefix: str
    exact: str
    regex: str
    headers: dict[str, HeaderMatchDoc]


class DestinationDoc(TypedDict):
    host: Annotated[str, NonEmpty()]
    subset: NotRequired[str]  # default "": the whole Service
    port: NotRequired[Port]  # default 0: the request's port, else the Service's first
    weight: NotRequired[Count]  # default 100


class RetriesDoc(TypedDict):
    attempts: Count  # 0 = no retries
    per_try_timeout_ms: NotRequired[Millis]  # default 0
    retry_on: NotRequired[list[RetryOn]]  # default (and [] =) Istio's default conditions
    retriable_status_codes: NotRequired[list[StatusCode]]  # default []


# Envoy's type.v3.FractionalPercent denominators (a draw fires when random % d < numerator).
FractionDenominator = Literal["HUNDRED", "TEN_THOUSAND", "MILLION"]


class FractionalPercentDoc(TypedDict):
    """Envoy's FractionalPercent: Istio writes ``percentage.value`` as numerator/MILLION and
    the deprecated integer ``percent`` as numerator/HUNDRED (docs/fidelity.md §2.4)."""

    numerator: Count
    denominator: FractionDenominator


class FaultDelayDoc(TypedDict):
    fixed_delay_ms: Annotated[float, Minimum(0, exclusive=True)]
    percentage: FractionalPercentDoc


class FaultAbortDoc(TypedDict):
    """Envoy's FaultAbort: its ``error_type`` is one of ``http_status`` and ``grpc_status``."""

    # Envoy's proto rule: 200 <= status < 600 (checked by the reader); default: a gRPC abort.
    http_status: NotRequired[StatusCode]
    # A gRPC status code (Istio's grpcStatus name translated, docs/fidelity.md §2.4).
    grpc_status: NotRequired[StatusCode]
    percentage: FractionalPercentDoc


class HttpFaultDoc(TypedDict, total=False):
    """Envoy's HTTPFault as a route's ``typed_per_filter_config`` (the caller's sidecar runs
    it before the router, docs/fidelity.md §2.4); at least one of the two is present."""

    delay: FaultDelayDoc
    abort: FaultAbortDoc


class RouteDoc(TypedDict):
    name: NotRequired[str]  # default ""
    match: NotRequired[list[RouteMatchDoc]]  # default []: every request
    destinations: Annotated[list[DestinationDoc], NonEmpty()]
    timeout_ms: NotRequired[Millis]  # default 0
    retries: NotRequired[RetriesDoc | None]  # default (and null =) Istio's default policy
    fault: NotRequired[HttpFaultDoc]  # default: no fault filter on this route


class GatewayRoutesDoc(TypedDict, total=False):
    """The routes of a VirtualService bound to a gateway."""

    hosts: list[str]  # default (and [] =) ["*"]
    routes: list[RouteDoc]  # default []


class DelayDoc(TypedDict):
    latency_ms: Millis
    jitter_ms: NotRequired[Millis]  # default 0
    correlation: NotRequired[Percent]  # default 0


class LossDoc(TypedDict):
    percent: Percent
    correlation: NotRequired[Percent]  # default 0


class PercentDoc(TypedDict):
    percent: Percent


class BandwidthDoc(TypedDict):
    rate_bytes_per_s: _Bytes  # must be > 0 when the action is "bandwidth"
    limit_bytes: NotRequired[_Bytes]  # written for fidelity; the token bucket does not use it
    buffer_bytes: NotRequired[_Bytes]  # the bucket's size, default 0


class FaultParamsDoc(TypedDict):
    """What a fault does: the action and the blocks that action uses."""

    action: FaultAction
    delay: NotRequired[DelayDoc]
    loss: NotRequired[LossDoc]
    duplicate: NotRequired[PercentDoc]
    corrupt: NotRequired[PercentDoc]
    bandwidth: NotRequired[BandwidthDoc]  # "bandwidth", and "netem" with a rate


class FaultRuleDoc(FaultParamsDoc):
    """One fault rule of the chaos controller, applied to this pod's egress."""

    id: str  # the chaos object, "namespace/name"
    peers: list[str] | None  # null = all egress, else only traffic to/from these "ns/name"
    external_hosts: NotRequired[list[str]]  # outside hosts; the sidecar ignores them


HttpChaosTarget = Literal["Request", "Response"]


class HttpChaosSelectorDoc(TypedDict, total=False):
    """What one HTTPChaos rule matches (chaos-tproxy's ``select_request``/``select_response``,
    docs/fidelity.md §5.5); an absent field matches everything."""

    port: Port  # the app port this inbound listener forwards to (the controller resolves it)
    path: str  # a wildcard pattern on the path without the query: ``*`` any run, ``?`` one char
    method: str  # exact, case-sensitive
    code: StatusCode  # Response rules: the app's status
    request_headers: dict[str, str]  # name (any case) -> a value one of its fields equals
    response_headers: dict[str, str]  # Response rules: the same on the app's response


class HttpChaosReplaceDoc(TypedDict, total=False):
    path: str  # Request: the new path, the query kept ("" = "/")
    method: str  # Request
    code: StatusCode  # Response
    body_base64: str  # the new body, base64 as the CRD's ``replace.body`` (format: byte)
    queries: dict[str, str]  # Request: set these query keys
    headers: dict[str, str]  # set, replacing every field of that name


class HttpChaosPatchDoc(TypedDict, total=False):
    body_json: str  # an RFC 7396 JSON merge patch applied to a JSON body
    queries: list[list[str]]  # Request: [name, value] pairs appended to the query
    headers: list[list[str]]  # [name, value] pairs appended as fields


class HttpChaosRuleDoc(TypedDict):
    """One HTTPChaos rule, applied by this pod's inbound sidecar in front of its app:
    requests the app receives (``Request``) or responses it sends (``Response``)."""

    id: str  # the chaos object, "namespace/name"
    target: HttpChaosTarget
    selector: HttpChaosSelectorDoc
    abort: NotRequired[bool]  # default false: close the connection, answer nothing
    delay_ms: NotRequired[Millis]  # default 0
    replace: NotRequired[HttpChaosReplaceDoc]
    patch: NotRequired[HttpChaosPatchDoc]


class SidecarConfigDoc(TypedDict):
    """The whole document; each POST replaces the previous one."""

    version: Count
    node: NodeDoc
    mesh: NotRequired[MeshDoc]  # default: every mesh default
    services: NotRequired[dict[str, ServiceDoc]]  # by FQDN, default {}
    routes: NotRequired[dict[str, list[RouteDoc]]]  # by FQDN; a host without = default route
    subsets: NotRequired[dict[str, dict[str, dict[str, str]]]]  # FQDN -> subset -> labels
    connect_timeout_ms: NotRequired[dict[str, Millis]]  # by FQDN, else the mesh's
    gateway_routes: NotRequired[list[GatewayRoutesDoc]]  # default []
    faults: NotRequired[list[FaultRuleDoc]]  # default []
    http_faults: NotRequired[list[HttpChaosRuleDoc]]  # default []: HTTPChaos rules (§5.5)
