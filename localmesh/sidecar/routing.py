"""Host lookup, route selection and endpoint choice for the outbound listener.

- A host resolves like Kubernetes DNS from the caller's namespace: ``orders``,
  ``orders.shop``, ``orders.shop.svc``, ``orders.shop.svc.cluster.local``.
- A host with VirtualService routes takes the first route whose match fits; if
  none fits the answer is 404 NR. A host without routes gets Istio's default
  route: no timeout, default retry policy (docs/fidelity.md §2.1, §2.2).
- Endpoints: ready ones, filtered by the DestinationRule subset labels, taken
  round-robin; a retry prefers hosts not tried yet (``previous_hosts``, §2.2).
"""

from __future__ import annotations

import itertools
import random

from localmesh.sidecar.config import (
    DEFAULT_RETRY,
    Destination,
    Endpoint,
    Route,
    Service,
    SidecarConfig,
)

__all__ = ["Picker", "default_route", "resolve_host", "select_route", "split_authority"]

_HOST_SELECTION_MAX_ATTEMPTS = 5


def split_authority(authority: str) -> tuple[str, int | None]:
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host.lower(), int(port)
    return authority.lower(), None


def resolve_host(cfg: SidecarConfig, host: str) -> Service | None:
    """The Service a hostname names, resolved from this pod's namespace."""
    services = cfg.services
    svc = services.get(host)
    if svc is not None:
        return svc
    parts = host.split(".")
    if len(parts) == 1:
        fqdn = f"{host}.{cfg.namespace}.svc.cluster.local"
    elif len(parts) == 2:
        fqdn = f"{host}.svc.cluster.local"
    elif len(parts) == 3 and parts[2] == "svc":
        fqdn = f"{host}.cluster.local"
    else:
        return None
    return services.get(fqdn)


def default_route(svc: Service, port: int) -> Route:
    return Route("default", (), (Destination(svc.fqdn, "", port, 100),), 0.0, DEFAULT_RETRY)


def select_route(routes: tuple[Route, ...], path: str, headers: dict[str, str]) -> Route | None:
    path_only = path.split("?", 1)[0]
    for route in routes:
        if route.matches_request(path_only, headers):
            return route
    return None


def pick_destination(route: Route) -> Destination:
    dests = route.destinations
    if len(dests) == 1:
        return dests[0]
    total = sum(d.weight for d in dests)
    if total <= 0:
        return dests[0]
    r = random.uniform(0, total)
    for d in dests:
        r -= d.weight
        if r <= 0:
            return d
    return dests[-1]


class Picker:
    """Round-robin over the ready endpoints of a (host, subset), per sidecar."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], itertools.count[int]] = {}

    def candidates(self, cfg: SidecarConfig, svc: Service, subset: str) -> list[Endpoint]:
        eps = [e for e in svc.endpoints if e.ready]
        if subset:
            labels = cfg.subsets.get(svc.fqdn, {}).get(subset)
            if labels is None:
                return []
            eps = [e for e in eps if all(e.labels.get(k) == v for k, v in labels.items())]
        return eps

    def pick(self, key: tuple[str, str], eps: list[Endpoint],
             previous: set[tuple[str, int]]) -> Endpoint:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = itertools.count()
        ep = eps[next(counter) % len(eps)]
        tries = 1
        while (ep.host, ep.port) in previous and tries < _HOST_SELECTION_MAX_ATTEMPTS:
            ep = eps[next(counter) % len(eps)]
            tries += 1
        return ep
