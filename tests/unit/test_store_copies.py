"""The object store hands out copies: what a caller does to an object it read or wrote never
changes what the store (and every other reader) sees, as with a real API server."""

from __future__ import annotations

from datetime import UTC, datetime

from localmesh.store import ObjectStore
from tests.apiserver_helpers import namespace, pod


def _store() -> ObjectStore:
    store = ObjectStore()
    store.create(namespace("shop"))
    return store


def test_a_listed_object_changed_by_its_reader_leaves_the_store_unchanged() -> None:
    store = _store()
    store.create(pod("orders-1", labels={"app": "orders"}))
    listed = store.list("", "pods", "shop")[0]
    listed["metadata"]["labels"]["app"] = "changed"
    listed["spec"]["containers"].clear()
    again = store.get("", "pods", "shop", "orders-1")
    assert again["metadata"]["labels"] == {"app": "orders"}
    assert again["spec"]["containers"]


def test_an_object_changed_after_create_leaves_the_stored_one_unchanged() -> None:
    store = _store()
    manifest = pod("orders-1", labels={"app": "orders"})
    created = store.create(manifest)
    manifest["metadata"]["labels"]["app"] = "changed"
    created["metadata"]["labels"]["app"] = "changed too"
    assert store.get("", "pods", "shop", "orders-1")["metadata"]["labels"] == {"app": "orders"}


def test_a_value_that_is_not_json_is_still_copied() -> None:
    store = _store()
    manifest = pod("orders-1")
    manifest["metadata"]["annotations"] = {"seen": datetime(2026, 11, 26, tzinfo=UTC)}
    store.create(manifest)
    read = store.get("", "pods", "shop", "orders-1")
    assert read["metadata"]["annotations"]["seen"] == datetime(2026, 11, 26, tzinfo=UTC)
    read["metadata"]["annotations"]["seen"] = None
    assert store.get("", "pods", "shop", "orders-1")["metadata"]["annotations"]["seen"]


def test_a_shared_listing_stays_the_snapshot_it_was_when_the_object_is_written_later() -> None:
    """list_shared (controllers in the mesh process) skips the copies: every write stores a
    new object instead of changing the listed one."""
    store = _store()
    store.create(pod("orders-1", labels={"app": "orders"}))
    shared = store.list_shared("", "pods", "shop")[0]
    store.patch("", "pods", "shop", "orders-1", {"metadata": {"labels": {"app": "moved"}}})
    store.update_status(shared, {"phase": "Failed"})
    assert shared["metadata"]["labels"] == {"app": "orders"}
    assert shared["status"]["phase"] != "Failed"
    fresh = store.list_shared("", "pods", "shop")[0]
    assert fresh["metadata"]["labels"] == {"app": "moved"} and fresh["status"]["phase"] == "Failed"
