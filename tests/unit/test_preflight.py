"""Preflight: an experiment pointed at a mesh by ``--var`` is checked against what that mesh
holds before any chaos is applied (issue 13, "Bad input"): a service key naming a Service
the namespace lacks, an entry path no ingress route matches, a timeout experiment aimed at a
service without a route timeout. Each is a ConfigurationError naming the key and the value.

The mesh is the store chain's own manifests (fixtures/store/k8s) in the local API server on
loopback, read through the official Kubernetes client; the experiments are the shipped
files, with the --var of tests/store_chain.py, their configuration loaded by chaoslib
exactly as ``chaos run --var`` loads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from chaoslib.configuration import load_configuration
from chaoslib.exceptions import InterruptExecution

from localmesh.documents import KubeObject
from localmesh.manifests import load_manifests
from localmesh.store import ObjectStore
from probes import preflight
from probes.controls import safety as safety_control
from probes.errors import ConfigurationError
from tests.apiserver_helpers import NoLogs, ServedApi, namespace, serve_api
from tests.store_chain import STORE_VARS

ROOT = Path(__file__).resolve().parents[2]
STORE_MANIFESTS = ROOT / "fixtures" / "store" / "k8s"
STORE_SERVICES = "catalog, gateway, reviews, stock, warehouse"


@pytest.fixture
def store_mesh(tmp_path: Path) -> Iterator[ServedApi]:
    """The store chain's Services, VirtualServices and Gateway, served on loopback."""
    store = ObjectStore()
    objects = [m.obj for m in load_manifests([STORE_MANIFESTS], registry=store.registry)]
    declared = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    for name in {"istio-system"} - declared:
        store.create(namespace(name))
    store.load(objects)
    with serve_api(store, NoLogs(), tmp_path) as api:
        yield api


