"""The probes' core/v1 reads (probes.coreapi) answer as CoreV1Api would, against the local API:
the same objects, the same log text, and ApiException with the HTTP status on an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.validation import install_validation
from probes.coreapi import core_get, core_get_json
from probes.evidence.kube import read_mesh_settings
from tests.apiserver_helpers import namespace, pod, serve_api

ORDERS = "orders-5d4f9c7b8-x2x9q"


@pytest.fixture
def logs(tmp_path: Path) -> PodLogs:
    return PodLogs(tmp_path / "state")


@pytest.fixture
def store() -> ObjectStore:
    objects = ObjectStore()
    install_validation(objects)
    objects.create(namespace("shop"))
    objects.create(namespace("istio-system"))
    manifest = pod(ORDERS, labels={"app": "orders"})
    status = manifest.pop("status")
    objects.update_status(objects.create(manifest), status)
    return objects


@pytest.fixture
def api_client(store: ObjectStore, logs: PodLogs, tmp_path: Path) -> Iterator[Any]:
    with serve_api(store, logs, tmp_path) as served:
        api = config.new_client_from_config(str(served.kubeconfig))
        try:
            yield api
        finally:
            api.close()


def test_a_pod_list_is_the_same_as_core_v1_apis(api_client: Any) -> None:
    ours = core_get_json(api_client, "/api/v1/namespaces/shop/pods", timeout_s=5)
    theirs = client.CoreV1Api(api_client).list_namespaced_pod("shop")
    assert ours["kind"] == "PodList"
    assert [p["metadata"]["name"] for p in ours["items"]] == [
        p.metadata.name for p in theirs.items] == [ORDERS]


def test_a_container_log_is_read_as_text_with_its_query(api_client: Any, logs: PodLogs) -> None:
    writer = logs.writer("shop", ORDERS, "istio-proxy")
    for n in range(4):
        writer.write_line(f"line {n}")
    text = core_get(api_client, f"/api/v1/namespaces/shop/pods/{ORDERS}/log",
                    query={"container": "istio-proxy", "tailLines": 2}, timeout_s=5,
                    accept="text/plain")
    assert text.decode().splitlines() == ["line 2", "line 3"]


def test_a_missing_object_raises_api_exception_404_as_core_v1_api_does(api_client: Any) -> None:
    with pytest.raises(ApiException) as ours:
        core_get(api_client, "/api/v1/namespaces/shop/pods/ghost/log", timeout_s=5)
    with pytest.raises(ApiException) as theirs:
        client.CoreV1Api(api_client).read_namespaced_pod_log("ghost", "shop")
    assert ours.value.status == theirs.value.status == 404
    assert "ghost" in str(ours.value.body)


def test_without_the_istio_config_map_the_mesh_has_istios_defaults(api_client: Any) -> None:
    """Istio's default mesh config has no access log (accessLogFile empty)."""
    assert read_mesh_settings(api_client).access_log_enabled is False


def test_the_istio_config_map_is_read_with_its_annotations(
        api_client: Any, store: ObjectStore) -> None:
    store.create({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "istio", "namespace": "istio-system",
                               "annotations": {"meshchaos.io/honor-app-envoy-headers": "true"}},
                  "data": {"mesh": "accessLogFile: /dev/stdout\n"
                                   "defaultConfig: {tracing: {sampling: 25}}\n"}})
    settings = read_mesh_settings(api_client)
    assert settings.access_log_enabled and settings.honor_app_envoy_headers
    assert settings.sampling_percent == 25.0
