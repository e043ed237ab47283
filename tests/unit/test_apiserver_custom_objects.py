"""Istio and Chaos Mesh custom objects through the kubernetes client and chaosk8s.crd.

Istio kinds are served under v1, v1beta1 and v1alpha3 from one storage
(schemas/SOURCES.md: "versions v1 (storage), v1beta1, v1alpha3 (all served, same
schema)"); errors are Kubernetes Status bodies with the code, reason and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaosk8s.crd.actions import create_custom_object, delete_custom_object
from chaosk8s.crd.probes import get_custom_object
from kubernetes import client, config
from kubernetes.config import kube_config

from tests.apiserver_helpers import ServedApi, deployment, serve_shop, virtual_service

ISTIO = "networking.istio.io"
VERSIONS = ("v1", "v1beta1", "v1alpha3")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        monkeypatch.setenv("KUBECONFIG", str(served.kubeconfig))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(served.kubeconfig))
        yield served


@pytest.fixture
def custom(api: ServedApi) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(str(api.kubeconfig)))


def _status(error: client.ApiException) -> dict[str, Any]:
    body = json.loads(error.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    return body


@pytest.mark.parametrize("version", VERSIONS)
def test_virtual_service_lifecycle_under_each_served_version(
        api: ServedApi, custom: client.CustomObjectsApi, version: str) -> None:
    """Create, get, merge patch, JSON patch and delete a VirtualService at one version."""
    name = f"orders-{version}"
    created = create_custom_object(ISTIO, version, "virtualservices", ns="shop",
                                   resource=virtual_service(name, api_version=f"{ISTIO}/{version}"))
    assert created["apiVersion"] == f"{ISTIO}/{version}"
    assert created["metadata"]["generation"] == 1

    fetched = get_custom_object(ISTIO, version, "virtualservices", name, ns="shop")
    assert fetched["spec"]["http"][0]["timeout"] == "500ms"

    merged = custom.patch_namespaced_custom_object(
        ISTIO, version, "shop", "virtualservices", name,
        {"spec": {"http": [{"route": [{"destination": {"host": name}}], "timeout": "2s"}]}})
    assert merged["spec"]["http"][0]["timeout"] == "2s"
    assert merged["metadata"]["generation"] == 2

    patched = custom.patch_namespaced_custom_object(
        ISTIO, version, "shop", "virtualservices", name,
        [{"op": "add", "path": "/spec/http/0/retries",
          "value": {"attempts": 2, "perTryTimeout": "200ms"}}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["http"][0]["retries"] == {"attempts": 2, "perTryTimeout": "200ms"}

    delete_custom_object(ISTIO, version, "virtualservices", name, ns="shop")
    assert api.store.list(ISTIO, "virtualservices", "shop") == []


def test_one_object_is_readable_under_every_istio_version(custom: client.CustomObjectsApi) -> None:
    """An object created as v1alpha3 is read back as v1 and v1beta1 with that apiVersion."""
    custom.create_namespaced_custom_object(
        ISTIO, "v1alpha3", "shop", "virtualservices",
        virtual_service("orders", api_version=f"{ISTIO}/v1alpha3"))
    for version in VERSIONS:
        obj = custom.get_namespaced_custom_object(ISTIO, version, "shop", "virtualservices",
                                                  "orders")
        assert obj["apiVersion"] == f"{ISTIO}/{version}"
        listed = custom.list_namespaced_custom_object(ISTIO, version, "shop", "virtualservices")
        assert listed["kind"] == "VirtualServiceList"
        assert listed["apiVersion"] == f"{ISTIO}/{version}"
        assert [i["apiVersion"] for i in listed["items"]] == [f"{ISTIO}/{version}"]


def test_missing_object_is_a_404_not_found_status(custom: client.CustomObjectsApi) -> None:
    """GET of an unknown name: 404, reason NotFound, details name the object."""
    with pytest.raises(client.ApiException) as caught:
        custom.get_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices", "ghost")
    status = _status(caught.value)
    assert (caught.value.status, status["code"], status["reason"]) == (404, 404, "NotFound")
    assert status["details"]["name"] == "ghost"


def test_creating_twice_is_a_409_already_exists_status(custom: client.CustomObjectsApi) -> None:
    """A second POST of the same name: 409 AlreadyExists (chaosk8s returns that body)."""
    custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                           virtual_service("orders"))
    with pytest.raises(client.ApiException) as caught:
        custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                               virtual_service("orders"))
    status = _status(caught.value)
    assert (status["code"], status["reason"]) == (409, "AlreadyExists")
    again = create_custom_object(ISTIO, "v1", "virtualservices", ns="shop",
                                 resource=virtual_service("orders"))
    assert again["reason"] == "AlreadyExists"


def test_zero_timeout_is_a_422_invalid_status_naming_the_field(
        custom: client.CustomObjectsApi) -> None:
    """The CRD's CEL rule duration(self) >= duration('1ms') rejects timeout: 0s with 422."""
    with pytest.raises(client.ApiException) as caught:
        custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                               virtual_service("orders", timeout="0s"))
    status = _status(caught.value)
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "spec.http[0].timeout"
    assert "'0s'" in status["message"]


