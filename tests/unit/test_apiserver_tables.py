"""Table answers: the columns and cells ``kubectl get`` prints (docs/fidelity.md §8.2).

Kubernetes api-concepts, "Receiving resources as Tables": a client that sends
``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` gets a ``meta.k8s.io/v1`` Table
of ``columnDefinitions`` and ``rows``; each row's ``object`` is PartialObjectMetadata by
default (``includeObject`` = None | Object | PartialObjectMetadata).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localmesh.apiserver.tables import human_duration
from tests.apiserver_helpers import ServedApi, deployment, pod, serve_shop

TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
         "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


def get_table(api: ServedApi, path: str, **params: str) -> dict[str, Any]:
    response = requests.get(f"{api.url}{path}", headers={"Accept": TABLE}, params=params,
                            timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    return body


def columns(table: dict[str, Any], *, wide: bool = False) -> list[str]:
    return [c["name"] for c in table["columnDefinitions"] if wide or c["priority"] == 0]


def cells(table: dict[str, Any], name: str) -> dict[str, Any]:
    names = [c["name"] for c in table["columnDefinitions"]]
    for row in table["rows"]:
        if name in row["cells"]:
            return dict(zip(names, row["cells"], strict=True))
    raise AssertionError(f"no row for {name}")


def test_pods_print_ready_status_and_restarts(api: ServedApi) -> None:
    """printPod: READY counts ready containers of the spec's, STATUS is a waiting reason
    when a container has one, RESTARTS sums restartCount with the last restart's age."""
    api.store.create(pod("orders-a"))
    crashing = pod("orders-b")
    crashing["status"]["containerStatuses"][0].update(
        ready=False, restartCount=3, state={"waiting": {"reason": "CrashLoopBackOff"}},
        lastState={"terminated": {"exitCode": 1, "finishedAt": "2020-01-01T00:00:00Z"}})
    api.store.create(crashing)
    table = get_table(api, "/api/v1/namespaces/shop/pods")
    assert columns(table) == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert columns(table, wide=True)[5:] == ["IP", "Node", "Nominated Node", "Readiness Gates"]
    healthy, broken = cells(table, "orders-a"), cells(table, "orders-b")
    assert (healthy["Ready"], healthy["Status"], healthy["Restarts"]) == ("2/2", "Running", "0")
    assert (broken["Ready"], broken["Status"]) == ("1/2", "CrashLoopBackOff")
    assert broken["Restarts"].startswith("3 (") and broken["Restarts"].endswith(" ago)")
    assert healthy["IP"] == "127.0.0.1"


def test_a_pod_being_deleted_is_terminating(api: ServedApi) -> None:
    api.store.set_graceful_deletion("", "pods")
    api.store.create(pod("orders-a"))
    api.store.delete("", "pods", "shop", "orders-a")
    assert cells(get_table(api, "/api/v1/namespaces/shop/pods"),
                 "orders-a")["Status"] == "Terminating"


def test_deployments_replicasets_and_services(api: ServedApi) -> None:
    api.store.create(deployment("orders"))
    api.store.update_status(api.store.get("apps", "deployments", "shop", "orders"),
                            {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                             "availableReplicas": 1})
    table = get_table(api, "/apis/apps/v1/namespaces/shop/deployments")
    assert columns(table) == ["Name", "Ready", "Up-to-date", "Available", "Age"]
    row = cells(table, "orders")
    assert (row["Ready"], row["Up-to-date"], row["Available"]) == ("1/1", 1, 1)
    assert (row["Containers"], row["Images"], row["Selector"]) == ("app", "local/app",
                                                                   "app=orders")
    rs = get_table(api, "/apis/apps/v1/namespaces/shop/replicasets")
    assert columns(rs) == ["Name", "Desired", "Current", "Ready", "Age"]
    api.store.create({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": "orders", "namespace": "shop"},
                      "spec": {"selector": {"app": "orders"},
                               "ports": [{"name": "http", "port": 8080, "targetPort": 8080},
                                         {"name": "dns", "port": 9090, "nodePort": 30090,
                                          "protocol": "UDP"}]}})
    services = get_table(api, "/api/v1/namespaces/shop/services")
    assert columns(services) == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"]
    row = cells(services, "orders")
    assert (row["Type"], row["External-IP"], row["Port(s)"]) == (
        "ClusterIP", "<none>", "8080/TCP,9090:30090/UDP")


