"""The sidecar's configuration document (docs/architecture.md "Sidecar"), parsed and checked.

:func:`parse_config` turns the JSON pushed by ``localmesh.xds`` into frozen
objects the data path reads without further checks. Anything malformed raises
:class:`~localmesh.errors.SidecarConfigError` naming the field and the value, so
the admin endpoint can answer 400 and keep the previous configuration.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from localmesh.errors import SidecarConfigError

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TEXT_FORMAT",
    "AccessLogConfig",
    "Destination",
    "Endpoint",
    "FaultRule",
    "HeaderMatch",
    "MeshSettings",
    "RetryPolicy",
    "Route",
    "RouteMatch",
    "Service",
    "SidecarConfig",
    "parse_config",
]

# Istio's default TEXT access log format (mesh-semantics.md §2.3).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

_RETRY_ON_TOKENS = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "refused-stream", "retriable-4xx", "retriable-status-codes", "retriable-headers",
    "envoy-ratelimited", "http3-post-connect-failure", "cancelled", "deadline-exceeded",
    "internal", "resource-exhausted", "unavailable",
})
_ACTIONS = frozenset({"delay", "loss", "duplicate", "corrupt", "partition", "bandwidth", "netem"})


@dataclass(frozen=True)
class RetryPolicy:
    """Envoy's route retry policy; ``retry_on`` is a set of tokens (§1.3)."""

    num_retries: int
    per_try_timeout_ms: float = 0.0
    retry_on: frozenset[str] = frozenset()
    retriable_status_codes: frozenset[int] = frozenset()


# Istio's default outbound policy (mesh-semantics.md §2.2).
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


@dataclass(frozen=True)
class Route:
    name: str
    matches: tuple[RouteMatch, ...]
    destinations: tuple[Destination, ...]
    timeout_ms: float
    retry: RetryPolicy

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
    raw: dict[str, Any]


# -- parsing helpers ---------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SidecarConfigError(f"{where} must be an object, got {value!r}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SidecarConfigError(f"{where} must be a list, got {value!r}")
    return value


