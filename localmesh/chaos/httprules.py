"""HTTPChaos specs as the rules the target pod's inbound sidecar applies (docs/fidelity.md §5.5).

Chaos Mesh's controller turns each selected pod's record into a ``PodHttpChaos`` rule
(``controllers/chaosimpl/httpchaos/impl.go`` ``Impl.Apply``: the spec's ``port``,
``path``, ``method``, ``code``, ``request_headers``, ``response_headers`` become the
selector, ``abort``/``delay``/``replace``/``patch`` the actions) and chaos-daemon hands
them to the pod's chaos-tproxy, which intercepts that port. Locally the rule goes to the
pod's sidecar, which stands in front of the app: the spec's ``port`` is the app's
``containerPort`` and becomes the loopback port the app really listens on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localmesh.chaos.units import parse_duration_ms
from localmesh.documents import (
    HttpChaosPatchDoc,
    HttpChaosReplaceDoc,
    HttpChaosRuleDoc,
    HttpChaosSelectorDoc,
    KubeObject,
)
from localmesh.errors import EffectError
from localmesh.protocols import speaks_http2
from localmesh.selectors import match_labels

__all__ = ["http2_service_ports", "http_rules"]

_PROXY_CONTAINER = "istio-proxy"


def _declared_ports(pod: KubeObject) -> set[int]:
    """The containerPorts of the pod's app containers (the sidecar's own are not HTTPChaos')."""
    return {int(p["containerPort"]) for c in (pod.get("spec") or {}).get("containers") or []
            if c.get("name") != _PROXY_CONTAINER
            for p in c.get("ports") or [] if p.get("containerPort")}


def _app_port(pod: KubeObject, pod_key: str) -> int:
    """Where the app listens on loopback; a pod without a sidecar has no inbound to use."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not annotations.get("meshchaos.io/inbound-port"):
        raise EffectError(f"pod '{pod_key}' has no istio-proxy sidecar listening: the local "
                          "mesh applies HTTPChaos in the pod's inbound sidecar (§5.5)")
    raw = str(annotations.get("meshchaos.io/app-port") or "")
    if not raw.isdigit():
        raise EffectError(f"pod '{pod_key}' has not published its app port yet")
    return int(raw)


def _selector(spec: Mapping[str, Any], app_port: int) -> HttpChaosSelectorDoc:
    selector: HttpChaosSelectorDoc = {"port": app_port}
    if spec.get("path") is not None:
        selector["path"] = str(spec["path"])
    if spec.get("method") is not None:
        selector["method"] = str(spec["method"])
    if spec.get("code") is not None:
        selector["code"] = int(spec["code"])
    if spec.get("request_headers"):
        selector["request_headers"] = _strings(spec["request_headers"])
    if spec.get("response_headers"):
        selector["response_headers"] = _strings(spec["response_headers"])
    return selector


def _strings(block: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in block.items()}


def _pairs(block: list[list[Any]]) -> list[list[str]]:
    return [[str(x) for x in pair] for pair in block]


def _replace(block: Mapping[str, Any]) -> HttpChaosReplaceDoc:
    out: HttpChaosReplaceDoc = {}
    if block.get("path") is not None:
        out["path"] = str(block["path"])
    if block.get("method") is not None:
        out["method"] = str(block["method"])
    if block.get("code") is not None:
        out["code"] = int(block["code"])
    if block.get("body") is not None:
        out["body_base64"] = str(block["body"])  # the CRD's format: byte is base64 already
    if block.get("queries") is not None:
        out["queries"] = _strings(block["queries"])
    if block.get("headers") is not None:
        out["headers"] = _strings(block["headers"])
    return out


def _patch(block: Mapping[str, Any]) -> HttpChaosPatchDoc:
    out: HttpChaosPatchDoc = {}
    body = block.get("body")
    if body is not None:
        # Only JSON merge patches exist (the CRD's patch.body.type; chaos-tproxy has no other)
        out["body_json"] = str(body["value"])
    if block.get("queries"):
        out["queries"] = _pairs(block["queries"])
    if block.get("headers"):
        out["headers"] = _pairs(block["headers"])
    return out


def http_rules(spec: Mapping[str, Any], chaos_id: str, pod: KubeObject,
               pod_key: str) -> list[HttpChaosRuleDoc]:
    """The rules of one record's pod: none when the spec's port is none of the pod's app
    ports (the tproxy would intercept a port the app does not serve on: nothing to see).

    ``spec`` passed admission (``localmesh.chaos.admission``): its target, port, method
    and durations are valid.
    """
    app_port = _app_port(pod, pod_key)
    port = int(spec["port"])
    if port not in _declared_ports(pod) and port != app_port:
        return []
    rule: HttpChaosRuleDoc = {"id": chaos_id, "target": spec["target"],
                              "selector": _selector(spec, app_port)}
    if spec.get("abort"):
        rule["abort"] = True
    if spec.get("delay"):
        rule["delay_ms"] = parse_duration_ms(str(spec["delay"]))
    if spec.get("replace"):
        rule["replace"] = _replace(spec["replace"])
    if spec.get("patch"):
        rule["patch"] = _patch(spec["patch"])
    return [rule]


def http2_service_ports(services: list[KubeObject], pod: KubeObject, port: int) -> list[str]:
    """The Service ports (``"Service 'leaf' port 'grpc'"``) that select ``pod`` and send
    to its container ``port`` with a protocol Istio gives HTTP/2 (§2.5): ``targetPort`` as
    a number, as the name of one of the pod's container ports, or absent (= ``port``)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    named = {str(p.get("name")): int(p.get("containerPort", 0))
             for c in (pod.get("spec") or {}).get("containers") or ()
             for p in c.get("ports") or () if p.get("name")}
    out: list[str] = []
    for svc in services:
        spec = svc.get("spec") or {}
        selector = spec.get("selector")
        if not selector or not match_labels(selector, labels):
            continue
        for sp in spec.get("ports") or ():
            target = sp.get("targetPort", sp.get("port"))
            container = named.get(target, 0) if isinstance(target, str) else int(target or 0)
            if container == port and speaks_http2(sp):
                out.append(f"Service '{svc['metadata']['name']}' port "
                           f"'{sp.get('name') or sp.get('port')}'")
    return out
