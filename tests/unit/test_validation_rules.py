"""validate_object refuses what a real API server refuses, naming kind, object, field and value.

Istio: the CRD schema plus its CEL rule ``duration(self) >= duration('1ms')``
(schemas/SOURCES.md: "this CEL rule rejects timeout: 0s at the API server").
Chaos Mesh: ``spec.required = [action, mode, selector]`` and the enum of actions.
Core kinds: the checks of Kubernetes' Go validation our manifests can trip.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localmesh.errors import BadRequest, Invalid
from localmesh.store import ObjectStore
from localmesh.validation import install_validation, parse_go_duration, validate_object
from tests.apiserver_helpers import deployment, namespace, pod, virtual_service


def _network_chaos(**spec: Any) -> dict[str, Any]:
    body = {"action": "delay", "mode": "all", "selector": {"namespaces": ["shop"]},
            "delay": {"latency": "300ms"}}
    body.update(spec)
    return {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
            "metadata": {"name": "leaf-delay", "namespace": "shop"}, "spec": body}


def _refused(obj: dict[str, Any]) -> Invalid:
    with pytest.raises(Invalid) as caught:
        validate_object(obj)
    return caught.value


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_zero_route_timeout_is_refused_under_every_istio_version(version: str) -> None:
    """CEL on http[].timeout: duration(self) >= duration('1ms'); '0s' fails it."""
    error = _refused(virtual_service("orders", api_version=f"networking.istio.io/{version}",
                                     timeout="0s"))
    assert str(error) == "VirtualService 'orders': spec.http[0].timeout '0s' must be at least 1ms"
    assert error.field == "spec.http[0].timeout"


def test_per_try_timeout_below_one_millisecond_is_refused() -> None:
    """The same CEL rule guards http[].retries.perTryTimeout."""
    vs = virtual_service("orders")
    vs["spec"]["http"][0]["retries"] = {"attempts": 2, "perTryTimeout": "500us"}
    error = _refused(vs)
    assert error.field == "spec.http[0].retries.perTryTimeout"
    assert "'500us' must be at least 1ms" in str(error)


def test_durations_at_or_above_one_millisecond_pass() -> None:
    """1ms is the boundary (>=), so it is accepted, as are compound Go durations."""
    for timeout in ("1ms", "0.5s", "1m30s", "2h"):
        validate_object(virtual_service("orders", timeout=timeout))


def test_a_timeout_that_is_no_duration_is_refused() -> None:
    """CEL duration() fails on text that is not a Go duration."""
    error = _refused(virtual_service("orders", timeout="soon"))
    assert "spec.http[0].timeout 'soon' is not a valid duration" in str(error)


def test_destination_rule_connect_timeout_follows_the_same_rule() -> None:
    """DestinationRule connectionPool.tcp.connectTimeout carries the 1ms CEL rule too."""
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "orders"},
          "spec": {"host": "orders", "trafficPolicy": {"connectionPool": {
              "tcp": {"connectTimeout": "0s"}}}}}
    error = _refused(dr)
    assert error.field == "spec.trafficPolicy.connectionPool.tcp.connectTimeout"


def test_istio_schema_type_errors_name_the_field_and_value() -> None:
    """openAPIV3Schema: retries.attempts is an integer."""
    vs = virtual_service("orders")
    vs["spec"]["http"][0]["retries"] = {"attempts": "three"}
    error = _refused(vs)
    assert error.field == "spec.http[0].retries.attempts"
    assert "'three'" in str(error) and "integer" in str(error)


def test_network_chaos_without_selector_is_refused() -> None:
    """Chaos Mesh CRD: spec.required = [action, mode, selector]."""
    chaos = _network_chaos()
    del chaos["spec"]["selector"]
    error = _refused(chaos)
    assert str(error) == "NetworkChaos 'leaf-delay': spec.selector: Required value"


def test_network_chaos_with_an_unknown_action_is_refused() -> None:
    """spec.action is an enum (netem, delay, loss, duplicate, corrupt, partition, bandwidth)."""
    error = _refused(_network_chaos(action="slow"))
    assert error.field == "spec.action" and "'slow'" in str(error)


def test_pod_chaos_with_an_unknown_mode_is_refused() -> None:
    """spec.mode is an enum (one, all, fixed, fixed-percent, random-max-percent)."""
    chaos = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "PodChaos",
             "metadata": {"name": "kill"},
             "spec": {"action": "pod-kill", "mode": "most", "selector": {}}}
    error = _refused(chaos)
    assert error.field == "spec.mode" and "'most'" in str(error)


def test_deployment_without_selector_is_refused() -> None:
    """apps/v1 Deployment: spec.selector is required and must be non-empty."""
    dep = deployment("orders")
    del dep["spec"]["selector"]
    error = _refused(dep)
    assert error.field == "spec.selector" and "Deployment 'orders'" in str(error)


def test_deployment_selector_must_match_template_labels() -> None:
    """'selector does not match template labels' (apps validation)."""
    dep = deployment("orders")
    dep["spec"]["template"]["metadata"]["labels"] = {"app": "payments"}
    error = _refused(dep)
    assert error.field == "spec.template.metadata.labels"
    assert "does not match" in str(error) and "payments" in str(error)


def test_deployment_container_without_name_is_refused() -> None:
    """Containers need a name (DNS-1123 label)."""
    dep = deployment("orders")
    del dep["spec"]["template"]["spec"]["containers"][0]["name"]
    error = _refused(dep)
    assert error.field == "spec.template.spec.containers[0].name"


def test_service_without_ports_is_refused() -> None:
    """A ClusterIP Service needs spec.ports."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
           "spec": {"selector": {"app": "orders"}}}
    error = _refused(svc)
    assert str(error) == "Service 'orders': spec.ports: Required value"


