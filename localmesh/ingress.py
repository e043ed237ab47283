"""The ingress gateway of the local mesh, as Istio installs it in ``istio-system``.

The gateway is a pod like any other (``istio-ingressgateway-<hash>-<suffix>``)
whose only container, ``istio-proxy``, runs the sidecar in gateway mode: its
outbound listener is the mesh's ingress port. When the manifests do not bring
the gateway's Deployment and Service, they are created here.
"""

from __future__ import annotations

from localmesh.documents import KubeObject
from localmesh.store import ObjectStore
from localmesh.supervisor.injection import PROXY_CONTAINER, PROXY_IMAGE

__all__ = ["GATEWAY_LABELS", "GATEWAY_NAMESPACE", "ensure_ingress_objects",
           "gateway_objects", "has_gateway"]

GATEWAY_NAMESPACE = "istio-system"
GATEWAY_NAME = "istio-ingressgateway"
GATEWAY_LABELS = {"app": GATEWAY_NAME, "istio": "ingressgateway"}



def has_gateway(objects: list[KubeObject]) -> bool:
    """True when the objects already hold an ingress gateway Deployment."""
    return any(o.get("kind") == "Deployment"
               and ((o.get("spec") or {}).get("template", {}).get("metadata", {})
                    .get("labels") or {}).get("istio") == "ingressgateway"
               for o in objects)


def gateway_objects() -> list[KubeObject]:
    """The Deployment and Service of the ingress gateway (Istio's default profile)."""
    labels = dict(GATEWAY_LABELS)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE,
                     "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": {**labels, "sidecar.istio.io/inject": "false"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": PROXY_CONTAINER, "image": PROXY_IMAGE,
                    "args": ["proxy", "router"],
                    "ports": [{"containerPort": 8080, "name": "http2", "protocol": "TCP"}],
                }]},
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE,
                     "labels": dict(labels)},
        "spec": {"type": "LoadBalancer", "selector": dict(labels),
                 "ports": [{"name": "http2", "port": 80, "targetPort": 8080,
                            "protocol": "TCP"}]},
    }
    return [deployment, service]


def ensure_ingress_objects(store: ObjectStore) -> None:
    """Create the gateway's namespace, Deployment and Service when they are missing."""
    if not [n for n in store.list("", "namespaces") if n["metadata"]["name"] ==
            GATEWAY_NAMESPACE]:
        store.create({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": GATEWAY_NAMESPACE}})
    if has_gateway(store.list("apps", "deployments")):
        return
    existing = {(o["kind"], o["metadata"]["name"]) for plural in ("services", "deployments")
                for o in store.list("apps" if plural == "deployments" else "", plural,
                                    GATEWAY_NAMESPACE)}
    for obj in gateway_objects():
        if (obj["kind"], obj["metadata"]["name"]) not in existing:
            store.create(obj)
