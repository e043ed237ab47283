"""The resource registry: plurals and subresources as a real API server has them."""

from localmesh.resources import ResourceRegistry
from localmesh.store import ObjectStore


def test_kinds_from_manifests_get_kubectls_plural() -> None:
    registry = ResourceRegistry.with_builtins()
    entry = registry.register_kind("networking.istio.io/v1", "ServiceEntry")
    assert entry.plural == "serviceentries"
    assert registry.register_kind("security.istio.io/v1", "AuthorizationPolicy").plural == (
        "authorizationpolicies")
    assert registry.register_kind("example.com/v1", "Gateway").plural == "gateways"
    assert registry.register_kind("example.com/v1", "Mesh").plural == "meshes"


def test_istio_kinds_have_a_status_subresource_and_chaos_mesh_kinds_do_not() -> None:
    """Istio's CRDs declare `subresources: {status: {}}`; Chaos Mesh's `subresources: {}`."""
    registry = ResourceRegistry.with_builtins()
    vs = registry.by_plural("networking.istio.io", "virtualservices")
    chaos = registry.by_plural("chaos-mesh.org", "networkchaos")
    assert vs is not None and "status" in vs.subresources
    assert chaos is not None and chaos.subresources == ()


def test_a_put_replaces_status_of_a_kind_without_status_subresource() -> None:
    """Without a status subresource, status is an ordinary field of the main resource."""
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    created = store.create({
        "apiVersion": "chaos-mesh.org/v1alpha1", "kind": "PodChaos",
        "metadata": {"name": "kill", "namespace": "shop"},
        "spec": {"action": "pod-kill", "mode": "one", "selector": {}},
    })
    store.update_status(created, {"experiment": {"desiredPhase": "Run"}})
    current = store.get("chaos-mesh.org", "podchaos", "shop", "kill")
    current["status"] = {"experiment": {"desiredPhase": "Stop"}}
    replaced = store.replace(current)
    assert replaced["status"]["experiment"]["desiredPhase"] == "Stop"
