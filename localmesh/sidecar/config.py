"""The sidecar's configuration document (docs/architecture.md "Sidecar"), parsed and checked.

:func:`parse_config` checks the JSON pushed by ``localmesh.xds`` against its type,
:class:`localmesh.documents.SidecarConfigDoc`, once (``localmesh.doccheck``), then turns
it into frozen objects the data path reads without further checks. Anything malformed
raises :class:`~localmesh.errors.SidecarConfigError` naming the field path and the value
(``sidecar config: routes['orders.shop.svc.cluster.local'][0].timeout_ms is 'x', not a
number >= 0``), so the admin endpoint can answer 400 and keep the previous configuration.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from localmesh.doccheck import Shape, ShapeError, show
from localmesh.documents import (
    FaultAbortDoc,
    FaultRuleDoc,
    FractionalPercentDoc,
    GatewayRoutesDoc,
    HeaderMatchDoc,
    HttpFaultDoc,
    MeshDoc,
    RetriesDoc,
    RouteDoc,
    RouteMatchDoc,
    ServiceDoc,
    SidecarConfigDoc,
)
from localmesh.errors import SidecarConfigError
from localmesh.sidecar.httpfaults import HttpChaosRule, parse_http_faults

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TEXT_FORMAT",
    "AccessLogConfig",
    "Destination",
    "Endpoint",
    "FaultRule",
    "Fraction",
    "HeaderMatch",
    "MeshSettings",
    "RetryPolicy",
    "Route",
    "RouteFault",
    "RouteMatch",
    "Service",
    "SidecarConfig",
    "parse_config",
]

# Istio's default TEXT access log format (docs/fidelity.md §2.3).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

@dataclass(frozen=True)
class RetryPolicy:
    """Envoy's route retry policy; ``retry_on`` is a set of tokens (§1.3)."""

    num_retries: int
    per_try_timeout_ms: float = 0.0
    retry_on: frozenset[str] = frozenset()
    retriable_status_codes: frozenset[int] = frozenset()


# Istio's default outbound policy (docs/fidelity.md §2.2).
DEFAULT_RETRY = RetryPolicy(2, 0.0, frozenset(
    {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}))


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    kind: str  # exact | prefix | regex
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, headers: dict[str, str]) -> bool:
        got = headers.get(self.name)
        if got is None:
            return False
        if self.kind == "exact":
            return got == self.value
        if self.kind == "prefix":
            return got.startswith(self.value)
        assert self.pattern is not None
        return self.pattern.fullmatch(got) is not None


@dataclass(frozen=True)
class RouteMatch:
    kind: str  # prefix | exact | regex | any
    value: str = ""
    pattern: re.Pattern[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, path: str, headers: dict[str, str]) -> bool:
        if self.kind == "prefix" and not path.startswith(self.value):
            return False
        if self.kind == "exact" and path != self.value:
            return False
        if self.kind == "regex":
            assert self.pattern is not None
            if self.pattern.fullmatch(path) is None:
                return False
        return all(h.matches(headers) for h in self.headers)


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str
    port: int
    weight: int


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


@dataclass(frozen=True)
class Fraction:
    """Envoy's FractionalPercent: a draw fires when ``random % denominator < numerator``
    (``ProtobufPercentHelper::evaluateFractionalPercent``, docs/fidelity.md §2.4)."""

    numerator: int
    denominator: int

    def fires(self) -> bool:
        return random.randrange(self.denominator) < self.numerator


@dataclass(frozen=True)
class RouteFault:
    """Envoy's fault filter configured on one route (docs/fidelity.md §2.4): a fixed delay
    (0 = none) and an abort status (0 = none), each with its own fraction. A gRPC abort
    (``abort_grpc_status`` set) has the HTTP status 200, as ``FaultFilter::abortStatus``
    gives it."""

    delay_s: float
    delay_fraction: Fraction
    abort_status: int
    abort_fraction: Fraction
    abort_grpc_status: int | None = None

    def delays(self) -> bool:
        return self.delay_s > 0 and self.delay_fraction.fires()

    def aborts(self) -> bool:
        return self.abort_status > 0 and self.abort_fraction.fires()