def test_events_print_last_seen_type_reason_object_message(api: ServedApi) -> None:
    api.store.record_event(api.store.create(pod("orders-a")), "Started", "Started container")
    table = get_table(api, "/api/v1/namespaces/shop/events")
    assert columns(table) == ["Last Seen", "Type", "Reason", "Object", "Message"]
    [row] = table["rows"]
    assert row["cells"][1:4] == ["Normal", "Started", "pod/orders-a"]


def test_custom_kinds_print_their_crd_printer_columns(api: ServedApi) -> None:
    """NetworkChaos declares action and duration (.spec.action, .spec.duration); a kind
    without printer columns prints Name and Age, as apiextensions' tableconvertor."""
    api.store.create({"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
                      "metadata": {"name": "slow", "namespace": "shop"},
                      "spec": {"action": "delay", "mode": "all", "duration": "30s",
                               "selector": {"namespaces": ["shop"]},
                               "delay": {"latency": "10ms"}}})
    chaos = get_table(api, "/apis/chaos-mesh.org/v1alpha1/namespaces/shop/networkchaos")
    assert columns(chaos) == ["Name", "action", "duration"]
    assert chaos["rows"][0]["cells"] == ["slow", "delay", "30s"]
    api.store.create({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                      "metadata": {"name": "edge", "namespace": "shop"}, "spec": {}})
    gateways = get_table(api, "/apis/networking.istio.io/v1/namespaces/shop/gateways")
    assert columns(gateways) == ["Name", "Age"]


def test_rows_carry_partial_metadata_unless_asked_otherwise(api: ServedApi) -> None:
    api.store.create(pod("orders-a"))
    path = "/api/v1/namespaces/shop/pods"
    row = get_table(api, path)["rows"][0]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "orders-a" and "spec" not in row["object"]
    assert get_table(api, path, includeObject="Object")["rows"][0]["object"]["kind"] == "Pod"
    assert "object" not in get_table(api, path, includeObject="None")["rows"][0]
    one = get_table(api, f"{path}/orders-a")  # a single object is a one-row Table
    assert [r["cells"][0] for r in one["rows"]] == ["orders-a"]


def test_without_the_table_accept_the_objects_are_served(api: ServedApi) -> None:
    api.store.create(pod("orders-a"))
    body = requests.get(f"{api.url}/api/v1/namespaces/shop/pods",
                        headers={"Accept": "application/json"}, timeout=5).json()
    assert body["kind"] == "PodList"


@pytest.mark.parametrize(("seconds", "printed"), [
    (-5, "<invalid>"), (-1, "0s"), (45, "45s"), (119, "119s"), (192, "3m12s"), (300, "5m"),
    (750, "12m"), (3 * 3600 + 5 * 60, "3h5m"), (10 * 3600, "10h"), (3 * 86400, "3d"),
    (3 * 86400 + 4 * 3600, "3d4h"), (30 * 86400, "30d"), (800 * 86400, "2y70d"),
    (9 * 365 * 86400, "9y")])
def test_ages_are_apimachinerys_human_duration(seconds: int, printed: str) -> None:
    assert human_duration(seconds) == printed


def test_a_watch_asked_for_tables_streams_one_row_tables(api: ServedApi) -> None:
    """``kubectl get -w`` watches with the Table Accept header and prints each event's row
    with the server's columns (without it, it falls back to NAME and AGE)."""
    api.store.create(pod("orders-a"))
    with requests.get(f"{api.url}/api/v1/namespaces/shop/pods", stream=True, timeout=10,
                      params={"watch": "true", "timeoutSeconds": "10"},
                      headers={"Accept": TABLE}) as response:
        event = json.loads(next(response.iter_lines()))
    assert event["type"] == "ADDED"
    table = event["object"]
    assert (table["kind"], columns(table)) == ("Table", ["Name", "Ready", "Status",
                                                         "Restarts", "Age"])
    assert cells(table, "orders-a")["Status"] == "Running"
