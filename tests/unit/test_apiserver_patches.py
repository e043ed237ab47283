"""Patch types on the local API: strategic merge for built-in kinds, JSON merge otherwise.

Kubernetes API concepts, "Patch operations": strategic merge patch merges lists by
their patchMergeKey (containers by name, ports by containerPort, conditions by type);
custom resources take JSON merge semantics. The kubernetes client sends an object
patch of a built-in kind as application/strategic-merge-patch+json.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client, config

from localmesh.apiserver.strategic import strategic_merge
from tests.apiserver_helpers import ServedApi, deployment, serve_shop, virtual_service


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


def _two_containers() -> dict[str, Any]:
    dep = deployment("orders")
    dep["spec"]["template"]["spec"]["containers"].append(
        {"name": "helper", "image": "local/helper", "env": [{"name": "A", "value": "1"}]})
    return dep


def test_client_object_patch_of_a_deployment_merges_containers_by_name(
        api: ServedApi) -> None:
    """Changing one container's image keeps its ports and the other containers."""
    apps = client.AppsV1Api(config.new_client_from_config(str(api.kubeconfig)))
    apps.create_namespaced_deployment("shop", _two_containers())
    patched = apps.patch_namespaced_deployment("orders", "shop", {"spec": {"template": {
        "spec": {"containers": [{"name": "app", "image": "local/app:v2"}]}}}})
    containers = {c.name: c for c in patched.spec.template.spec.containers}
    assert containers["app"].image == "local/app:v2"
    assert containers["app"].ports[0].container_port == 8080
    assert containers["helper"].image == "local/helper"
    assert patched.metadata.generation == 2


def test_strategic_delete_directive_and_env_merge(api: ServedApi) -> None:
    """$patch: delete removes a keyed item; env entries merge by name."""
    api.store.create(_two_containers())
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "$patch": "delete"},
        {"name": "helper", "env": [{"name": "B", "value": "2"}]}]}}}}
    response = requests.patch(
        f"{api.url}/apis/apps/v1/namespaces/shop/deployments/orders", json=patch, timeout=5,
        headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert response.status_code == 200, response.text
    [helper] = response.json()["spec"]["template"]["spec"]["containers"]
    assert helper["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_strategic_patch_that_breaks_validation_is_422(api: ServedApi) -> None:
    """The merged object goes through admission like any update."""
    api.store.create(deployment("orders"))
    response = requests.patch(
        f"{api.url}/apis/apps/v1/namespaces/shop/deployments/orders", timeout=5,
        json={"spec": {"template": {"metadata": {"labels": {"app": "other"}}}}},
        headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert (response.status_code, response.json()["reason"]) == (422, "Invalid")
    assert response.json()["details"]["causes"][0]["field"] == "spec.template.metadata.labels"


def test_strategic_patch_of_a_custom_resource_is_a_merge_patch(api: ServedApi) -> None:
    """Custom resources have no merge keys: lists in the patch replace the stored ones."""
    api.store.create(virtual_service("orders"))
    response = requests.patch(
        f"{api.url}/apis/networking.istio.io/v1/namespaces/shop/virtualservices/orders",
        json={"spec": {"http": [{"route": [{"destination": {"host": "orders"}}],
                                 "timeout": "3s"}]}}, timeout=5,
        headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert response.status_code == 200
    assert response.json()["spec"]["http"] == [
        {"route": [{"destination": {"host": "orders"}}], "timeout": "3s"}]


def test_pod_status_conditions_merge_by_type() -> None:
    """conditions merge on type; null deletes a field; unkeyed lists are replaced."""
    pod_status = {"status": {"conditions": [{"type": "Ready", "status": "False"},
                                            {"type": "PodScheduled", "status": "True"}],
                             "hostIPs": [{"ip": "127.0.0.1"}], "message": "x"}}
    merged = strategic_merge(pod_status, {"status": {
        "conditions": [{"type": "Ready", "status": "True"}], "hostIPs": [], "message": None}})
    assert merged["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                              {"type": "PodScheduled", "status": "True"}]
    assert merged["status"]["hostIPs"] == [] and "message" not in merged["status"]
    assert pod_status["status"]["message"] == "x"  # the target is not changed


def test_service_ports_merge_by_port() -> None:
    """Service ports carry patchMergeKey port; container ports containerPort."""
    svc = {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}
    merged = strategic_merge(svc, {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}})
    assert merged["spec"]["ports"] == [{"port": 80, "name": "http"},
                                       {"port": 443, "name": "https", "targetPort": 8443}]


def test_server_side_apply_is_refused_by_name_not_approximated(api: ServedApi) -> None:
    """kubectl apply --server-side sends application/apply-patch+yaml; a merge in its place
    would keep fields the manager stopped applying, so the answer is 415 saying so."""
    api.store.create(virtual_service("orders"))
    response = requests.patch(
        f"{api.url}/apis/networking.istio.io/v1/namespaces/shop/virtualservices/orders",
        data="spec: {hosts: [orders]}\n", params={"fieldManager": "kubectl"}, timeout=5,
        headers={"Content-Type": "application/apply-patch+yaml"})
    body = response.json()
    assert (response.status_code, body["reason"]) == (415, "UnsupportedMediaType")
    assert "server-side apply is not served by the local mesh" in body["message"]