@dataclass(frozen=True)
class Route:
    name: str
    matches: tuple[RouteMatch, ...]
    destinations: tuple[Destination, ...]
    timeout_ms: float
    retry: RetryPolicy
    fault: RouteFault | None = None

    def matches_request(self, path: str, headers: dict[str, str]) -> bool:
        return not self.matches or any(m.matches(path, headers) for m in self.matches)


@dataclass(frozen=True)
class Endpoint:
    pod: str
    namespace: str
    host: str
    port: int
    labels: dict[str, str]
    ready: bool

    # Read on every request: computed once (a frozen dataclass without slots has a __dict__).
    @functools.cached_property
    def peer(self) -> str:
        return f"{self.namespace}/{self.pod}"

    @functools.cached_property
    def address(self) -> str:
        """``host:port``, as the access log's UPSTREAM_HOST shows it."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Service:
    fqdn: str
    name: str
    namespace: str
    ports: tuple[int, ...]
    endpoints: tuple[Endpoint, ...]
    h2_ports: frozenset[int] = frozenset()  # HTTP/2 clusters (docs/fidelity.md §2.5)


@dataclass(frozen=True)
class AccessLogConfig:
    enabled: bool = True
    encoding: str = "TEXT"
    format: str = DEFAULT_TEXT_FORMAT


@dataclass(frozen=True)
class MeshSettings:
    honor_app_envoy_headers: bool = False
    sampling_percent: float = 1.0
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    connect_timeout_ms: float = 10_000.0
    otlp_endpoint: str = ""
    # The receiver's Authorization header: a secret, kept out of reprs (logs, tracebacks).
    otlp_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class FaultRule:
    id: str
    action: str
    peers: frozenset[str] | None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    delay_correlation: float = 0.0
    loss_percent: float = 0.0
    loss_correlation: float = 0.0
    corrupt_percent: float = 0.0
    rate_bytes_per_s: float = 0.0
    bucket_bytes: float = 0.0

    def applies_to(self, peer: str | None) -> bool:
        return self.peers is None or (peer is not None and peer in self.peers)


@dataclass(frozen=True)
class SidecarConfig:
    version: int
    pod: str
    namespace: str
    service: str
    mode: str
    app_port: int
    mesh: MeshSettings
    services: dict[str, Service]
    routes: dict[str, tuple[Route, ...]]
    subsets: dict[str, dict[str, dict[str, str]]]
    connect_timeout_ms: dict[str, float]
    gateway_routes: tuple[tuple[tuple[str, ...], tuple[Route, ...]], ...]
    faults: tuple[FaultRule, ...]
    raw: dict[str, Any] = field(repr=False)  # holds mesh.otlp_headers: no repr shows it
    http_faults: tuple[HttpChaosRule, ...] = ()  # HTTPChaos, in front of the app (§5.5)


# -- building the objects from a checked document ---------------------------------------
# The document was checked against SidecarConfigDoc as a whole first (types, required
# fields, bounds, known names); what is left here are the rules a type cannot say.

_SHAPE: Shape[SidecarConfigDoc] = Shape(SidecarConfigDoc)


def _bad(where: str, value: object, expected: str) -> SidecarConfigError:
    return SidecarConfigError(f"sidecar config: {where} is {show(value)}, not {expected}")


def _regex(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise _bad(where, value, f"a valid regex ({exc})") from None


def _header_match(name: str, spec: HeaderMatchDoc, where: str) -> HeaderMatch:
    if "exact" in spec:
        return HeaderMatch(name.lower(), "exact", spec["exact"])
    if "prefix" in spec:
        return HeaderMatch(name.lower(), "prefix", spec["prefix"])
    if "regex" in spec:
        value = spec["regex"]
        return HeaderMatch(name.lower(), "regex", value, _regex(value, f"{where}.regex"))
    raise _bad(where, spec, "an object with one of exact, prefix, regex")


def _route_match(spec: RouteMatchDoc, where: str) -> RouteMatch:
    headers = tuple(_header_match(n, h, f"{where}.headers[{n!r}]")
                    for n, h in spec.get("headers", {}).items())
    if "prefix" in spec:
        return RouteMatch("prefix", spec["prefix"], None, headers)
    if "exact" in spec:
        return RouteMatch("exact", spec["exact"], None, headers)
    if "regex" in spec:
        value = spec["regex"]
        return RouteMatch("regex", value, _regex(value, f"{where}.regex"), headers)
    return RouteMatch("any", "", None, headers)


def _retry(spec: RetriesDoc | None) -> RetryPolicy:
    if spec is None:
        return DEFAULT_RETRY
    return RetryPolicy(spec["attempts"], float(spec.get("per_try_timeout_ms", 0.0)),
                       frozenset(spec.get("retry_on", ())) or DEFAULT_RETRY.retry_on,
                       frozenset(spec.get("retriable_status_codes", ())))


def _fraction(spec: FractionalPercentDoc) -> Fraction:
    return Fraction(spec["numerator"], _DENOMINATORS[spec["denominator"]])


_NEVER = Fraction(0, 100)


def _route_fault(spec: HttpFaultDoc | None, where: str) -> RouteFault | None:
    """The route's fault filter; Envoy refuses an abort status outside [200, 600)."""
    if spec is None:
        return None
    delay, abort = spec.get("delay"), spec.get("abort")
    if delay is None and abort is None:
        raise SidecarConfigError(f"sidecar config: {where} has neither delay nor abort")
    status, grpc_status = 0, None
    if abort is not None:
        status, grpc_status = _abort_status(abort, where)
    return RouteFault(float(delay["fixed_delay_ms"]) / 1000.0 if delay else 0.0,
                      _fraction(delay["percentage"]) if delay else _NEVER,
                      status, _fraction(abort["percentage"]) if abort else _NEVER, grpc_status)


