"""Checks before any chaos: do the experiment's targets exist on the mesh it points at?

A key naming a service the namespace does not have, an entry path no ingress route
matches, a timeout experiment aimed at a service with no route timeout: each would
otherwise show up as a baseline that failed for the wrong reason, or as a fault that
measured nothing. The safety control runs :func:`check_experiment` once the target is
reachable and before the first activity, and interrupts the run with the error, which
names the key and the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from probes import services
from probes.config import Settings, resolve
from probes.coreapi import core_get_json
from probes.errors import ConfigurationError
from probes.target import target_of

__all__ = ["check_experiment", "matches_uri", "unmatched_entry_path"]

# consumer_service is not here: a worker consumes a queue and is called by no one, so it
# need not have a Service.
_SERVICE_KEYS = ("target_service", "target_caller", "partition_peer", "side_service",
                 "broker_service", "producer_service")
_TIMEOUT_S = 10.0
_SUBSTITUTION = re.compile(r"^\$\{([a-z_]+)\}$")


def _activities(experiment: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    hypothesis = experiment.get("steady-state-hypothesis") or {}
    for group in (hypothesis.get("probes") or [], experiment.get("method") or [],
                  experiment.get("rollbacks") or []):
        yield from (a for a in group if isinstance(a, Mapping))


def _used_keys(experiment: Mapping[str, Any]) -> set[str]:
    """The service keys the experiment's activities substitute (``"${target_service}"``)."""
    used = set()
    for activity in _activities(experiment):
        for value in ((activity.get("provider") or {}).get("arguments") or {}).values():
            match = _SUBSTITUTION.match(str(value))
            if match and match.group(1) in _SERVICE_KEYS:
                used.add(match.group(1))
    return used


def matches_uri(match: Mapping[str, Any] | None, path: str) -> bool:
    """Istio's HTTPMatchRequest ``uri`` (exact / prefix / regex, RE2 full match) on a path;
    a match without ``uri`` matches every path."""
    uri = (match or {}).get("uri")
    if not uri:
        return True
    path_only = path.split("?", 1)[0]
    if "exact" in uri:
        return bool(path_only == uri["exact"])
    if "prefix" in uri:
        return path_only.startswith(str(uri["prefix"]))
    if "regex" in uri:
        return re.fullmatch(str(uri["regex"]), path_only) is not None
    return True


def unmatched_entry_path(virtual_services: list[Mapping[str, Any]], path: str) -> str | None:
    """Why no Gateway-bound VirtualService routes ``path`` (None: one does, or none is
    bound to a gateway here, so there is nothing to check against)."""
    bound = [vs for vs in virtual_services if (vs.get("spec") or {}).get("gateways")]
    if not bound:
        return None
    seen: list[str] = []
    for vs in bound:
        for http in (vs.get("spec") or {}).get("http") or ():
            matches = http.get("match") or [None]
            if any(matches_uri(m, path) for m in matches):
                return None
            seen += [str(next(iter((m or {}).get("uri", {}).items()), ("", "*"))[1])
                     for m in matches]
    names = ", ".join(sorted(str(vs["metadata"]["name"]) for vs in bound))
    return (f"configuration 'entry_path' '{path}' matches no route of the ingress "
            f"VirtualService(s) {names} (they route: {', '.join(seen) or 'nothing'}); the "
            "probes' requests would get 404 NR from the gateway")


def _virtual_services(api_client: Any, namespace: str) -> list[Mapping[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    doc: Any = api.list_namespaced_custom_object("networking.istio.io", "v1", namespace,
                                                 "virtualservices", _request_timeout=_TIMEOUT_S)
    return list(doc.get("items") or [])


def _check_services(api_client: Any, settings: Settings, keys: set[str]) -> None:
    listing = core_get_json(api_client, f"/api/v1/namespaces/{quote(settings.namespace)}/"
                            "services", timeout_s=_TIMEOUT_S)
    known = sorted(str(i["metadata"]["name"]) for i in listing.get("items") or ())
    if not known:
        raise ConfigurationError(f"configuration 'namespace' '{settings.namespace}' has no "
                                 "Service: nothing to run the experiment against")
    for key in sorted(keys):
        value = str(getattr(settings, key))
        if not value:
            raise ConfigurationError(f"configuration key '{key}' is required by this "
                                     f"experiment: name a Service of '{settings.namespace}' "
                                     f"({', '.join(known)})")
        if value not in known:
            raise ConfigurationError(f"configuration '{key}' names service '{value}', but "
                                     f"namespace '{settings.namespace}' has no such Service "
                                     f"(it has: {', '.join(known)})")


def _check_timeouts(api_client: Any, settings: Settings,
                    experiment: Mapping[str, Any]) -> None:
    for activity in _activities(experiment):
        arguments = (activity.get("provider") or {}).get("arguments") or {}
        if not arguments.get("latency_factor"):
            continue
        service = _SUBSTITUTION.match(str(arguments.get("service", "")))
        name = str(getattr(settings, service.group(1))) if service else \
            str(arguments.get("service", ""))
        if name:
            services.route_budget(api_client, settings.namespace, name)


def check_experiment(experiment: Mapping[str, Any],
                     configuration: Mapping[str, Any] | None) -> None:
    """Raise :class:`ConfigurationError` when a target the experiment names is not there."""
    settings = resolve(configuration)
    target = target_of(settings)
    api_client = target.api_client()
    try:
        _check_services(api_client, settings, _used_keys(experiment))
        problem = unmatched_entry_path(_virtual_services(api_client, settings.namespace),
                                       settings.entry_path)
        if problem:
            raise ConfigurationError(problem)
        _check_timeouts(api_client, settings, experiment)
    finally:
        api_client.close()
