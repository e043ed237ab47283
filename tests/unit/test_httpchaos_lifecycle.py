"""HTTPChaos through the local Chaos Mesh controller: admission, records, conditions, and the
rules the target pod's sidecar gets (docs/fidelity.md §5.4, §5.5).

The same harness as tests/unit/test_chaos_lifecycle.py: a real ObjectStore with the CRD
schemas and the webhook rules, recording doubles at the xDS and supervisor boundary.
"""

from __future__ import annotations

from typing import Any

import pytest

from localmesh.errors import Invalid
from tests.unit import test_chaos_lifecycle
from tests.unit.test_chaos_lifecycle import (
    GROUP,
    Harness,
    condition,
    eventually,
    gone,
    has_condition,
)

# The same fixture: a Harness whose controller is started, and stopped after the test.
h = test_chaos_lifecycle.h
PLURAL = "httpchaos"
# What the supervisor publishes for a pod with a sidecar: its app's loopback port among them.
SIDECAR_PORTS = {"meshchaos.io/app-port": "41001", "meshchaos.io/inbound-port": "41002"}
ABORT: dict[str, Any] = {"mode": "all", "selector": {"labelSelectors": {"app": "pricing"}},
                         "target": "Request", "port": 8080, "path": "/api/*", "method": "GET",
                         "abort": True}


def add_pricing(h: Harness, name: str = "pricing-a") -> None:
    h.add_pod(name, "pricing", annotations=dict(SIDECAR_PORTS))
    h.store.patch("", "pods", "shop", name, {"spec": {"containers": [
        {"name": "app", "image": "local/app", "ports": [{"containerPort": 8080}]},
        {"name": "istio-proxy", "image": "local/proxy"}]}})


async def test_applied_httpchaos_is_all_injected_with_the_rule_on_the_pods_sidecar(
        h: Harness) -> None:
    """Chaos Mesh `impl.go` Apply: the spec's port/path/method become the rule's selector and
    abort/delay/replace/patch its actions; §5.4 AllInjected once every record is Injected.
    Locally the containerPort 8080 becomes the port the app listens on (41001)."""
    add_pricing(h)
    h.add_pod("orders-a", "orders", annotations=dict(SIDECAR_PORTS))
    h.create("HTTPChaos", "api-abort", {**ABORT, "delay": "150ms",
                                        "replace": {"code": 503, "body": "b2Zm"},
                                        "patch": {"headers": [["x-chaos", "1"]],
                                                  "body": {"type": "JSON",
                                                           "value": '{"a": 1}'}}})
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    obj = h.get(PLURAL, "api-abort")
    assert obj["metadata"]["finalizers"] == ["chaos-mesh/records"]
    assert condition(obj, "Selected") == "True"
    assert condition(obj, "AllRecovered") == "False"
    assert condition(obj, "Paused") == "False"
    [record] = obj["status"]["experiment"]["containerRecords"]
    assert (record["id"], record["selectorKey"], record["phase"]) == \
        ("shop/pricing-a", ".", "Injected")
    [rule] = h.xds.http_faults["shop/pricing-a"]
    assert rule == {"id": "shop/api-abort", "target": "Request",
                    "selector": {"port": 41001, "path": "/api/*", "method": "GET"},
                    "abort": True, "delay_ms": 150.0,
                    "replace": {"code": 503, "body_base64": "b2Zm"},
                    "patch": {"body_json": '{"a": 1}', "headers": [["x-chaos", "1"]]}}
    assert "shop/orders-a" not in h.xds.http_faults
    assert "shop/pricing-a" not in h.xds.faults  # no network rule: HTTPChaos is its own push
    assert {"FinalizerInited", "Started", "Applied", "Updated"} <= {
        r for r, _ in h.events("api-abort")}


async def test_duration_expiry_recovers_the_rule_and_reports_all_recovered(h: Harness) -> None:
    """§5.4: creationTimestamp + duration passed → Stop (TimeUp), records Not Injected."""
    add_pricing(h)
    h.create("HTTPChaos", "short", {**ABORT, "duration": "300ms"})
    await eventually(has_condition(h, PLURAL, "short", "AllInjected", "True"))
    await eventually(has_condition(h, PLURAL, "short", "AllRecovered", "True"))
    obj = h.get(PLURAL, "short")
    assert obj["status"]["experiment"]["desiredPhase"] == "Stop"
    assert h.xds.http_faults["shop/pricing-a"] == []
    assert "TimeUp" in [r for r, _ in h.events("short")]


async def test_delete_clears_the_rule_before_the_object_disappears(h: Harness) -> None:
    """§5.4: delete → Stop → Recover → finalizer dropped once all are Not Injected."""
    add_pricing(h)
    h.create("HTTPChaos", "api-abort", ABORT)
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    h.store.delete(GROUP, PLURAL, "shop", "api-abort")
    await eventually(lambda: gone(h, PLURAL, "api-abort"))
    clear = h.journal.index(("set_http_faults", ("shop/pricing-a", 0)))
    assert clear < h.journal.index(("object_gone", "api-abort"))
    assert {"Deleted", "Recovered"} <= {r for r, _ in h.events("api-abort")}