def experiment(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "experiments" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def configuration(api: ServedApi, doc: dict[str, Any], **variables: str) -> dict[str, Any]:
    """What chaoslib makes of ``chaos run --var namespace=store --var … <experiment>``."""
    extra = {"target": "kubernetes", "kubeconfig": str(api.kubeconfig),
             "ingress_url": "http://127.0.0.1:9", "traces_url": "http://127.0.0.1:9",
             "namespace": "store", "entry_path": "/api/items/42", **variables}
    return load_configuration(doc["configuration"], extra)  # type: ignore[no-any-return]


def check(api: ServedApi, name: str, **variables: str) -> None:
    doc = experiment(name)
    preflight.check_experiment(doc, configuration(api, doc, **{**STORE_VARS[name],
                                                              **variables}))


@pytest.mark.parametrize("name", sorted(STORE_VARS))
def test_each_experiment_pointed_at_the_store_chain_by_var_passes(
        store_mesh: ServedApi, name: str) -> None:
    """The matching good inputs: every key names a Service of 'store', /api/items/42 is
    routed by the ingress VirtualService, and warehouse's route has a timeout."""
    check(store_mesh, name)


@pytest.mark.parametrize(("name", "key", "value"), [
    ("timeout-cascade", "target_service", "warehous"),
    ("timeout-cascade", "target_caller", "stok"),
    ("pod-kill-midchain", "target_service", "inventory"),
    ("partition-leaf", "partition_peer", "pricing"),
    ("sidecar-failure", "side_service", "ratings"),
])
def test_a_key_naming_a_service_the_namespace_lacks_is_refused_with_key_value_and_choices(
        store_mesh: ServedApi, name: str, key: str, value: str) -> None:
    """A Service is looked up by name in its namespace (Kubernetes: names are unique per
    namespace and kind); a reference chain's name left in place is caught the same way."""
    with pytest.raises(ConfigurationError) as refused:
        check(store_mesh, name, **{key: value})
    assert str(refused.value) == (
        f"configuration '{key}' names service '{value}', but namespace 'store' has no such "
        f"Service (it has: {STORE_SERVICES})")


def test_the_reference_chains_defaults_left_in_place_on_another_chain_are_refused(
        store_mesh: ServedApi) -> None:
    """Only namespace and entry path moved: partition-leaf's defaults inventory/pricing are
    not Services of 'store', and the first key (sorted) is named."""
    doc = experiment("partition-leaf")
    with pytest.raises(ConfigurationError, match="configuration 'partition_peer' names "
                                                 "service 'pricing', but namespace 'store'"):
        preflight.check_experiment(doc, configuration(store_mesh, doc))


def test_a_namespace_without_any_service_is_refused(store_mesh: ServedApi) -> None:
    doc = experiment("deadline-headers-audit")
    with pytest.raises(ConfigurationError, match="configuration 'namespace' 'stor' has no "
                                                 "Service"):
        preflight.check_experiment(doc, configuration(store_mesh, doc, namespace="stor"))


@pytest.mark.parametrize("path", ["/", "/items/42", "/ap"])
def test_an_entry_path_no_ingress_route_matches_is_refused_before_any_request(
        store_mesh: ServedApi, path: str) -> None:
    """The gateway-bound VirtualService matches the prefix /api/ only; any other path would
    get Envoy's 404 NR (no route, docs/fidelity.md §1.6) at the ingress, not an answer of
    the chain."""
    with pytest.raises(ConfigurationError) as refused:
        check(store_mesh, "deadline-headers-audit", entry_path=path)
    assert str(refused.value) == (
        f"configuration 'entry_path' '{path}' matches no route of the ingress "
        "VirtualService(s) gateway-ingress (they route: /api/); the probes' requests would "
        "get 404 NR from the gateway")


def test_a_query_string_is_not_part_of_the_matched_path(store_mesh: ServedApi) -> None:
    """Istio's uri match is on the path; the query does not take part."""
    check(store_mesh, "deadline-headers-audit", entry_path="/api/items/42?lang=de")


@pytest.mark.parametrize(("match", "path", "matched"), [
    ({"uri": {"exact": "/api/items"}}, "/api/items", True),
    ({"uri": {"exact": "/api/items"}}, "/api/items/42", False),
    ({"uri": {"prefix": "/api/"}}, "/api/items/42", True),
    ({"uri": {"prefix": "/api/"}}, "/api", False),
    ({"uri": {"regex": "/api/items/[0-9]+"}}, "/api/items/42", True),
    ({"uri": {"regex": "/api/items/[0-9]+"}}, "/api/items/42/reviews", False),  # full match
    ({"headers": {"x-canary": {"exact": "1"}}}, "/anything", True),  # no uri: every path
    (None, "/anything", True),
])
def test_uri_matches_follow_istio_http_match_request(match: dict[str, Any] | None, path: str,
                                                     matched: bool) -> None:
    """istio/api HTTPMatchRequest.uri: exact, prefix, or regex (RE2, whole path)."""
    assert preflight.matches_uri(match, path) is matched


def test_a_namespace_whose_ingress_routes_live_elsewhere_has_no_path_to_check() -> None:
    """No VirtualService of the namespace is bound to a gateway: nothing to match against."""
    mesh_only: list[Mapping[str, Any]] = [{"metadata": {"name": "stock"},
                                            "spec": {"hosts": ["stock"], "http": [
                                                {"match": [{"uri": {"exact": "/x"}}],
                                                 "route": []}]}}]
    assert preflight.unmatched_entry_path(mesh_only, "/") is None


def test_a_timeout_experiment_on_a_service_no_virtualservice_routes_is_refused(
        store_mesh: ServedApi) -> None:
    """Istio's default route sets no timeout (docs/fidelity.md §2.1): a delay has nothing to
    exceed, so timeout-cascade's derived delay cannot be computed."""
    store_mesh.store.delete("networking.istio.io", "virtualservices", "store", "warehouse")
    with pytest.raises(ConfigurationError) as refused:
        check(store_mesh, "timeout-cascade")
    assert str(refused.value).startswith(
        "configuration 'target_service' 'warehouse': no VirtualService in namespace 'store' "
        "routes to it, so its callers have no route timeout to exceed")


def test_a_timeout_experiment_on_a_route_without_timeout_or_per_try_timeout_is_refused(
        store_mesh: ServedApi) -> None:
    """A VirtualService that routes to the service but sets neither bound waits forever
    (fidelity §2.1: Istio's default is no timeout)."""
    store_mesh.store.mutate("networking.istio.io", "virtualservices", "store", "warehouse",
                            _without_timeouts)
    with pytest.raises(ConfigurationError, match="configuration 'target_service' 'warehouse': "
                                                 "VirtualService 'store/warehouse' sets no "
                                                 "timeout or perTryTimeout on its route"):
        check(store_mesh, "timeout-cascade")


def test_only_timeout_experiments_need_a_route_timeout(store_mesh: ServedApi) -> None:
    """pod-kill takes no latency from the route: stock without a VirtualService is fine."""
    store_mesh.store.delete("networking.istio.io", "virtualservices", "store", "stock")
    check(store_mesh, "pod-kill-midchain")


def _without_timeouts(vs: KubeObject) -> None:
    for http in vs["spec"]["http"]:
        http.pop("timeout", None)
        http.pop("retries", None)


def test_the_safety_control_interrupts_the_run_before_the_method(
        store_mesh: ServedApi) -> None:
    """Wired where chaoslib stops a run: before_experiment_control raises InterruptExecution
    with the preflight's message, so no activity of the method (the chaos) ever runs."""
    doc = experiment("timeout-cascade")
    config = configuration(store_mesh, doc, target_service="stok", target_caller="stock")
    safety_control.configure_control(configuration=config, experiment=doc)
    try:
        with pytest.raises(InterruptExecution) as interrupted:
            safety_control.before_experiment_control(context=doc, configuration=config)
    finally:
        safety_control.cleanup_control()
    assert str(interrupted.value).startswith(
        "refusing to start: configuration 'target_service' names service 'stok'")
    assert store_mesh.store.list("chaos-mesh.org", "networkchaos") == []