def _num(value: Any, where: str, default: float = 0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SidecarConfigError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _int(value: Any, where: str, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SidecarConfigError(f"{where} must be an integer >= 0, got {value!r}")
    return value


def _str(value: Any, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise SidecarConfigError(f"{where} must be a string, got {value!r}")
    return value


def _regex(value: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise SidecarConfigError(f"{where} is not a valid regex {value!r}: {exc}") from None


def _header_match(name: str, spec: Any, where: str) -> HeaderMatch:
    spec = _obj(spec, where)
    for kind in ("exact", "prefix", "regex"):
        if kind in spec:
            value = _str(spec[kind], f"{where}.{kind}")
            pattern = _regex(value, f"{where}.regex") if kind == "regex" else None
            return HeaderMatch(name.lower(), kind, value, pattern)
    raise SidecarConfigError(f"{where} needs one of exact/prefix/regex, got {spec!r}")


def _route_match(spec: Any, where: str) -> RouteMatch:
    spec = _obj(spec, where)
    headers = tuple(_header_match(n, s, f"{where}.headers.{n}")
                    for n, s in _obj(spec.get("headers") or {}, f"{where}.headers").items())
    for kind in ("prefix", "exact", "regex"):
        if spec.get(kind) is not None:
            value = _str(spec[kind], f"{where}.{kind}")
            pattern = _regex(value, f"{where}.regex") if kind == "regex" else None
            return RouteMatch(kind, value, pattern, headers)
    return RouteMatch("any", "", None, headers)


def _retry(spec: Any, where: str) -> RetryPolicy:
    if spec is None:
        return DEFAULT_RETRY
    spec = _obj(spec, where)
    tokens = frozenset(_str(t, f"{where}.retry_on[]").strip()
                       for t in _list(spec.get("retry_on"), f"{where}.retry_on"))
    unknown = sorted(t for t in tokens if t not in _RETRY_ON_TOKENS)
    if unknown:
        raise SidecarConfigError(f"{where}.retry_on has unknown conditions {unknown}")
    codes = frozenset(_int(c, f"{where}.retriable_status_codes[]")
                      for c in _list(spec.get("retriable_status_codes"),
                                     f"{where}.retriable_status_codes"))
    return RetryPolicy(_int(spec.get("attempts"), f"{where}.attempts"),
                       _num(spec.get("per_try_timeout_ms"), f"{where}.per_try_timeout_ms"),
                       tokens or DEFAULT_RETRY.retry_on, codes)


def _route(spec: Any, where: str) -> Route:
    spec = _obj(spec, where)
    matches = tuple(_route_match(m, f"{where}.match[{i}]")
                    for i, m in enumerate(_list(spec.get("match"), f"{where}.match")))
    dests = []
    for i, d in enumerate(_list(spec.get("destinations"), f"{where}.destinations")):
        d = _obj(d, f"{where}.destinations[{i}]")
        host = _str(d.get("host"), f"{where}.destinations[{i}].host")
        if not host:
            raise SidecarConfigError(f"{where}.destinations[{i}].host is required")
        dests.append(Destination(host, _str(d.get("subset"), "subset"),
                                 _int(d.get("port"), f"{where}.destinations[{i}].port"),
                                 _int(d.get("weight"), f"{where}.destinations[{i}].weight", 100)))
    if not dests:
        raise SidecarConfigError(f"{where}.destinations must name at least one destination")
    return Route(_str(spec.get("name"), f"{where}.name"), matches, tuple(dests),
                 _num(spec.get("timeout_ms"), f"{where}.timeout_ms"),
                 _retry(spec.get("retries"), f"{where}.retries"))


def _service(fqdn: str, spec: Any) -> Service:
    where = f"services.{fqdn}"
    spec = _obj(spec, where)
    eps = []
    for i, e in enumerate(_list(spec.get("endpoints"), f"{where}.endpoints")):
        e = _obj(e, f"{where}.endpoints[{i}]")
        labels = _obj(e.get("labels") or {}, f"{where}.endpoints[{i}].labels")
        eps.append(Endpoint(_str(e.get("pod"), "pod"), _str(e.get("namespace"), "namespace"),
                            _str(e.get("host"), "host", "127.0.0.1"),
                            _int(e.get("port"), f"{where}.endpoints[{i}].port"),
                            {str(k): str(v) for k, v in labels.items()},
                            bool(e.get("ready", True))))
    ports = tuple(_int(p, f"{where}.ports[]") for p in _list(spec.get("ports"), f"{where}.ports"))
    return Service(fqdn, _str(spec.get("name"), f"{where}.name", fqdn.split(".")[0]),
                   _str(spec.get("namespace"), f"{where}.namespace"), ports, tuple(eps))


def _fault(spec: Any, where: str) -> FaultRule:
    spec = _obj(spec, where)
    action = _str(spec.get("action"), f"{where}.action")
    if action not in _ACTIONS:
        raise SidecarConfigError(
            f"{where}.action must be one of {sorted(_ACTIONS)}, got {action!r}")
    peers_raw = spec.get("peers")
    peers = None if peers_raw is None else frozenset(
        _str(p, f"{where}.peers[]") for p in _list(peers_raw, f"{where}.peers"))
    delay = _obj(spec.get("delay") or {}, f"{where}.delay")
    loss = _obj(spec.get("loss") or {}, f"{where}.loss")
    corrupt = _obj(spec.get("corrupt") or {}, f"{where}.corrupt")
    bw = _obj(spec.get("bandwidth") or {}, f"{where}.bandwidth")
    rate = _num(bw.get("rate_bytes_per_s"), f"{where}.bandwidth.rate_bytes_per_s")
    if action == "bandwidth" and rate <= 0:
        raise SidecarConfigError(f"{where}.bandwidth.rate_bytes_per_s must be > 0, got {rate}")
    return FaultRule(
        _str(spec.get("id"), f"{where}.id"), action, peers,
        _num(delay.get("latency_ms"), f"{where}.delay.latency_ms"),
        _num(delay.get("jitter_ms"), f"{where}.delay.jitter_ms"),
        _num(delay.get("correlation"), f"{where}.delay.correlation"),
        _num(loss.get("percent"), f"{where}.loss.percent"),
        _num(loss.get("correlation"), f"{where}.loss.correlation"),
        _num(corrupt.get("percent"), f"{where}.corrupt.percent"),
        rate, _num(bw.get("buffer_bytes"), f"{where}.bandwidth.buffer_bytes"))


def _mesh(spec: Any) -> MeshSettings:
    spec = _obj(spec or {}, "mesh")
    al = _obj(spec.get("access_log") or {}, "mesh.access_log")
    encoding = _str(al.get("encoding"), "mesh.access_log.encoding", "TEXT").upper()
    if encoding not in ("TEXT", "JSON"):
        raise SidecarConfigError(f"mesh.access_log.encoding must be TEXT or JSON, got {encoding!r}")
    access_log = AccessLogConfig(bool(al.get("enabled", True)), encoding,
                                 _str(al.get("format"), "mesh.access_log.format") or "")
    return MeshSettings(
        bool(spec.get("honor_app_envoy_headers", False)),
        _num(spec.get("sampling_percent"), "mesh.sampling_percent", 1.0),
        access_log,
        _num(spec.get("connect_timeout_ms"), "mesh.connect_timeout_ms", 10_000.0) or 10_000.0,
        _str(spec.get("otlp_endpoint"), "mesh.otlp_endpoint"))


def parse_config(doc: Any) -> SidecarConfig:
    """Check a pushed configuration document and build the objects the data path reads."""
    doc = _obj(doc, "config")
    node = _obj(doc.get("node") or {}, "node")
    mode = _str(node.get("mode"), "node.mode", "sidecar")
    if mode not in ("sidecar", "gateway"):
        raise SidecarConfigError(f"node.mode must be sidecar or gateway, got {mode!r}")
    services = {fqdn: _service(fqdn, s)
                for fqdn, s in _obj(doc.get("services") or {}, "services").items()}
    routes = {host: tuple(_route(r, f"routes.{host}[{i}]")
                          for i, r in enumerate(_list(rs, f"routes.{host}")))
              for host, rs in _obj(doc.get("routes") or {}, "routes").items()}
    subsets: dict[str, dict[str, dict[str, str]]] = {}
    for host, named in _obj(doc.get("subsets") or {}, "subsets").items():
        subsets[host] = {name: {str(k): str(v) for k, v in
                                _obj(labels, f"subsets.{host}.{name}").items()}
                         for name, labels in _obj(named, f"subsets.{host}").items()}
    connect = {h: _num(v, f"connect_timeout_ms.{h}")
               for h, v in _obj(doc.get("connect_timeout_ms") or {}, "connect_timeout_ms").items()}
    gateway = []
    for i, g in enumerate(_list(doc.get("gateway_routes"), "gateway_routes")):
        g = _obj(g, f"gateway_routes[{i}]")
        hosts = tuple(_str(h, f"gateway_routes[{i}].hosts[]").lower()
                      for h in _list(g.get("hosts"), f"gateway_routes[{i}].hosts")) or ("*",)
        rs = tuple(_route(r, f"gateway_routes[{i}].routes[{j}]")
                   for j, r in enumerate(_list(g.get("routes"), f"gateway_routes[{i}].routes")))
        gateway.append((hosts, rs))
    faults = tuple(_fault(f, f"faults[{i}]")
                   for i, f in enumerate(_list(doc.get("faults"), "faults")))
    return SidecarConfig(
        _int(doc.get("version"), "version"),
        _str(node.get("pod"), "node.pod"), _str(node.get("namespace"), "node.namespace"),
        _str(node.get("service"), "node.service"), mode,
        _int(node.get("app_port"), "node.app_port"),
        _mesh(doc.get("mesh")), services, routes, subsets, connect, tuple(gateway), faults, doc)