def _abort_status(abort: FaultAbortDoc, where: str) -> tuple[int, int | None]:
    """(HTTP status, gRPC status or None) of a FaultAbort: its ``error_type`` oneof is one of
    the two; a gRPC abort is answered 200 (``FaultFilter::abortStatus``, §2.4)."""
    if "http_status" in abort and "grpc_status" in abort:
        raise _bad(f"{where}.abort", "http_status and grpc_status", "one error type, not two")
    if "grpc_status" in abort:
        return 200, int(abort["grpc_status"])
    if "http_status" not in abort:
        raise SidecarConfigError(f"sidecar config: {where}.abort has neither http_status "
                                 "nor grpc_status")
    status = abort["http_status"]
    if not 200 <= status < 600:
        # FaultAbort.http_status: [(validate.rules).uint32 = {lt: 600 gte: 200}]
        raise _bad(f"{where}.abort.http_status", status, "an HTTP status in [200, 600)")
    return status, None


def _route(spec: RouteDoc, where: str) -> Route:
    matches = tuple(_route_match(m, f"{where}.match[{i}]")
                    for i, m in enumerate(spec.get("match", ())))
    dests = tuple(Destination(d["host"], d.get("subset", ""), d.get("port", 0),
                              d.get("weight", 100)) for d in spec["destinations"])
    return Route(spec.get("name", ""), matches, dests, float(spec.get("timeout_ms", 0.0)),
                 _retry(spec.get("retries")), _route_fault(spec.get("fault"), f"{where}.fault"))


def _service(fqdn: str, spec: ServiceDoc) -> Service:
    eps = tuple(Endpoint(e["pod"], e["namespace"], e.get("host", "127.0.0.1"), e["port"],
                         dict(e.get("labels", {})), e.get("ready", True))
                for e in spec.get("endpoints", ()))
    return Service(fqdn, spec.get("name", fqdn.split(".")[0]), spec.get("namespace", ""),
                   tuple(spec.get("ports", ())), eps, frozenset(spec.get("h2_ports", ())))


