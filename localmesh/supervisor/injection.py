"""Sidecar injection: what istio's mutating webhook does to a pod at creation.

A pod gets an ``istio-proxy`` container when its namespace carries
``istio-injection=enabled`` and the pod does not opt out with the label (or
annotation) ``sidecar.istio.io/inject: "false"``. The supervisor then runs the
sidecar for every pod whose spec names an ``istio-proxy`` container.
"""

from __future__ import annotations

from localmesh.documents import KubeObject
from localmesh.errors import NotFound
from localmesh.store import ObjectStore

__all__ = ["PROXY_CONTAINER", "PROXY_IMAGE", "has_sidecar", "install_injection", "wants_sidecar"]

PROXY_CONTAINER = "istio-proxy"
PROXY_IMAGE = "docker.io/istio/proxyv2:1.27.0"



def has_sidecar(pod: KubeObject) -> bool:
    containers = (pod.get("spec") or {}).get("containers") or []
    return any(c.get("name") == PROXY_CONTAINER for c in containers)


def wants_sidecar(store: ObjectStore, pod: KubeObject) -> bool:
    meta = pod.get("metadata") or {}
    opt = (meta.get("labels") or {}).get("sidecar.istio.io/inject",
                                         (meta.get("annotations") or {}).get(
                                             "sidecar.istio.io/inject"))
    if str(opt).lower() == "false":
        return False
    try:
        ns = store.get("", "namespaces", "", str(meta.get("namespace") or "default"))
    except NotFound:
        return False
    labels = (ns.get("metadata") or {}).get("labels") or {}
    return labels.get("istio-injection") == "enabled" or str(opt).lower() == "true"


def install_injection(store: ObjectStore) -> None:
    """Add the ``istio-proxy`` container to pods created in injected namespaces."""

    def inject(operation: str, new: KubeObject, old: KubeObject | None) -> None:
        if operation != "CREATE" or has_sidecar(new) or not wants_sidecar(store, new):
            return
        spec = new.setdefault("spec", {})
        spec.setdefault("containers", []).append({
            "name": PROXY_CONTAINER, "image": PROXY_IMAGE,
            "args": ["proxy", "sidecar"],
            "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
        })
        annotations = new.setdefault("metadata", {}).setdefault("annotations", {})
        annotations["sidecar.istio.io/status"] = '{"containers":["istio-proxy"]}'

    store.add_admission("", "pods", inject)