def test_service_port_out_of_range_is_refused() -> None:
    """Ports are 1-65535."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
           "spec": {"ports": [{"port": 70000}]}}
    error = _refused(svc)
    assert error.field == "spec.ports[0].port" and "70000" in str(error)


def test_pod_without_containers_is_refused() -> None:
    """A Pod needs at least one container."""
    bare = pod("orders-1")
    bare["spec"]["containers"] = []
    assert _refused(bare).field == "spec.containers"


def test_pod_container_without_image_is_refused() -> None:
    """core/v1 validation: spec.containers[].image is a required value."""
    bare = pod("orders-1")
    del bare["spec"]["containers"][1]["image"]
    assert str(_refused(bare)) == "Pod 'orders-1': spec.containers[1].image: Required value"


@pytest.mark.parametrize("obj", [
    namespace("Shop"),
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mesh_config"}},
    virtual_service("Orders"),
])
def test_names_must_be_dns_1123(obj: dict[str, Any]) -> None:
    """metadata.name: lowercase RFC 1123 (label for Namespace/Service, subdomain otherwise)."""
    error = _refused(obj)
    assert error.field == "metadata.name"
    assert repr(obj["metadata"]["name"]) in str(error)


def test_namespace_names_cannot_contain_dots() -> None:
    """Namespaces are DNS-1123 labels, so 'a.b' is refused where a ConfigMap may use it."""
    assert _refused(namespace("shop.prod")).field == "metadata.name"
    validate_object({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "istio.mesh"}})


def test_unknown_kinds_only_get_the_name_check() -> None:
    """Kinds without a schema are kept as they are (the API serves them unvalidated)."""
    validate_object({"apiVersion": "example.com/v1", "kind": "Widget",
                     "metadata": {"name": "w"}, "spec": {"anything": [1, 2]}})


def test_installed_validation_guards_creates_and_updates_in_the_store() -> None:
    """install_validation wires validate_object as an admission hook."""
    store = ObjectStore()
    install_validation(store)
    store.create(namespace("shop"))
    stored = store.create(virtual_service("orders"))
    broken = copy.deepcopy(stored)
    broken["spec"]["http"][0]["timeout"] = "0s"
    with pytest.raises(Invalid, match="must be at least 1ms"):
        store.replace(broken)
    with pytest.raises(Invalid, match=r"spec\.ports: Required value"):
        store.create({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "orders", "namespace": "shop"}, "spec": {}})


def test_go_durations_parse_like_go() -> None:
    """Go's time.ParseDuration units: ns, us/µs, ms, s, m, h, combined and fractional."""
    assert parse_go_duration("1h2m3.5s") == 3_723_500_000_000
    assert parse_go_duration("1.5ms") == 1_500_000
    assert parse_go_duration("0") == 0
    with pytest.raises(ValueError):
        parse_go_duration("5")


def test_undeclared_fields_are_pruned_by_admission() -> None:
    """Structural schemas: the API server prunes fields the CRD does not declare."""
    store = ObjectStore()
    install_validation(store)
    store.create(namespace("shop"))
    vs = virtual_service("orders")
    vs["spec"]["http"][0]["timout"] = "1s"
    vs["spec"]["gatways"] = ["mesh"]
    stored = store.create(vs)
    assert "timout" not in stored["spec"]["http"][0] and "gatways" not in stored["spec"]
    assert stored["spec"]["http"][0]["timeout"] == "500ms"


def test_strict_validation_refuses_an_undeclared_field_naming_it() -> None:
    """fieldValidation=Strict: 'strict decoding error: unknown field "<path>"'."""
    vs = virtual_service("orders")
    vs["spec"]["http"][0]["timout"] = "1s"
    validate_object(vs)  # the default only prunes
    with pytest.raises(BadRequest) as caught:
        validate_object(vs, strict=True)
    assert caught.value.field == "spec.http[0].timout"
    assert 'unknown field "spec.http[0].timout"' in str(caught.value)


def test_strict_validation_keeps_maps_and_object_fields() -> None:
    """additionalProperties maps (labelSelectors) and apiVersion/kind/metadata are declared."""
    chaos = _network_chaos(selector={"labelSelectors": {"app": "leaf", "any-key": "x"}})
    chaos["metadata"]["annotations"] = {"anything": "goes"}
    validate_object(chaos, strict=True)