async def test_pause_recovers_and_resume_reinjects(h: Harness) -> None:
    """§5.4: pause annotation "true" → recovered, Paused=True; removing it injects again."""
    add_pricing(h)
    h.create("HTTPChaos", "api-abort", ABORT)
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    pause = {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": "true"}}}
    h.store.patch(GROUP, PLURAL, "shop", "api-abort", pause)
    await eventually(has_condition(h, PLURAL, "api-abort", "AllRecovered", "True"))
    assert condition(h.get(PLURAL, "api-abort"), "Paused") == "True"
    assert h.xds.http_faults["shop/pricing-a"] == []
    h.store.patch(GROUP, PLURAL, "shop", "api-abort",
                  {"metadata": {"annotations": {"experiment.chaos-mesh.org/pause": None}}})
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    record = h.get(PLURAL, "api-abort")["status"]["experiment"]["containerRecords"][0]
    assert (record["injectedCount"], record["recoveredCount"]) == (2, 1)
    assert len(h.xds.http_faults["shop/pricing-a"]) == 1


async def test_a_port_the_app_does_not_serve_on_injects_no_rule(h: Harness) -> None:
    """CMW "port: the TCP port that the target service listens on": the tproxy intercepts
    that port only, so a port the app does not serve on leaves its traffic alone."""
    add_pricing(h)
    h.create("HTTPChaos", "other-port", {**ABORT, "port": 9090})
    await eventually(has_condition(h, PLURAL, "other-port", "AllInjected", "True"))
    assert h.xds.http_faults["shop/pricing-a"] == []


async def test_a_pod_without_a_sidecar_fails_its_record_with_the_reason(h: Harness) -> None:
    """Local limit (§5.5): HTTPChaos runs in the pod's inbound sidecar; without one the
    record stays Not Injected with a Failed event naming the pod, and AllInjected is False."""
    h.add_pod("pricing-a", "pricing", annotations={"meshchaos.io/app-port": "41001"})
    h.create("HTTPChaos", "api-abort", ABORT)
    await eventually(lambda: any(r == "Failed" for r, _ in h.events("api-abort")))
    message = next(m for r, m in h.events("api-abort") if r == "Failed")
    assert "pod 'shop/pricing-a' has no istio-proxy sidecar" in message
    assert condition(h.get(PLURAL, "api-abort"), "AllInjected") == "False"


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"port": 0}, "spec.port", "port 0 is not supported"),
    ({"port": None}, "spec.port", "port 0 is not supported"),
    ({"method": "gET"}, "spec.method", "method gET is not supported"),
    ({"delay": "1"}, "spec.delay", "invalid duration 1"),
    ({"duration": "400S"}, "spec.duration", "is not a duration"),
    ({"mode": "fixed", "value": "0"}, "spec.value", "must be greater than 0"),
])
def test_the_webhook_refuses_what_chaos_mesh_refuses(change: dict[str, Any], field: str,
                                                     says: str) -> None:
    """``httpchaos_webhook.go``: Port.Validate ("port %d is not supported", also for the zero
    value), HTTPMethod.Validate (Go's method names, exactly, for a Request target),
    Delay.Validate ("invalid duration"); httpchaos_webhook_test.go refuses "400S", "gET",
    "1" and fixed mode with "0"."""
    h = Harness()
    spec = {k: v for k, v in {**ABORT, **change}.items() if v is not None}
    with pytest.raises(Invalid) as caught:
        h.create("HTTPChaos", "bad", spec)
    assert caught.value.field == field
    assert says in str(caught.value)


def test_a_response_target_may_name_any_method() -> None:
    """HTTPMethod.Validate checks the method only when the target is Request."""
    h = Harness()
    h.create("HTTPChaos", "resp", {**ABORT, "target": "Response", "method": "gET", "code": 200})
    assert h.get(PLURAL, "resp")["spec"]["method"] == "gET"


def add_service(h: Harness, port_name: str) -> None:
    h.store.create({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "pricing", "namespace": "shop"},
                    "spec": {"selector": {"app": "pricing"},
                             "ports": [{"name": port_name, "port": 80, "targetPort": 8080}]}})


async def test_httpchaos_on_a_grpc_port_is_recorded_as_not_acting_on_http2(h: Harness) -> None:
    """Chaos Mesh has no gRPC chaos (chaos-mesh#2611: "we do not support gRPC chaos now") and
    the local rules act on HTTP/1.1 requests only (docs/fidelity.md §5.5): when the spec's
    port is one a Service gives HTTP/2 (port name ``grpc``, Istio's protocol selection §2.5),
    the chaos object gets a Warning event naming the pod, the port and the Service port."""
    add_pricing(h)
    add_service(h, "grpc-api")
    h.create("HTTPChaos", "api-abort", ABORT)
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    [message] = [m for r, m in h.events("api-abort") if r == "HTTP2NotAffected"]
    assert message.startswith("spec.port 8080 of pod 'shop/pricing-a' is Service 'pricing' "
                              "port 'grpc-api', which speaks HTTP/2"), message


async def test_httpchaos_on_an_http_port_has_no_http2_warning(h: Harness) -> None:
    """The same chaos on an ``http`` Service port: HTTP/1.1, acted on, no warning."""
    add_pricing(h)
    add_service(h, "http-api")
    h.create("HTTPChaos", "api-abort", ABORT)
    await eventually(has_condition(h, PLURAL, "api-abort", "AllInjected", "True"))
    assert "HTTP2NotAffected" not in {r for r, _ in h.events("api-abort")}
