"""What the cluster holds for a service the experiment names: its pods and its route timing.

Experiments name services by configuration key (``target_service``, ``partition_peer``,
…); the chaos they apply selects pods, and the fault magnitude of a timeout experiment
depends on the route towards the service. Both are read from the target, never assumed:

- the pods are the Service's own ``spec.selector`` (what kube-proxy and Istio use to find
  its endpoints), so a chaos object selects exactly the pods behind the name;
- the route is the VirtualService HTTP route for that host: Istio applies it in the
  *caller's* sidecar (docs/fidelity.md §2.1), and its ``timeout`` bounds every try
  (§1.2), so a delay beyond it makes the caller give up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from probes.coreapi import core_get_json
from probes.errors import ConfigurationError, EvidenceError
from probes.evidence.kube import read_routes
from probes.evidence.routes import Route

__all__ = ["RouteBudget", "is_ready", "pod_selector", "route_budget", "service_pods",
           "target_port"]

_TIMEOUT_S = 10.0


def _service_names(api_client: Any, namespace: str) -> list[str]:
    listing = core_get_json(api_client, f"/api/v1/namespaces/{quote(namespace)}/services",
                            timeout_s=_TIMEOUT_S)
    return sorted(str((item.get("metadata") or {}).get("name"))
                  for item in listing.get("items") or ())


def _read_service(api_client: Any, namespace: str, service: str, key: str) -> dict[str, Any]:
    """Service ``namespace/service`` as the cluster holds it; ``key`` is the configuration
    key that named it, for the error message."""
    from kubernetes.client.exceptions import ApiException

    try:
        svc: dict[str, Any] = core_get_json(
            api_client, f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}",
            timeout_s=_TIMEOUT_S)
    except ApiException as exc:
        if exc.status != 404:
            raise EvidenceError(f"could not read Service '{namespace}/{service}' "
                                f"(configuration '{key}'): {exc.status} {exc.reason}") from exc
        known = _service_names(api_client, namespace)
        raise ConfigurationError(f"configuration '{key}' names service '{service}', but "
                                 f"namespace '{namespace}' has no such Service (it has: "
                                 f"{', '.join(known) or 'none'})") from exc
    return svc


def pod_selector(api_client: Any, namespace: str, service: str, key: str) -> dict[str, Any]:
    """A Chaos Mesh selector for the pods behind Service ``namespace/service``.

    ``key`` is the configuration key that named the service, for the error message.
    """
    svc = _read_service(api_client, namespace, service, key)
    labels = (svc.get("spec") or {}).get("selector") or {}
    if not labels:
        raise ConfigurationError(f"configuration '{key}': Service '{namespace}/{service}' has "
                                 "no spec.selector, so no pods can be chosen for chaos")
    return {"namespaces": [namespace], "labelSelectors": dict(labels)}


def service_pods(api_client: Any, namespace: str, service: str, key: str, *,
                 timeout_s: float = _TIMEOUT_S) -> tuple[str, list[dict[str, Any]]]:
    """The label selector of Service ``namespace/service`` (``key`` named it) and the pods
    it selects, as the API lists them."""
    selector = pod_selector(api_client, namespace, service, key)
    labels = ",".join(f"{k}={v}" for k, v in sorted(selector["labelSelectors"].items()))
    listing = core_get_json(api_client, f"/api/v1/namespaces/{quote(namespace)}/pods",
                            query={"labelSelector": labels}, timeout_s=timeout_s)
    return labels, list(listing.get("items") or ())


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's ``Ready`` condition: whether it takes traffic."""
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def target_port(api_client: Any, namespace: str, service: str, key: str) -> int | None:
    """The container port behind the Service's first port: its numeric ``targetPort``, else
    (unset) its ``port``, as Kubernetes defaults it; ``None`` for a named targetPort, which
    only the pods resolve. HTTPChaos intercepts a container port (docs/fidelity.md §5.5),
    so a template's port follows the service it is aimed at."""
    svc = _read_service(api_client, namespace, service, key)
    ports = (svc.get("spec") or {}).get("ports") or []
    if not ports:
        raise ConfigurationError(f"configuration '{key}': Service '{namespace}/{service}' has "
                                 "no ports, so HTTPChaos has no port to intercept")
    first = ports[0]
    target = first.get("targetPort", first.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    return None


@dataclass(frozen=True)
class RouteBudget:
    """How long a caller's sidecar waits for ``service`` before it gives up."""

    service: str
    caller: str
    budget_ms: int
    what: str  # "timeout 300 ms" / "2 tries x perTryTimeout 200 ms"
    route: Route

    def explain(self, factor: float) -> str:
        """``delay 600 ms = 2 x inventory->pricing timeout 300 ms``."""
        edge = f"{self.caller}->{self.service}" if self.caller else f"route to {self.service}"
        return f"delay {round(factor * self.budget_ms)} ms = {factor:g} x {edge} {self.what}"


def _host_name(host: str) -> str:
    return host.split(".", 1)[0]


def route_budget(api_client: Any, namespace: str, service: str, caller: str = "") -> RouteBudget:
    """The route timeout towards ``service`` (or its tries x per-try timeout when the route
    sets only that); an error naming the service when no VirtualService bounds the wait."""
    routes = [r for r in read_routes(api_client, namespace, timeout_s=_TIMEOUT_S)
              if _host_name(r.host) == service]
    if not routes:
        raise ConfigurationError(f"configuration 'target_service' '{service}': no "
                                 f"VirtualService in namespace '{namespace}' routes to it, so "
                                 "its callers have no route timeout to exceed (Istio's default "
                                 "is none); give it a timeout or pass an explicit latency")
    route = routes[0]
    if route.timeout_ms:
        return RouteBudget(service, caller, route.timeout_ms,
                           f"timeout {route.timeout_ms} ms", route)
    if route.per_try_timeout_ms:
        tries = 1 + route.attempts
        return RouteBudget(service, caller, tries * route.per_try_timeout_ms,
                           f"{tries} tries x perTryTimeout {route.per_try_timeout_ms} ms", route)
    raise ConfigurationError(f"configuration 'target_service' '{service}': VirtualService "
                             f"'{route.virtual_service}' sets no timeout or perTryTimeout on "
                             "its route, so its callers wait forever (Istio's default); give "
                             "it a timeout or pass an explicit latency")
