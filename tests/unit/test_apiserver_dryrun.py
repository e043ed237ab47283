"""``dryRun=All``: checked like a real write, then dropped (docs/fidelity.md §8.1).

Kubernetes api-concepts, "Dry-run": "the request is still processed as typical request:
the fields are defaulted, the object is validated, it goes through the validation
admission chain, and through the mutating admission chain, and then the final object is
returned to the user as it normally would, without being persisted." ``kubectl
--dry-run=server`` sends it; a server that ignored it would really write (or delete).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.apiserver_helpers import ServedApi, deployment, serve_shop

DEPLOYMENTS = "/apis/apps/v1/namespaces/shop/deployments"
DRY = {"dryRun": "All"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


def test_a_dry_run_create_answers_the_object_and_stores_nothing(api: ServedApi) -> None:
    before = api.store.resource_version()
    response = requests.post(f"{api.url}{DEPLOYMENTS}", json=deployment("orders"),
                             params=DRY, timeout=5)
    assert response.status_code == 201
    assert response.json()["metadata"]["uid"]  # as it would have been stored
    assert api.store.list("apps", "deployments", "shop") == []
    assert api.store.resource_version() == before


def test_a_dry_run_is_still_validated(api: ServedApi) -> None:
    broken = deployment("orders")
    broken["spec"]["template"]["spec"]["containers"][0].pop("image")
    response = requests.post(f"{api.url}{DEPLOYMENTS}", json=broken, params=DRY, timeout=5)
    assert (response.status_code, response.json()["reason"]) == (422, "Invalid")


def test_dry_run_patch_replace_scale_and_delete_change_nothing(api: ServedApi) -> None:
    stored = api.store.create(deployment("orders"))
    version = stored["metadata"]["resourceVersion"]
    url = f"{api.url}{DEPLOYMENTS}/orders"
    patched = requests.patch(url, json={"spec": {"replicas": 5}}, params=DRY, timeout=5,
                             headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert patched.status_code == 200 and patched.json()["spec"]["replicas"] == 5
    replaced = {**stored, "spec": {**stored["spec"], "replicas": 4}}
    assert requests.put(url, json=replaced, params=DRY, timeout=5).json()["spec"][
        "replicas"] == 4
    scaled = requests.patch(f"{url}/scale", json={"spec": {"replicas": 3}}, params=DRY,
                            headers={"Content-Type": "application/merge-patch+json"},
                            timeout=5)
    assert scaled.status_code == 200 and scaled.json()["spec"]["replicas"] == 3
    deleted = requests.delete(url, params=DRY, timeout=5)
    assert (deleted.status_code, deleted.json()["status"]) == (200, "Success")
    now = api.store.get("apps", "deployments", "shop", "orders")
    assert (now["spec"]["replicas"], now["metadata"]["resourceVersion"]) == (1, version)


def test_a_dry_run_delete_of_a_held_object_sets_no_deletion_timestamp(api: ServedApi) -> None:
    api.store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "held", "namespace": "shop", "finalizers": ["example.com/keep"]}})
    answer = requests.delete(f"{api.url}/api/v1/namespaces/shop/configmaps/held",
                             params=DRY, timeout=5).json()
    assert answer["metadata"]["deletionTimestamp"]  # what a real delete would leave
    assert "deletionTimestamp" not in api.store.get("", "configmaps", "shop",
                                                    "held")["metadata"]


def test_only_all_is_a_dry_run_value(api: ServedApi) -> None:
    response = requests.post(f"{api.url}{DEPLOYMENTS}", json=deployment("orders"),
                             params={"dryRun": "Some"}, timeout=5)
    assert (response.status_code, response.json()["reason"]) == (400, "BadRequest")
    assert api.store.list("apps", "deployments", "shop") == []


def test_a_delete_takes_its_dry_run_from_delete_options_too(api: ServedApi) -> None:
    """kubectl delete --dry-run=server puts dryRun in the DeleteOptions body."""
    api.store.create(deployment("orders"))
    response = requests.delete(f"{api.url}{DEPLOYMENTS}/orders", timeout=5,
                               json={"kind": "DeleteOptions", "apiVersion": "v1",
                                     "dryRun": ["All"]})
    assert response.status_code == 200
    assert api.store.get("apps", "deployments", "shop", "orders")
