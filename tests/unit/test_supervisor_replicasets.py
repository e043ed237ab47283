"""The Deployment and ReplicaSet controllers, on the store alone (no processes).

Kubernetes semantics: a Deployment owns a ReplicaSet named ``<deploy>-<template hash>``
that owns ``replicas`` pods; a pod marked for deletion no longer counts, so a
replacement is created at once; a new template gets a new ReplicaSet and the old one
is scaled to zero; owners' deletion garbage-collects what they own.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from localmesh.store import ObjectStore
from localmesh.supervisor.replicasets import ReplicaSetController

NS = "shop"


@pytest.fixture
def store() -> ObjectStore:
    store = ObjectStore()
    store.set_graceful_deletion("", "pods")
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    return store


def deployment(replicas: int = 3, image: str = "example/orders:1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "orders", "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "orders"}},
                     "template": {"metadata": {"labels": {"app": "orders"},
                                               "annotations": {"x": "y"}},
                                  "spec": {"containers": [{"name": "orders",
                                                           "image": image}]}}}}


def live_pods(store: ObjectStore) -> list[dict[str, Any]]:
    return [p for p in store.list("", "pods", NS) if not p["metadata"].get("deletionTimestamp")]


def mark_ready(store: ObjectStore, pod: dict[str, Any]) -> None:
    store.update_status(pod, {"phase": "Running",
                              "conditions": [{"type": "Ready", "status": "True"}]})


def converge(controller: ReplicaSetController) -> None:
    for _ in range(3):  # status of the ReplicaSet feeds the Deployment's on the next pass
        controller.reconcile()


def test_replicas_are_honoured_with_generated_names_and_owner_references(
        store: ObjectStore) -> None:
    store.create(deployment(replicas=3))
    converge(ReplicaSetController(store))
    (rs,) = store.list("apps", "replicasets", NS)
    assert re.fullmatch(r"orders-[0-9a-f]{10}", rs["metadata"]["name"])
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == \
        rs["metadata"]["name"].rsplit("-", 1)[1]
    pods = live_pods(store)
    assert len(pods) == 3
    for pod in pods:
        assert re.fullmatch(rf"{rs['metadata']['name']}-[a-z0-9]{{5}}", pod["metadata"]["name"])
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert pod["metadata"]["annotations"] == {"x": "y"}
        assert pod["metadata"]["labels"]["app"] == "orders"
    reasons = [e["reason"] for e in store.list("", "events", NS)]
    assert reasons.count("SuccessfulCreate") == 3 and "ScalingReplicaSet" in reasons


def test_a_pod_marked_for_deletion_is_replaced_at_once_with_a_new_name(
        store: ObjectStore) -> None:
    """The ReplicaSet counts only pods without deletionTimestamp (kube-controller-manager)."""
    store.create(deployment(replicas=1))
    controller = ReplicaSetController(store)
    converge(controller)
    (old,) = live_pods(store)
    store.delete("", "pods", NS, old["metadata"]["name"])
    controller.reconcile()
    (new,) = live_pods(store)
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert len(store.list("", "pods", NS)) == 2  # the old one waits for the kubelet's purge


def test_scale_down_deletes_unready_pods_first(store: ObjectStore) -> None:
    store.create(deployment(replicas=3))
    controller = ReplicaSetController(store)
    converge(controller)
    pods = live_pods(store)
    mark_ready(store, pods[1])
    store.patch("apps", "deployments", NS, "orders", {"spec": {"replicas": 1}})
    converge(controller)
    assert [p["metadata"]["name"] for p in live_pods(store)] == [pods[1]["metadata"]["name"]]


def test_status_counts_ready_and_available_replicas(store: ObjectStore) -> None:
    store.create(deployment(replicas=2))
    controller = ReplicaSetController(store)
    converge(controller)
    mark_ready(store, live_pods(store)[0])
    converge(controller)
    (rs,) = store.list("apps", "replicasets", NS)
    assert rs["status"]["replicas"] == 2 and rs["status"]["readyReplicas"] == 1
    status = store.get("apps", "deployments", NS, "orders")["status"]
    assert status["availableReplicas"] == 1 and status["unavailableReplicas"] == 1
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert available["status"] == "False"
    mark_ready(store, live_pods(store)[1])
    converge(controller)
    status = store.get("apps", "deployments", NS, "orders")["status"]
    assert status["readyReplicas"] == 2
    assert next(c for c in status["conditions"] if c["type"] == "Available")["status"] == "True"


def test_a_new_template_gets_a_new_replicaset_and_the_old_one_scales_to_zero(
        store: ObjectStore) -> None:
    store.create(deployment(replicas=2))
    controller = ReplicaSetController(store)
    converge(controller)
    (first,) = store.list("apps", "replicasets", NS)
    old_pods = {p["metadata"]["name"] for p in live_pods(store)}
    store.patch("apps", "deployments", NS, "orders",
                {"spec": {"template": {"spec": {"containers": [{"name": "orders",
                                                                "image": "example/orders:2"}]}}}})
    converge(controller)
    sets = {rs["metadata"]["name"]: rs for rs in store.list("apps", "replicasets", NS)}
    assert len(sets) == 2 and sets[first["metadata"]["name"]]["spec"]["replicas"] == 0
    new_pods = {p["metadata"]["name"] for p in live_pods(store)}
    assert len(new_pods) == 2 and not new_pods & old_pods


def test_deleting_the_deployment_collects_its_replicaset_and_pods(store: ObjectStore) -> None:
    store.create(deployment(replicas=2))
    controller = ReplicaSetController(store)
    converge(controller)
    store.delete("apps", "deployments", NS, "orders")
    converge(controller)
    assert store.list("apps", "replicasets", NS) == []
    assert live_pods(store) == []
