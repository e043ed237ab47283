"""Watches from a resourceVersion, deletions and finalizers (docs/fidelity.md §8.3).

Kubernetes api-concepts, "Semantics for watch": a watch started at a resourceVersion
"starts at that exact resource version" and delivers every change after it; a version the
server no longer keeps is "410 Gone" (reason Expired) and the client lists again.
``kubectl delete`` waits by listing ``fieldSelector=metadata.name=X`` and watching from the
list's resourceVersion until DELETED, so a change in between must never be lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from localmesh.apiserver import watch as watch_module
from tests.apiserver_helpers import ServedApi, serve_shop

CONFIGMAPS = "/api/v1/namespaces/shop/configmaps"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServedApi]:
    with serve_shop(tmp_path) as served:
        yield served


def configmap(name: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "shop", **meta}, "data": {"k": "v"}}


def events(api: ServedApi, count: int, **params: str) -> list[tuple[str, str, int]]:
    """The first ``count`` events of a watch: (type, name, resourceVersion); no waiting
    beyond them (the stream is closed as soon as they are read)."""
    query = {"watch": "true", "timeoutSeconds": "10", **params}
    found: list[tuple[str, str, int]] = []
    with requests.get(f"{api.url}{CONFIGMAPS}", params=query, stream=True,
                      timeout=10) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            event = json.loads(line)
            meta = event["object"]["metadata"]
            found.append((event["type"], meta["name"], int(meta["resourceVersion"])))
            if len(found) == count:
                break
    return found


def list_version(api: ServedApi, **params: str) -> tuple[str, list[str]]:
    body = requests.get(f"{api.url}{CONFIGMAPS}", params=params, timeout=5).json()
    return body["metadata"]["resourceVersion"], [i["metadata"]["name"] for i in body["items"]]


def test_a_deletion_between_list_and_watch_is_replayed(api: ServedApi) -> None:
    """kubectl delete's wait: the object is listed, deleted before the watch opens, and the
    watch from the list's version still sees DELETED (this is what hung for 26 minutes)."""
    api.store.create(configmap("mesh"))
    api.store.create(configmap("other"))
    version, names = list_version(api, fieldSelector="metadata.name=mesh")
    assert names == ["mesh"]
    api.store.delete("", "configmaps", "shop", "mesh")
    api.store.delete("", "configmaps", "shop", "other")  # filtered out by the selector
    api.store.create(configmap("mesh"))
    seen = events(api, 2, resourceVersion=version, fieldSelector="metadata.name=mesh")
    assert [(kind, name) for kind, name, _ in seen] == [("DELETED", "mesh"), ("ADDED", "mesh")]


def test_a_deleted_object_carries_the_version_of_its_deletion(api: ServedApi) -> None:
    """etcd's revision counts the delete: DELETED's resourceVersion is newer than any the
    object had, and the next list's version is not older than it."""
    created = api.store.create(configmap("mesh"))
    version, _ = list_version(api)
    api.store.delete("", "configmaps", "shop", "mesh")
    [(kind, _, deleted_at)] = events(api, 1, resourceVersion=version)
    assert kind == "DELETED"
    assert deleted_at > int(created["metadata"]["resourceVersion"])
    assert int(list_version(api)[0]) >= deleted_at


def test_finalizers_hold_an_object_until_the_last_is_removed(api: ServedApi) -> None:
    """A delete of an object with finalizers sets deletionTimestamp (MODIFIED); removing the
    finalizers ends it (DELETED), as the Chaos Mesh controller does after recovery (§5.4)."""
    api.store.create(configmap("held", finalizers=["chaos-mesh/records"]))
    version, _ = list_version(api)
    response = requests.delete(f"{api.url}{CONFIGMAPS}/held", timeout=5)
    assert response.status_code == 200
    assert response.json()["metadata"]["deletionTimestamp"]  # still there, marked
    api.store.mutate("", "configmaps", "shop", "held",
                     lambda obj: obj["metadata"].update(finalizers=[]))
    seen = events(api, 2, resourceVersion=version)
    assert [kind for kind, _, _ in seen] == ["MODIFIED", "DELETED"]
    assert requests.get(f"{api.url}{CONFIGMAPS}/held", timeout=5).status_code == 404


def test_each_change_is_sent_once(api: ServedApi) -> None:
    """A watch from version N replays what followed N and then goes live: nothing twice."""
    api.store.create(configmap("a"))
    version, _ = list_version(api)
    api.store.create(configmap("b"))
    api.store.mutate("", "configmaps", "shop", "a", lambda o: o["data"].update(k="w"))
    seen = events(api, 2, resourceVersion=version)
    assert [(kind, name) for kind, name, _ in seen] == [("ADDED", "b"), ("MODIFIED", "a")]
    versions = [v for _, _, v in seen]
    assert versions == sorted(set(versions))


def test_without_a_version_a_watch_starts_with_the_current_objects(api: ServedApi) -> None:
    """resourceVersion unset or "0": an ADDED per existing object first ("Get State and
    Start at Most Recent")."""
    api.store.create(configmap("a"))
    api.store.create(configmap("b"))
    for version in ("", "0"):
        assert [(k, n) for k, n, _ in events(api, 2, resourceVersion=version)] == [
            ("ADDED", "a"), ("ADDED", "b")]


def test_a_version_older_than_the_kept_changes_is_410_expired(
        api: ServedApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server keeps a bounded history; asking from before it is 410 Expired, so the
    client lists again instead of missing changes."""
    monkeypatch.setattr(watch_module, "_HISTORY_LIMIT", 3)
    version, _ = list_version(api)
    for index in range(5):
        api.store.create(configmap(f"c{index}"))
    response = requests.get(f"{api.url}{CONFIGMAPS}", timeout=5,
                            params={"watch": "true", "resourceVersion": version})
    body = response.json()
    assert (response.status_code, body["kind"], body["reason"]) == (410, "Status", "Expired")
    assert "too old resource version" in body["message"]


def test_a_resource_version_that_is_not_a_number_is_a_400(api: ServedApi) -> None:
    response = requests.get(f"{api.url}{CONFIGMAPS}", timeout=5,
                            params={"watch": "true", "resourceVersion": "abc"})
    assert (response.status_code, response.json()["reason"]) == (400, "BadRequest")
