"""Header rules of the Istio sidecar's HTTP connection manager and router.

``INTERNAL_ONLY`` is Envoy's ``cleanInternalHeaders`` list: what an *external*
request loses (docs/fidelity.md §1.7). Istio sidecars treat app traffic as
external by default, so both listeners strip these unless the mesh switch
``honor_app_envoy_headers`` is on.
"""

from __future__ import annotations

import functools

from localmesh.http.message import HOP_BY_HOP
from localmesh.sidecar.ids import random_uuid4

__all__ = [
    "INTERNAL_ONLY",
    "PEER_HEADER",
    "clean_request_headers",
    "parse_peer_id",
    "peer_id",
    "strip_internal",
]

INTERNAL_ONLY = (
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
    "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
)

PEER_HEADER = "x-envoy-peer-metadata-id"


def peer_id(pod: str, namespace: str) -> str:
    """The node id Istio's metadata exchange announces for a sidecar."""
    return f"sidecar~127.0.0.1~{pod}.{namespace}~{namespace}.svc.cluster.local"


@functools.lru_cache(maxsize=1024)  # every request from a peer carries the same id
def parse_peer_id(value: str | None) -> str | None:
    """``"ns/pod"`` from a peer metadata id, ``None`` when absent or malformed."""
    if not value:
        return None
    parts = value.split("~")
    if len(parts) != 4:
        return None
    namespace = parts[3].split(".", 1)[0]
    pod_ns = parts[2]
    suffix = f".{namespace}"
    if not namespace or not pod_ns.endswith(suffix):
        return None
    return f"{namespace}/{pod_ns[:-len(suffix)]}"


def clean_request_headers(headers: dict[str, str]) -> dict[str, str]:
    """Drop hop-by-hop fields (and the ones named in ``Connection``) and the Host field."""
    named = headers.get("connection")
    drop = HOP_BY_HOP
    if named:
        drop = drop | {n.strip().lower() for n in named.split(",")}
    out = {k: v for k, v in headers.items() if k not in drop and k != "host"}
    # The HCM always removes an incoming x-envoy-internal (§1.7.1).
    out.pop("x-envoy-internal", None)
    return out


_INTERNAL_SET = frozenset(INTERNAL_ONLY)


def strip_internal(headers: dict[str, str]) -> None:
    """Remove the §1.7 list in place (most requests carry none: one isdisjoint check)."""
    if _INTERNAL_SET.isdisjoint(headers):
        return
    for name in _INTERNAL_SET.intersection(headers):
        headers.pop(name, None)


def new_request_id() -> str:
    """A random (version 4) UUID; ``uuid.uuid4()`` costs several µs, this a fraction."""
    return random_uuid4()
