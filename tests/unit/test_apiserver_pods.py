"""Pods through the official kubernetes client and chaostoolkit-kubernetes, against the local API.

The API subset must answer these clients exactly as a cluster would, since the
experiments run unchanged against both (docs/architecture.md, "Experiment configuration keys").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaosk8s.pod.actions import terminate_pods
from chaosk8s.pod.probes import count_pods, pods_in_phase
from kubernetes import client, config
from kubernetes.config import kube_config

from localmesh.podlogs import PodLogs
from localmesh.store import ObjectStore
from localmesh.validation import install_validation
from tests.apiserver_helpers import ServedApi, namespace, pod, serve_api
from tests.data.clock import JumpClock


def _add_pod(store: ObjectStore, manifest: dict[str, Any]) -> None:
    status = manifest.pop("status")
    store.update_status(store.create(manifest), status)


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def logs(tmp_path: Path, clock: JumpClock) -> PodLogs:
    return PodLogs(tmp_path / "state", clock_ns=clock)


@pytest.fixture
def api(tmp_path: Path, logs: PodLogs, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedApi]:
    store = ObjectStore()
    install_validation(store)
    store.create(namespace("shop", {"istio-injection": "enabled"}))
    store.create(namespace("other"))
    _add_pod(store, pod("orders-5d4f9c7b8-x2x9q", labels={"app": "orders"}))
    _add_pod(store, pod("orders-5d4f9c7b8-p7k2m", labels={"app": "orders"}))
    _add_pod(store, pod("leaf-6c9d8b7a6-q1w2e", labels={"app": "leaf"}, phase="Pending"))
    _add_pod(store, pod("orders-7f7f7f7f7-zzzzz", "other", labels={"app": "orders"}))
    with serve_api(store, logs, tmp_path) as served:
        # chaosk8s reads KUBECONFIG; the kubernetes client captured its default at import.
        monkeypatch.setenv("KUBECONFIG", str(served.kubeconfig))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(served.kubeconfig))
        yield served


@pytest.fixture
def core(api: ServedApi) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(api.kubeconfig)))


def test_pods_are_listed_by_label_in_one_namespace_and_across_all(core: client.CoreV1Api) -> None:
    """A list with labelSelector returns only matching pods, as kind PodList."""
    shop = core.list_namespaced_pod("shop", label_selector="app=orders")
    everywhere = core.list_pod_for_all_namespaces(label_selector="app=orders")
    assert sorted(p.metadata.name for p in shop.items) == [
        "orders-5d4f9c7b8-p7k2m", "orders-5d4f9c7b8-x2x9q"]
    assert {p.metadata.namespace for p in everywhere.items} == {"shop", "other"}
    assert int(shop.metadata.resource_version) > 0
    assert shop.kind == "PodList"


def test_field_selector_on_phase_filters_pods(core: client.CoreV1Api) -> None:
    """fieldSelector status.phase=Pending is honoured (chaosk8s filters this way)."""
    pending = core.list_namespaced_pod("shop", field_selector="status.phase=Pending")
    assert [p.metadata.name for p in pending.items] == ["leaf-6c9d8b7a6-q1w2e"]


def test_chaostoolkit_pod_probes_count_and_check_phase(api: ServedApi) -> None:
    """chaosk8s.pod.probes work unchanged through the kubeconfig in KUBECONFIG."""
    assert count_pods("app=orders", ns="shop") == 2
    assert pods_in_phase("app=orders", "Running", "shop") is True
    with pytest.raises(Exception, match="Pending"):
        pods_in_phase("app=leaf", "Running", "shop")


def test_terminate_pods_marks_pods_for_graceful_deletion(api: ServedApi) -> None:
    """Deleting a pod only sets deletionTimestamp; the supervisor purges it (architecture.md)."""
    api.store.set_graceful_deletion("", "pods")
    terminate_pods(label_selector="app=orders", ns="shop", all=True, grace_period=3)
    remaining = api.store.list("", "pods", "shop", label_selector="app=orders")
    assert len(remaining) == 2
    assert all(p["metadata"].get("deletionTimestamp") for p in remaining)
    assert {p["metadata"].get("deletionGracePeriodSeconds") for p in remaining} == {3}


def test_deleting_a_pod_returns_the_deleted_pod(core: client.CoreV1Api, api: ServedApi) -> None:
    """The pod registry returns the deleted object (ReturnDeletedObject), as a V1Pod."""
    deleted = core.delete_namespaced_pod("leaf-6c9d8b7a6-q1w2e", "shop")
    assert deleted.metadata.name == "leaf-6c9d8b7a6-q1w2e"
    assert deleted.kind == "Pod"
    assert api.store.list("", "pods", "shop", label_selector="app=leaf") == []


def test_deleting_a_config_map_returns_a_success_status(core: client.CoreV1Api) -> None:
    """Types without ReturnDeletedObject answer a Status Success naming the object."""
    core.create_namespaced_config_map("shop", {"metadata": {"name": "istio"},
                                               "data": {"mesh": "{}"}})
    status = core.delete_namespaced_config_map("istio", "shop")
    assert status["status"] == "Success"
    assert status["details"]["name"] == "istio"


def test_istio_proxy_log_is_read_with_tail_lines(core: client.CoreV1Api, logs: PodLogs) -> None:
    """tailLines returns the last N lines of the named container's log."""
    writer = logs.writer("shop", "orders-5d4f9c7b8-x2x9q", "istio-proxy")
    for n in range(10):
        writer.write_line(f'[2026-11-26T17:25:03.123Z] "GET /orders HTTP/1.1" 200 - req{n}')
    text = core.read_namespaced_pod_log("orders-5d4f9c7b8-x2x9q", "shop",
                                        container="istio-proxy", tail_lines=3)
    assert [line.rsplit(" ", 1)[1] for line in text.splitlines()] == ["req7", "req8", "req9"]