def _fault(spec: FaultRuleDoc, where: str) -> FaultRule:
    action, peers = spec["action"], spec["peers"]
    delay, loss = spec.get("delay"), spec.get("loss")
    corrupt, bandwidth = spec.get("corrupt"), spec.get("bandwidth")
    if action == "bandwidth":
        if bandwidth is None:
            raise SidecarConfigError(f"sidecar config: {where}.bandwidth is missing "
                                     "(action 'bandwidth' needs it)")
        if bandwidth["rate_bytes_per_s"] <= 0:
            raise _bad(f"{where}.bandwidth.rate_bytes_per_s", bandwidth["rate_bytes_per_s"],
                       "> 0 (action 'bandwidth')")
    return FaultRule(
        spec["id"], action, None if peers is None else frozenset(peers),
        float(delay["latency_ms"]) if delay else 0.0,
        float(delay.get("jitter_ms", 0.0)) if delay else 0.0,
        float(delay.get("correlation", 0.0)) if delay else 0.0,
        float(loss["percent"]) if loss else 0.0,
        float(loss.get("correlation", 0.0)) if loss else 0.0,
        float(corrupt["percent"]) if corrupt else 0.0,
        float(bandwidth["rate_bytes_per_s"]) if bandwidth else 0.0,
        float(bandwidth.get("buffer_bytes", 0.0)) if bandwidth else 0.0)


def _mesh(spec: MeshDoc) -> MeshSettings:
    al = spec.get("access_log", {})
    return MeshSettings(
        spec.get("honor_app_envoy_headers", False),
        float(spec.get("sampling_percent", 1.0)),
        AccessLogConfig(al.get("enabled", True), al.get("encoding", "TEXT"), al.get("format", "")),
        float(spec.get("connect_timeout_ms", 0.0)) or 10_000.0,
        spec.get("otlp_endpoint", ""),
        tuple(sorted(spec.get("otlp_headers", {}).items())))


def _gateway_routes(spec: GatewayRoutesDoc,
                    where: str) -> tuple[tuple[str, ...], tuple[Route, ...]]:
    hosts = tuple(h.lower() for h in spec.get("hosts", ())) or ("*",)
    return hosts, tuple(_route(r, f"{where}.routes[{j}]")
                        for j, r in enumerate(spec.get("routes", ())))


def parse_config(raw: Any) -> SidecarConfig:
    """Check a pushed configuration document and build the objects the data path reads.

    Raises :class:`SidecarConfigError` naming the first bad field by its path, e.g.
    ``sidecar config: routes['orders.shop.svc.cluster.local'][0].timeout_ms is 'x', not a
    number >= 0``.
    """
    try:
        doc = _SHAPE.check(raw)
    except ShapeError as exc:
        raise SidecarConfigError(f"sidecar config: {exc}") from None
    node = doc["node"]
    subsets = {host: {name: dict(labels) for name, labels in named.items()}
               for host, named in doc.get("subsets", {}).items()}
    return SidecarConfig(
        doc["version"], node["pod"], node["namespace"], node["service"],
        node.get("mode", "sidecar"), node.get("app_port", 0), _mesh(doc.get("mesh", {})),
        {fqdn: _service(fqdn, s) for fqdn, s in doc.get("services", {}).items()},
        {host: tuple(_route(r, f"routes[{host!r}][{i}]") for i, r in enumerate(rs))
         for host, rs in doc.get("routes", {}).items()},
        subsets,
        {host: float(ms) for host, ms in doc.get("connect_timeout_ms", {}).items()},
        tuple(_gateway_routes(g, f"gateway_routes[{i}]")
              for i, g in enumerate(doc.get("gateway_routes", ()))),
        tuple(_fault(f, f"faults[{i}]") for i, f in enumerate(doc.get("faults", ()))),
        raw, parse_http_faults(doc.get("http_faults", [])))
