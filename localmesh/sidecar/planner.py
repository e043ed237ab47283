"""Routing for one sidecar: which upstream a request goes to, under which policy.

Envoy's route table lookup (docs/fidelity.md §1 and §2): the host's routes (a VirtualService's, the
gateway's, or the Service's default route), the matching route, a weighted destination, and the
cluster with its timeouts and retry policy, overridden by the app's ``x-envoy-*`` headers when
the mesh honours them (§1.7). Results depend only on the configuration and the authority (plus
the route and destination picked), so they are memoised until the next configuration; the memo
is bounded because authorities come from apps.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import httptools

from localmesh.http.message import Request
from localmesh.sidecar.config import (
    DEFAULT_RETRY,
    Destination,
    Endpoint,
    RetryPolicy,
    Route,
    Service,
    SidecarConfig,
)
from localmesh.sidecar.headers import strip_internal
from localmesh.sidecar.routing import (
    Picker,
    default_route,
    pick_destination,
    resolve_host,
    select_route,
    split_authority,
)
from localmesh.sidecar.txn import Txn
from localmesh.sidecar.upstream import Upstream

__all__ = ["Reject", "RoutePlanner", "sanitize", "split_target"]

_PASSTHROUGH_ROUTE = "allow_any"
_BLACKHOLE = "BlackHoleCluster"
_MEMO_LIMIT = 10_000


def _is_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _is_local_address(host: str) -> bool:
    """An address that reaches this machine (loopback or unspecified)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _loops_back(dest: Destination, txn: Txn) -> bool:
    """The passthrough destination is the very listener the request arrived on."""
    _, _, port = txn.downstream_local.rpartition(":")
    return port.isdigit() and dest.port == int(port) and _is_local_address(dest.host)


def _gateway_host_matches(hosts: tuple[str, ...], host: str) -> bool:
    """Envoy's virtual host domains as Istio writes them for a Gateway: ``*``, the exact
    host, or a ``*.suffix`` wildcard that needs at least one character before the suffix."""
    if "*" in hosts or host in hosts:
        return True
    return any(h.startswith("*.") and host.endswith(h[1:]) and len(host) > len(h) - 1
               for h in hosts)


# Absolute-form targets (an app's HTTP_PROXY requests) → (path, authority). Apps call the
# same few URLs over and over; bounded, since targets come from apps.
_ABSOLUTE_TARGETS: dict[str, tuple[str, str]] = {}
_MAX_ABSOLUTE_TARGETS = 4096


def _split_absolute(target: str) -> tuple[str, str]:
    # httptools' stub types the parts as bytes, but an absent part is None: Any, so that
    # a mypyc build does not insert a bytes check that fails on a URL with no query.
    url: Any = httptools.parse_url(target.encode("latin-1"))
    host = url.host.decode("latin-1") if url.host else ""
    authority = f"{host}:{url.port}" if url.port else host
    path = (url.path or b"/").decode("latin-1")
    if url.query:
        path = f"{path}?{url.query.decode('latin-1')}"
    return path, authority


# Istio's inbound default route: retry only what never reached the app (§2.2).
_INBOUND_RETRY = RetryPolicy(2, 0.0, frozenset({"reset-before-request"}))


class Reject(Exception):
    """A request answered locally before any upstream was chosen (NR, UH, NC)."""

    def __init__(self, status: int, body: str, flag: str, details: str) -> None:
        super().__init__(details)
        self.status, self.body, self.flag, self.details = status, body, flag, details


def _int_header(headers: dict[str, str], name: str) -> int | None:
    """Pop an integer x-envoy-* header; non-integers are ignored (Envoy SimpleAtoi, §1.4)."""
    value = headers.pop(name, None)
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def split_target(req: Request) -> tuple[str, str]:
    """Absolute-form (proxy) or origin-form + Host → (path, authority)."""
    target = req.target
    if target.startswith(("http://", "HTTP://")):
        split = _ABSOLUTE_TARGETS.get(target)
        if split is None:
            split = _split_absolute(target)
            if len(_ABSOLUTE_TARGETS) < _MAX_ABSOLUTE_TARGETS:
                _ABSOLUTE_TARGETS[target] = split
        return split
    return target, req.headers.get("host", "")


def sanitize(cfg: SidecarConfig, headers: dict[str, str]) -> dict[str, Any]:
    """§1.7: strip the internal-only headers, or (switch on) consume the router's ones."""
    if not cfg.mesh.honor_app_envoy_headers:
        strip_internal(headers)
        return {}
    out: dict[str, Any] = {
        "timeout_ms": _int_header(headers, "x-envoy-upstream-rq-timeout-ms"),
        "per_try_timeout_ms": _int_header(headers, "x-envoy-upstream-rq-per-try-timeout-ms"),
        "max_retries": _int_header(headers, "x-envoy-max-retries"),
    }
    retry_on = headers.pop("x-envoy-retry-on", None)
    if retry_on:
        out["retry_on"] = frozenset(t.strip() for t in retry_on.split(",") if t.strip())
    return out