def test_invalid_network_chaos_is_rejected_naming_the_missing_field(
        custom: client.CustomObjectsApi) -> None:
    """NetworkChaos spec.required = [action, mode, selector] (schemas/SOURCES.md)."""
    chaos = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
             "metadata": {"name": "leaf-delay"}, "spec": {"action": "delay", "mode": "all"}}
    with pytest.raises(client.ApiException) as caught:
        custom.create_namespaced_custom_object("chaos-mesh.org", "v1alpha1", "shop",
                                               "networkchaos", chaos)
    status = _status(caught.value)
    assert status["code"] == 422
    assert status["details"]["causes"][0]["field"] == "spec.selector"


def test_stale_resource_version_on_put_is_a_409_conflict(custom: client.CustomObjectsApi) -> None:
    """A replace naming an old resourceVersion fails with 409 Conflict, as optimistic locking."""
    created = custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                                     virtual_service("orders"))
    custom.patch_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices", "orders",
                                          {"metadata": {"labels": {"touched": "yes"}}})
    created["spec"]["hosts"] = ["orders.shop"]
    with pytest.raises(client.ApiException) as caught:
        custom.replace_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                                "orders", created)
    status = _status(caught.value)
    assert (status["code"], status["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status["message"]


def test_put_with_current_resource_version_replaces(custom: client.CustomObjectsApi) -> None:
    """A replace at the current resourceVersion succeeds and bumps generation on spec change."""
    current = custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                                     virtual_service("orders"))
    current["spec"]["hosts"] = ["orders.shop"]
    replaced = custom.replace_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices",
                                                       "orders", current)
    assert replaced["spec"]["hosts"] == ["orders.shop"]
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        current["metadata"]["resourceVersion"])


def test_finalizers_keep_a_deleted_object_until_they_are_removed(
        api: ServedApi, custom: client.CustomObjectsApi) -> None:
    """Delete sets deletionTimestamp while finalizers remain; removing them deletes it."""
    chaos = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
             "metadata": {"name": "leaf-delay", "finalizers": ["chaos-mesh/records"]},
             "spec": {"action": "delay", "mode": "all",
                      "selector": {"labelSelectors": {"app": "leaf"}},
                      "delay": {"latency": "300ms"}}}
    args = ("chaos-mesh.org", "v1alpha1", "shop", "networkchaos")
    custom.create_namespaced_custom_object(*args, chaos)
    held = custom.delete_namespaced_custom_object(*args, "leaf-delay")
    assert held["metadata"]["deletionTimestamp"]
    still = custom.get_namespaced_custom_object(*args, "leaf-delay")
    assert still["metadata"]["finalizers"] == ["chaos-mesh/records"]

    custom.patch_namespaced_custom_object(*args, "leaf-delay", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException) as caught:
        custom.get_namespaced_custom_object(*args, "leaf-delay")
    assert caught.value.status == 404


def test_status_subresource_changes_status_but_not_spec(api: ServedApi) -> None:
    """PATCH .../status writes status only; the spec (and generation) stay as they were."""
    apps = client.AppsV1Api(config.new_client_from_config(str(api.kubeconfig)))
    apps.create_namespaced_deployment("shop", deployment("orders"))
    after = apps.patch_namespaced_deployment_status(
        "orders", "shop", {"status": {"observedGeneration": 1, "readyReplicas": 1},
                           "spec": {"replicas": 5}})
    assert after.status.ready_replicas == 1
    assert after.spec.replicas == 1
    assert after.metadata.generation == 1


def test_scale_subresource_reads_and_sets_replicas(api: ServedApi) -> None:
    """deployments/scale is an autoscaling/v1 Scale; writing it changes spec.replicas only."""
    apps = client.AppsV1Api(config.new_client_from_config(str(api.kubeconfig)))
    apps.create_namespaced_deployment("shop", deployment("orders"))
    scale = apps.read_namespaced_deployment_scale("orders", "shop")
    assert (scale.spec.replicas, scale.status.selector) == (1, "app=orders")
    patched = apps.patch_namespaced_deployment_scale("orders", "shop",
                                                     {"spec": {"replicas": 3}})
    assert patched.spec.replicas == 3
    assert api.store.get("apps", "deployments", "shop", "orders")["spec"]["replicas"] == 3
    with pytest.raises(client.ApiException) as caught:
        apps.patch_namespaced_deployment_scale("orders", "shop", {"spec": {"replicas": -1}})
    assert _status(caught.value)["details"]["causes"][0]["field"] == "spec.replicas"


def test_field_validation_strict_refuses_unknown_fields_else_they_are_pruned(
        custom: client.CustomObjectsApi) -> None:
    """fieldValidation=Strict → 400 naming the field; the default prunes it."""
    vs = virtual_service("orders")
    vs["spec"]["http"][0]["timout"] = "1s"
    with pytest.raises(client.ApiException) as caught:
        custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices", vs,
                                               field_validation="Strict")
    status = _status(caught.value)
    assert (status["code"], status["reason"]) == (400, "BadRequest")
    assert status["details"]["causes"][0]["field"] == "spec.http[0].timout"
    created = custom.create_namespaced_custom_object(ISTIO, "v1", "shop", "virtualservices", vs)
    assert "timout" not in created["spec"]["http"][0]
