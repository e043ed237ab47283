"""Discovery, watch streams and malformed requests on the local API server.

Discovery documents are what ``kubectl``-style clients resolve resources with; the
dynamic client of the kubernetes package must find NetworkChaos and VirtualService.
Errors are Status bodies (400 BadRequest for bodies that cannot be decoded, 405 for
unsupported methods), as a real API server sends them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kubernetes import client, config, dynamic, watch

from localmesh.apiserver.app import open_watches
from tests.apiserver_helpers import ServedApi, namespace, pod, serve_shop, virtual_service


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


@pytest.fixture
def api_client(api: ServedApi) -> client.ApiClient:
    return config.new_client_from_config(str(api.kubeconfig))


def test_dynamic_client_resolves_network_chaos_and_virtual_services(
        api: ServedApi, api_client: client.ApiClient) -> None:
    """DynamicClient discovers the custom kinds by apiVersion+kind and by short name."""
    dyn = dynamic.DynamicClient(api_client)
    chaos = dyn.resources.get(api_version="chaos-mesh.org/v1alpha1", kind="NetworkChaos")
    assert (chaos.name, chaos.namespaced) == ("networkchaos", True)
    for version in ("v1", "v1beta1", "v1alpha3"):
        vs = dyn.resources.get(api_version=f"networking.istio.io/{version}",
                               kind="VirtualService")
        assert vs.name == "virtualservices"
    vs = dyn.resources.get(api_version="networking.istio.io/v1", short_names=["vs"])
    vs.create(body=virtual_service("orders"), namespace="shop")
    assert [i.metadata.name for i in vs.get(namespace="shop").items] == ["orders"]


def test_kinds_registered_later_are_discovered_and_served(
        api: ServedApi, api_client: client.ApiClient) -> None:
    """A kind first seen in a manifest is served too (never dropped)."""
    api.store.registry.register_kind("example.com/v1", "Widget")
    api.store.create({"apiVersion": "example.com/v1", "kind": "Widget",
                      "metadata": {"name": "w", "namespace": "shop"}, "spec": {"size": 3}})
    dyn = dynamic.DynamicClient(api_client)
    widgets = dyn.resources.get(api_version="example.com/v1", kind="Widget")
    assert widgets.get(namespace="shop").items[0].spec.size == 3


def test_discovery_documents_list_verbs_scope_and_subresources(api: ServedApi) -> None:
    """/api/v1 lists pods (namespaced, short name po) and pods/log; /apis lists groups."""
    core = requests.get(f"{api.url}/api/v1", timeout=5).json()
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert pods["namespaced"] is True and pods["kind"] == "Pod"
    assert "po" in pods["shortNames"] and "watch" in pods["verbs"]
    assert pods["categories"] == ["all"]
    assert any(r["name"] == "pods/log" for r in core["resources"])
    namespaces = next(r for r in core["resources"] if r["name"] == "namespaces")
    assert namespaces["namespaced"] is False
    groups = {g["name"]: g for g in requests.get(f"{api.url}/apis", timeout=5).json()["groups"]}
    assert [v["version"] for v in groups["networking.istio.io"]["versions"]] == [
        "v1", "v1beta1", "v1alpha3"]
    assert requests.get(f"{api.url}/version", timeout=5).json()["major"] == "1"
    assert requests.get(f"{api.url}/apis/nope.io/v1", timeout=5).status_code == 404


def test_watch_stream_sends_existing_then_new_pods(
        api: ServedApi, api_client: client.ApiClient) -> None:
    """watch.Watch().stream gets ADDED for current objects, then live events, then ends."""
    api.store.create(pod("orders-a", labels={"app": "orders"}))
    first_seen = threading.Event()

    def later() -> None:
        # Write only once the stream is open, so the live events are not part of its list.
        first_seen.wait(10)
        api.store.create(pod("orders-b", labels={"app": "orders"}))
        api.store.create(pod("leaf-a", labels={"app": "leaf"}))
        api.store.delete("", "pods", "shop", "orders-a")

    writer = threading.Thread(target=later)
    writer.start()
    seen = []
    stream = watch.Watch()
    for event in stream.stream(client.CoreV1Api(api_client).list_namespaced_pod, "shop",
                               label_selector="app=orders", timeout_seconds=3):
        seen.append((event["type"], event["object"].metadata.name))
        first_seen.set()
        if len(seen) == 3:
            stream.stop()
    writer.join()
    assert seen == [("ADDED", "orders-a"), ("ADDED", "orders-b"), ("DELETED", "orders-a")]


def test_watch_ends_after_timeout_seconds(api: ServedApi) -> None:
    """timeoutSeconds closes the stream normally (the client then re-lists)."""
    started = time.monotonic()
    response = requests.get(f"{api.url}/api/v1/namespaces/shop/pods",
                            params={"watch": "true", "timeoutSeconds": "1"}, timeout=10)
    assert response.status_code == 200 and response.text == ""
    assert 0.9 <= time.monotonic() - started < 5


def test_malformed_json_body_is_a_400_bad_request_status(api: ServedApi) -> None:
    """A body that is not JSON is rejected with a BadRequest Status, not a 500."""
    response = requests.post(f"{api.url}/api/v1/namespaces/shop/configmaps",
                             data="{not json", headers={"Content-Type": "application/json"},
                             timeout=5)
    body = response.json()
    assert (response.status_code, body["reason"], body["code"]) == (400, "BadRequest", 400)


def test_malformed_yaml_body_is_a_400_bad_request_status(api: ServedApi) -> None:
    """YAML bodies are accepted, and broken YAML is a BadRequest."""
    url = f"{api.url}/api/v1/namespaces/shop/configmaps"
    good = requests.post(url, data="metadata: {name: mesh}\ndata: {a: b}\n",
                         headers={"Content-Type": "application/yaml"}, timeout=5)
    assert good.status_code == 201 and good.json()["kind"] == "ConfigMap"
    bad = requests.post(url, data="metadata: [unclosed", timeout=5,
                        headers={"Content-Type": "application/yaml"})
    assert (bad.status_code, bad.json()["reason"]) == (400, "BadRequest")


def test_unsupported_method_is_a_405_status(api: ServedApi) -> None:
    """PUT on a collection is not a verb of the API: 405 MethodNotAllowed as a Status."""
    response = requests.put(f"{api.url}/api/v1/namespaces/shop/pods", json={}, timeout=5)
    assert (response.status_code, response.json()["reason"]) == (405, "MethodNotAllowed")


def test_unknown_resource_is_a_404_status(api: ServedApi) -> None:
    """A plural nobody registered is 'the server could not find the requested resource'."""
    response = requests.get(f"{api.url}/api/v1/namespaces/shop/widgets", timeout=5)
    body = response.json()
    assert (response.status_code, body["kind"], body["reason"]) == (404, "Status", "NotFound")


def test_body_namespace_differing_from_the_url_is_rejected(api: ServedApi) -> None:
    """The API server refuses an object whose namespace contradicts the request path."""
    response = requests.post(
        f"{api.url}/api/v1/namespaces/shop/configmaps", timeout=5,
        data=json.dumps({"metadata": {"name": "x", "namespace": "other"}}))
    assert response.status_code == 400
    assert "does not match the namespace" in response.json()["message"]


def test_delete_collection_by_label_removes_only_matching(api: ServedApi) -> None:
    """DELETE on a collection with labelSelector deletes the matching objects."""
    for name, app in (("a", "orders"), ("b", "orders"), ("c", "leaf")):
        api.store.create(pod(name, labels={"app": app}))
    response = requests.delete(f"{api.url}/api/v1/namespaces/shop/pods",
                               params={"labelSelector": "app=orders"}, timeout=5)
    assert response.status_code == 200
    assert [p["metadata"]["name"] for p in api.store.list("", "pods", "shop")] == ["c"]


def test_unsupported_patch_type_is_415(api: ServedApi) -> None:
    """Server-side apply is not served: 415 UnsupportedMediaType, as for unknown patch types."""
    api.store.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "x", "namespace": "shop"}})
    response = requests.patch(f"{api.url}/api/v1/namespaces/shop/configmaps/x", data="{}",
                              headers={"Content-Type": "application/apply-patch+yaml"},
                              timeout=5)
    assert (response.status_code, response.json()["reason"]) == (415, "UnsupportedMediaType")


def test_legacy_watch_path_streams_the_collection(api: ServedApi) -> None:
    """/api/v1/watch/namespaces/<ns>/pods is the deprecated form of ?watch=true."""
    api.store.create(pod("orders-a", labels={"app": "orders"}))
    response = requests.get(f"{api.url}/api/v1/watch/namespaces/shop/pods",
                            params={"timeoutSeconds": "1"}, timeout=10)
    events = [json.loads(line) for line in response.text.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "orders-a")]


def test_merge_patch_with_a_stale_resource_version_is_a_conflict(api: ServedApi) -> None:
    """A patch that names metadata.resourceVersion is checked like a PUT (409 Conflict)."""
    created = api.store.create({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "x", "namespace": "shop"}})
    api.store.patch("", "configmaps", "shop", "x", {"data": {"a": "1"}})
    url = f"{api.url}/api/v1/namespaces/shop/configmaps/x"
    headers = {"Content-Type": "application/merge-patch+json"}
    stale = requests.patch(url, headers=headers, timeout=5, data=json.dumps(
        {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
         "data": {"a": "2"}}))
    assert (stale.status_code, stale.json()["reason"]) == (409, "Conflict")
    current = api.store.get("", "configmaps", "shop", "x")["metadata"]["resourceVersion"]
    fresh = requests.patch(url, headers=headers, timeout=5, data=json.dumps(
        {"metadata": {"resourceVersion": current}, "data": {"a": "2"}}))
    assert fresh.status_code == 200 and fresh.json()["data"] == {"a": "2"}


def test_delete_options_are_read_from_the_body(api: ServedApi) -> None:
    """DeleteOptions: gracePeriodSeconds is recorded, a uid precondition must match."""
    api.store.set_graceful_deletion("", "pods")
    created = api.store.create(pod("orders-a"))
    url = f"{api.url}/api/v1/namespaces/shop/pods/orders-a"
    wrong_uid = requests.delete(url, timeout=5, json={
        "kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "nope"}})
    assert (wrong_uid.status_code, wrong_uid.json()["reason"]) == (409, "Conflict")
    bad = requests.delete(url, json={"gracePeriodSeconds": "soon"}, timeout=5)
    assert (bad.status_code, bad.json()["reason"]) == (400, "BadRequest")
    held = requests.delete(url, timeout=5, json={
        "gracePeriodSeconds": 7, "preconditions": {"uid": created["metadata"]["uid"]}})
    assert held.status_code == 200
    assert held.json()["metadata"]["deletionGracePeriodSeconds"] == 7
    assert held.json()["metadata"]["deletionTimestamp"]


def test_deleting_a_namespace_deletes_what_it_holds(api: ServedApi) -> None:
    """The namespace controller removes a deleted namespace's objects (pods gracefully)."""
    api.store.set_graceful_deletion("", "pods")
    api.store.create(namespace("other"))
    api.store.create(pod("orders-a", "other"))
    api.store.create(virtual_service("orders") | {"metadata": {"name": "orders",
                                                               "namespace": "other"}})
    api.store.create(pod("orders-b"))
    response = requests.delete(f"{api.url}/api/v1/namespaces/other", timeout=5)
    assert response.status_code == 200
    assert api.store.list("networking.istio.io", "virtualservices", "other") == []
    [held] = api.store.list("", "pods", "other")
    assert held["metadata"]["deletionTimestamp"]
    assert api.store.list("", "pods", "shop")[0]["metadata"].get("deletionTimestamp") is None


def test_an_idle_watch_whose_client_left_is_dropped(api: ServedApi) -> None:
    """A watch with no events notices a closed connection and releases its watcher."""
    import socket

    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v1/namespaces/shop/pods?watch=true HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        assert open_watches(api.app) == 1
    deadline = time.monotonic() + 10
    while open_watches(api.app) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_watches(api.app) == 0