class RoutePlanner:
    """The routing decisions of one sidecar, memoised per configuration (:meth:`reset`)."""

    def __init__(self, picker: Picker, *, pod: str, namespace: str, fqdn: str,
                 mode: str) -> None:
        self.picker = picker
        self.pod, self.namespace, self.fqdn, self.mode = pod, namespace, fqdn, mode
        self._memo: dict[tuple[object, ...], Any] = {}

    def reset(self) -> None:
        """Forget every memoised decision: a new configuration arrived."""
        self._memo = {}

    def inbound(self, cfg: SidecarConfig, authority: str,
                app_port: int) -> tuple[Upstream, str]:
        """The app as this config's inbound upstream, and the span name: built once per
        (config, authority), the authority being the only per-request part."""
        key = ("inbound", authority)
        cached: tuple[Upstream, str] | None = self._memo.get(key)
        if cached is None:
            port = self._service_port(cfg, app_port)
            app = self._memo.get(("app",))
            if app is None:
                app = self._memo[("app",)] = [
                    Endpoint(self.pod, self.namespace, "127.0.0.1", app_port, {}, True)]
            up = Upstream(cluster=f"inbound|{port}||", endpoints=app, pick_key=("inbound", ""),
                          connect_timeout_ms=cfg.mesh.connect_timeout_ms, timeout_ms=0.0,
                          per_try_timeout_ms=0.0, policy=_INBOUND_RETRY, authority=authority,
                          timeout_headers=False, egress_faults=False,
                          http2=self._speaks_http2(cfg, port))
            cached = self._remember(key, (up, f"{self.fqdn}:{port}/*"))
        return cached

    def _speaks_http2(self, cfg: SidecarConfig, port: int) -> bool:
        """Istio's inbound cluster for an HTTP/2 port calls the app over HTTP/2 too (§2.5)."""
        svc = cfg.services.get(self.fqdn)
        return svc is not None and port in svc.h2_ports

    def _service_port(self, cfg: SidecarConfig, app_port: int) -> int:
        svc = cfg.services.get(self.fqdn)
        if svc is not None and svc.ports:
            return svc.ports[0]
        return app_port

    def _routes_for(self, cfg: SidecarConfig, host: str) -> tuple[Route, ...] | None:
        """The gateway's routes for ``host`` (``()``: none, 404 NR); None for a sidecar."""
        if cfg.mode == "gateway" or self.mode == "gateway":
            for hosts, routes in cfg.gateway_routes:
                if _gateway_host_matches(hosts, host):
                    return routes
            # Istio's gateway route table holds only the hosts of Gateway-bound
            # VirtualServices (buildGatewayHTTPRouteConfig; none at all: a "blackhole"
            # virtual host without routes), so any other host is 404 NR (§1.6): never a
            # Service's default route, nor the passthrough, which was the gateway itself.
            return ()
        return None

    def outbound(self, cfg: SidecarConfig, txn: Txn, headers: dict[str, str],
                 overrides: dict[str, Any]) -> tuple[Upstream, str]:
        """Route the request: pick the route and destination, then the upstream to call."""
        if not overrides:
            # One route without matches to one destination (a Service without a
            # VirtualService, the usual case): the whole plan depends on the authority only.
            plan: tuple[str, Upstream, str] | None = self._memo.get(("plan", txn.authority))
            if plan is not None:
                txn.route_name, up, name = plan
                txn.upstream_cluster = up.cluster
                return up, name
        routes = self._routes_of(cfg, txn.authority)
        route = select_route(routes, txn.path, headers)
        if route is None:
            raise Reject(404, "", "NR", "route_not_found")
        txn.route_name = route.name or "default"
        dest = pick_destination(route)
        if route.name == _PASSTHROUGH_ROUTE and _loops_back(dest, txn):
            # Istio's virtualOutbound-blackhole: a connection to the capture port itself
            # goes to BlackHoleCluster, so a sidecar never proxies to its own listener
            # (Envoy itself has no loop detection, §1.6).
            txn.upstream_cluster = _BLACKHOLE
            raise Reject(503, "no healthy upstream", "UH", "no_healthy_upstream")
        if overrides:
            up, name = self._upstream_for(cfg, txn.authority, route, dest, overrides)
        else:
            # Without app overrides the upstream only depends on (authority, route,
            # destination) of this config: build it once.
            # Identities, not values: route and destination live as long as this config.
            key = ("up", txn.authority, id(route), id(dest))
            cached = self._memo.get(key)
            if cached is None:
                cached = self._remember(key, self._upstream_for(cfg, txn.authority, route,
                                                                dest, overrides))
            up, name = cached
            if len(routes) == 1 and not route.matches and len(route.destinations) == 1:
                self._remember(("plan", txn.authority), (txn.route_name, up, name))
        txn.upstream_cluster = up.cluster
        return up, name

    def _remember(self, key: tuple[object, ...], value: Any) -> Any:
        if len(self._memo) > _MEMO_LIMIT:  # authorities come from apps: keep it bounded
            self._memo.clear()
        self._memo[key] = value
        return value

    def _routes_of(self, cfg: SidecarConfig, authority: str) -> tuple[Route, ...]:
        key = ("routes", authority)
        routes = self._memo.get(key)
        if routes is None:
            routes = self._remember(key, self._lookup_routes(cfg, authority))
        if not routes:
            raise Reject(404, "", "NR", "route_not_found")
        return routes  # type: ignore[no-any-return]

    def _lookup_routes(self, cfg: SidecarConfig, authority: str) -> tuple[Route, ...]:
        """The routes of the host named by ``authority``; () when nothing serves it (NR)."""
        host, port = split_authority(authority)
        routes = self._routes_for(cfg, host)
        if routes is not None:
            return routes
        svc = resolve_host(cfg, host)
        if svc is None and port is not None and _is_address(host):
            # Istio's default outboundTrafficPolicy ALLOW_ANY: an IP that is no Service
            # goes straight through (PassthroughCluster), e.g. an app's OTLP exporter.
            return (Route(_PASSTHROUGH_ROUTE, (), (Destination(host, "", port, 100),), 0.0,
                          DEFAULT_RETRY),)
        if svc is None or (port is not None and svc.ports and port not in svc.ports):
            return ()
        return tuple(cfg.routes.get(svc.fqdn) or ()) or self._default_routes(svc, port)

    def _upstream_for(self, cfg: SidecarConfig, authority: str, route: Route, dest: Destination,
                      overrides: dict[str, Any]) -> tuple[Upstream, str]:
        if route.name == _PASSTHROUGH_ROUTE:
            ep = Endpoint("", "", dest.host, dest.port, {}, True)
            return (Upstream(cluster="PassthroughCluster", endpoints=[ep],
                             pick_key=("passthrough", ""),
                             connect_timeout_ms=cfg.mesh.connect_timeout_ms, timeout_ms=0.0,
                             per_try_timeout_ms=0.0, policy=DEFAULT_RETRY, authority=authority,
                             timeout_headers=True, egress_faults=True), "PassthroughCluster")
        dsvc = resolve_host(cfg, dest.host)
        if dsvc is None:
            raise Reject(503, "", "NC", "cluster_not_found")
        _, port = split_authority(authority)
        dport = dest.port or port or (dsvc.ports[0] if dsvc.ports else 80)
        eps = self.picker.candidates(cfg, dsvc, dest.subset)
        if not eps:
            raise Reject(503, "no healthy upstream", "UH", "no_healthy_upstream")
        policy = route.retry
        timeout_ms = route.timeout_ms
        per_try_timeout_ms = policy.per_try_timeout_ms
        if overrides.get("timeout_ms") is not None:
            timeout_ms = float(overrides["timeout_ms"])
        if overrides.get("per_try_timeout_ms") is not None:
            per_try_timeout_ms = float(overrides["per_try_timeout_ms"])
        if overrides.get("max_retries") is not None or overrides.get("retry_on"):
            policy = RetryPolicy(
                overrides["max_retries"] if overrides.get("max_retries") is not None
                else policy.num_retries, per_try_timeout_ms,
                policy.retry_on | overrides.get("retry_on", frozenset()),
                policy.retriable_status_codes)
        if timeout_ms and per_try_timeout_ms >= timeout_ms:
            per_try_timeout_ms = 0.0  # §1.2: a per-try timeout >= the global one is ignored
        connect_ms = cfg.connect_timeout_ms.get(dsvc.fqdn) or cfg.mesh.connect_timeout_ms
        cluster = f"outbound|{dport}|{dest.subset}|{dsvc.fqdn}"
        up = Upstream(cluster=cluster, endpoints=eps, pick_key=(dsvc.fqdn, dest.subset),
                      connect_timeout_ms=connect_ms, timeout_ms=timeout_ms,
                      per_try_timeout_ms=per_try_timeout_ms, policy=policy,
                      authority=authority or dsvc.fqdn, timeout_headers=True,
                      egress_faults=True, fault=route.fault, http2=dport in dsvc.h2_ports)
        return up, f"{dsvc.fqdn}:{dport}/*"

    def _default_routes(self, svc: Service, port: int | None) -> tuple[Route, ...]:
        key = ("default", svc.fqdn, str(port))
        routes = self._memo.get(key)
        if routes is None:
            routes = self._memo[key] = (
                default_route(svc, port or (svc.ports[0] if svc.ports else 80)),)
        return routes