def test_since_seconds_drops_older_lines_and_timestamps_prefix_them(
        core: client.CoreV1Api, logs: PodLogs, clock: JumpClock) -> None:
    """sinceSeconds keeps lines received in the window; timestamps adds the RFC3339 time."""
    writer = logs.writer("shop", "orders-5d4f9c7b8-x2x9q", "istio-proxy")
    writer.write_line("old line")
    clock.advance(1.2)
    writer.write_line("new line")
    recent = core.read_namespaced_pod_log("orders-5d4f9c7b8-x2x9q", "shop",
                                          container="istio-proxy", since_seconds=1,
                                          timestamps=True)
    assert recent.endswith(" new line\n") and "old line" not in recent
    assert recent.startswith(time.strftime("%Y-%m-%dT", time.gmtime()))


def test_log_of_an_unknown_container_is_a_bad_request(core: client.CoreV1Api) -> None:
    """The API server answers 400 'container X is not valid for pod Y'."""
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod_log("orders-5d4f9c7b8-x2x9q", "shop", container="nope")
    assert caught.value.status == 400
    assert "container nope is not valid for pod orders-5d4f9c7b8-x2x9q" in caught.value.body


def test_log_without_container_of_a_two_container_pod_names_the_choices(
        core: client.CoreV1Api) -> None:
    """With more than one container the API server asks for one and lists them."""
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod_log("orders-5d4f9c7b8-x2x9q", "shop")
    assert caught.value.status == 400
    assert "choose one of: [app istio-proxy]" in caught.value.body


def test_log_of_an_unknown_pod_is_not_found(core: client.CoreV1Api) -> None:
    """A missing pod is a 404 NotFound Status."""
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod_log("ghost", "shop", container="app")
    assert caught.value.status == 404


def test_previous_log_is_the_one_before_the_restart(core: client.CoreV1Api,
                                                    logs: PodLogs) -> None:
    """previous=true reads the log of the terminated instance of the container."""
    writer = logs.writer("shop", "orders-5d4f9c7b8-x2x9q", "app")
    writer.write_line("first life")
    logs.rotate_previous("shop", "orders-5d4f9c7b8-x2x9q", "app")
    writer.write_line("second life")
    name = "orders-5d4f9c7b8-x2x9q"
    assert core.read_namespaced_pod_log(name, "shop", container="app", previous=True) \
        == "first life\n"
    assert core.read_namespaced_pod_log(name, "shop", container="app") == "second life\n"


def test_follow_streams_new_log_lines_until_the_pod_is_gone(
        api: ServedApi, logs: PodLogs) -> None:
    """follow=true (kubectl logs -f) sends the log, then each new line, and ends with the pod."""
    import threading

    import requests

    name = "orders-5d4f9c7b8-x2x9q"
    writer = logs.writer("shop", name, "istio-proxy")
    writer.write_line("before")

    def later() -> None:
        time.sleep(0.5)
        writer.write_line("during 1")
        writer.write_line("during 2")
        time.sleep(0.5)
        api.store.delete("", "pods", "shop", name)

    feeder = threading.Thread(target=later)
    feeder.start()
    response = requests.get(f"{api.url}/api/v1/namespaces/shop/pods/{name}/log",
                            params={"container": "istio-proxy", "follow": "true"},
                            timeout=10, stream=True)
    lines = [line.decode() for line in response.iter_lines()]
    feeder.join()
    assert lines == ["before", "during 1", "during 2"]


def test_log_of_a_pod_that_has_not_started_says_it_is_waiting(
        core: client.CoreV1Api) -> None:
    """A pod with no output yet: 400 'container ... is waiting to start', as the kubelet."""
    with pytest.raises(client.ApiException) as caught:
        core.read_namespaced_pod_log("leaf-6c9d8b7a6-q1w2e", "shop", container="app")
    assert caught.value.status == 400
    message = json.loads(caught.value.body)["message"]
    assert message.startswith('container "app" in pod "leaf-6c9d8b7a6-q1w2e" is waiting')
