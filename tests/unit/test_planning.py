"""The planner's static audit and edge choice (probes/planning.py) on hand-built objects.

Each rule is checked with the clause of docs/fidelity.md it rests on, and with a twin
where it must not fire. The Istio objects are dicts as the Kubernetes API returns them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoslib.experiment import ensure_experiment_is_valid

from probes.errors import ConfigurationError
from probes.evidence.request import CallTree
from probes.planning import (
    ANY,
    INGRESS,
    Edge,
    Finding,
    audit,
    choose_edges,
    entry_path_of,
    make_plan,
    plan_experiments,
    render_experiment,
    routes_of,
)

ROOT = Path(__file__).resolve().parents[2]
NS = "shop"


def vs(host: str, *, timeout: str | None = None, retries: dict[str, Any] | None = None,
       name: str | None = None, subset: str = "", gateways: list[str] | None = None,
       match: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    http: dict[str, Any] = {"route": [{"destination": {"host": host,
                                                       **({"subset": subset} if subset else {})}}]}
    if timeout is not None:
        http["timeout"] = timeout
    if retries is not None:
        http["retries"] = retries
    if match is not None:
        http["match"] = match
    spec: dict[str, Any] = {"hosts": ["*" if gateways else host], "http": [http]}
    if gateways:
        spec["gateways"] = gateways
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name or host, "namespace": NS}, "spec": spec}


def svc(name: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}}}


def dr(host: str, *subsets: str) -> dict[str, Any]:
    return {"kind": "DestinationRule", "metadata": {"name": host, "namespace": NS},
            "spec": {"host": host, "subsets": [{"name": s, "labels": {"version": s}}
                                               for s in subsets]}}


CHAIN = CallTree("frontend", {"frontend": ("orders",), "orders": ("inventory", "ratings"),
                              "inventory": ("pricing",)})
INGRESS_VS = vs("frontend", timeout="3s", name="frontend-ingress", gateways=["shop-gateway"],
                match=[{"uri": {"prefix": "/"}}])


def findings(virtual_services: list[dict[str, Any]], tree: CallTree | None = CHAIN,
             rules: list[dict[str, Any]] | None = None, services: tuple[str, ...] = (
                 "frontend", "orders", "inventory", "pricing", "ratings")) -> list[Finding]:
    edges = choose_edges(services, routes_of(virtual_services, NS), tree)
    return audit(edges, rules or (), namespace=NS)


def of_rule(found: list[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == rule]


def consistent_chain(**override: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference chain's routes (fixtures/k8s/20-traffic.yaml), one of them replaced."""
    routes = {
        "orders": vs("orders", timeout="2s", retries={"attempts": 1, "perTryTimeout": "900ms",
                                                      "retryOn": "5xx,reset"}),
        "inventory": vs("inventory", timeout="1s",
                        retries={"attempts": 1, "perTryTimeout": "400ms", "retryOn": "5xx"}),
        "ratings": vs("ratings", timeout="500ms",
                      retries={"attempts": 1, "perTryTimeout": "200ms", "retryOn": "5xx"}),
        "pricing": vs("pricing", timeout="300ms", retries={"attempts": 0}),
    }
    routes.update(override)
    return [INGRESS_VS, *routes.values()]


# -- timeout-inversion ----------------------------------------------------------------------

def test_a_callee_route_longer_than_its_callers_is_an_inversion_naming_both_objects() -> None:
    """§2.1: the VirtualService acts in the caller's sidecar, "a callee's timeout must be
    shorter than its caller's"; inventory's try lasts 400 ms, pricing's route 2 s."""
    found = of_rule(findings(consistent_chain(pricing=vs("pricing", timeout="2s"))),
                    "timeout-inversion")
    assert len(found) == 1
    finding = found[0]
    assert finding.edge == "inventory -> pricing"
    assert finding.objects == ("VirtualService 'pricing' (shop)",
                               "VirtualService 'inventory' (shop)")
    assert finding.values == {"callee_bound": "2s", "caller_deadline": "400ms"}
    assert "route to pricing waits up to 2s" in finding.message
    assert "its caller inventory's deadline per try 400ms" in finding.message
    assert "perTryTimeout 400ms" in finding.message and "§2.1" in finding.message


def test_the_reference_chains_shrinking_routes_have_no_inversion() -> None:
    """The twin: every callee's bound is below its caller's try (fixtures/k8s budget)."""
    assert findings(consistent_chain()) == []


def test_the_callers_deadline_is_its_route_timeout_when_it_sets_no_per_try() -> None:
    """§1.1: without a per-try timeout the route timeout is the try's deadline; pricing's
    800 ms route under inventory's 800 ms timeout is not shorter."""
    chain = consistent_chain(inventory=vs("inventory", timeout="800ms"),
                             pricing=vs("pricing", timeout="800ms"))
    found = of_rule(findings(chain), "timeout-inversion")
    assert [(f.edge, f.values) for f in found] == [
        ("inventory -> pricing", {"callee_bound": "800ms", "caller_deadline": "800ms"})]
    assert "route timeout 800ms" in found[0].message
    twin = consistent_chain(inventory=vs("inventory", timeout="800ms"),
                            pricing=vs("pricing", timeout="799ms"))
    assert of_rule(findings(twin), "timeout-inversion") == []


def test_a_callee_bounded_by_its_tries_fits_under_a_shorter_caller_try() -> None:
    """§1.2 "the route timeout bounds the tries" — and the tries bound the route: inventory's
    timeout 1s exceeds orders' 900 ms try, but its 2 tries x 400 ms end at 800 ms."""
    chain = consistent_chain(inventory=vs("inventory", timeout="1s", retries={
        "attempts": 1, "perTryTimeout": "400ms", "retryOn": "5xx"}))
    assert of_rule(findings(chain), "timeout-inversion") == []
    longer = consistent_chain(inventory=vs("inventory", timeout="1s", retries={
        "attempts": 1, "perTryTimeout": "450ms", "retryOn": "5xx"}))
    found = of_rule(findings(longer), "timeout-inversion")
    assert [f.values for f in found] == [{"callee_bound": "900ms", "caller_deadline": "900ms"}]


def test_a_per_try_timeout_not_shorter_than_the_route_timeout_is_dropped() -> None:
    """§1.2 "source and cap": perTryTimeout >= timeout is dropped, so inventory's try
    deadline is its route timeout 800 ms, which pricing's 850 ms outlives; read as the
    1.5 s per-try value it would have passed."""
    chain = consistent_chain(inventory=vs("inventory", timeout="800ms", retries={
        "attempts": 1, "perTryTimeout": "1500ms", "retryOn": "5xx"}),
        pricing=vs("pricing", timeout="850ms"))
    found = of_rule(findings(chain), "timeout-inversion")
    assert [(f.edge, f.values["caller_deadline"]) for f in found] == [
        ("inventory -> pricing", "800ms")]


def test_without_an_observed_caller_no_inversion_is_judged() -> None:
    """A VirtualService does not name its caller (§2.1): '* -> pricing' has none to compare."""
    found = findings(consistent_chain(pricing=vs("pricing", timeout="2s")), tree=None)
    assert of_rule(found, "timeout-inversion") == []


# -- retries-exceed-timeout -----------------------------------------------------------------

def test_tries_times_per_try_beyond_the_route_timeout_are_reported_with_their_values() -> None:
    """§1.2: the route timeout bounds every try; §2.2: attempts is num_retries, 1 + attempts
    tries. 4 tries x 500 ms = 2 s cannot fit 1 s."""
    chain = consistent_chain(pricing=vs("pricing", timeout="1s", retries={
        "attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx"}))
    found = of_rule(findings(chain), "retries-exceed-timeout")
    assert len(found) == 1
    assert found[0].message.startswith(
        "VirtualService 'pricing' (shop): retries.attempts 3 (4 tries) x perTryTimeout 500ms "
        "= 2s exceeds the route timeout 1s")
    assert found[0].values == {"attempts": "3", "perTryTimeout": "500ms", "timeout": "1s"}
    assert found[0].edge == "inventory -> pricing" and "§1.2" in found[0].message


def test_tries_that_fit_the_route_timeout_and_istios_default_retries_are_not_reported() -> None:
    """Twins: 2 x 400 ms in 1 s fits; no `retries` block is Istio's default policy with no
    per-try timeout (§2.2), which the route timeout alone bounds."""
    chain = consistent_chain(pricing=vs("pricing", timeout="300ms"))
    found = findings(chain)
    assert of_rule(found, "retries-exceed-timeout") == []
    assert found == []


# -- no-timeout -----------------------------------------------------------------------------

def test_an_edge_without_a_virtual_service_has_no_timeout() -> None:
    """§2.1: Istio gives a sidecar route no timeout unless a VirtualService sets one."""
    chain = [v for v in consistent_chain() if v["metadata"]["name"] != "ratings"]
    found = of_rule(findings(chain), "no-timeout")
    assert [f.edge for f in found] == ["orders -> ratings"]
    assert found[0].message.startswith(
        "no timeout on edge orders -> ratings (no VirtualService routes ratings: Istio's "
        "default is none, docs/fidelity.md §2.1")
    assert found[0].objects == ()


def test_a_virtual_service_with_retries_but_no_timeout_is_named() -> None:
    """§2.2: attempts alone add no per-try timeout: nothing bounds the edge."""
    chain = consistent_chain(ratings=vs("ratings", retries={"attempts": 2,
                                                            "retryOn": "5xx"}))
    found = of_rule(findings(chain), "no-timeout")
    assert [f.objects for f in found] == [("VirtualService 'ratings' (shop)",)]
    assert "sets neither timeout nor retries.perTryTimeout" in found[0].message


def test_a_per_try_timeout_alone_bounds_the_edge() -> None:
    """Twin (§1.2): with no route timeout, 2 tries x 200 ms still end the wait."""
    chain = consistent_chain(ratings=vs("ratings", retries={
        "attempts": 1, "perTryTimeout": "200ms", "retryOn": "5xx"}))
    assert of_rule(findings(chain), "no-timeout") == []


def test_a_gateway_route_does_not_time_a_sidecar_call() -> None:
    """§2.1: a VirtualService bound only to a Gateway acts at the ingress, not in the
    callers' sidecars: orders -> frontend would have no timeout."""
    tree = CallTree("frontend", {"frontend": ("orders",), "orders": ("frontend",)})
    found = of_rule(findings(consistent_chain(), tree=tree), "no-timeout")
    assert [f.edge for f in found] == ["orders -> frontend"]


# -- per-try-not-retried --------------------------------------------------------------------

def test_a_per_try_timeout_without_a_reset_condition_is_never_retried() -> None:
    """§1.2 "which retry_on retries it": a per-try timeout is a reset, retried only under
    5xx, gateway-error or reset; connect-failure does not."""
    chain = consistent_chain(ratings=vs("ratings", timeout="500ms", retries={
        "attempts": 1, "perTryTimeout": "200ms", "retryOn": "connect-failure"}))
    found = of_rule(findings(chain), "per-try-not-retried")
    assert len(found) == 1
    assert "perTryTimeout 200ms is never retried with retryOn 'connect-failure'" in \
        found[0].message


def test_istios_default_retry_on_does_not_retry_a_per_try_timeout() -> None:
    """§2.2: an unset retryOn is connect-failure,refused-stream,unavailable,cancelled,
    retriable-status-codes, none of which retries a per-try timeout (§1.2)."""
    chain = consistent_chain(ratings=vs("ratings", timeout="500ms", retries={
        "attempts": 1, "perTryTimeout": "200ms"}))
    found = of_rule(findings(chain), "per-try-not-retried")
    assert len(found) == 1 and "(Istio's default, §2.2)" in found[0].message
    assert found[0].values["retryOn"] == ("connect-failure,refused-stream,unavailable,"
                                          "cancelled,retriable-status-codes")


def test_a_per_try_timeout_under_5xx_or_without_retries_is_not_reported() -> None:
    """Twins: 5xx retries it (§1.2); attempts 0 has no retries to miss (§2.2)."""
    retried = consistent_chain(ratings=vs("ratings", timeout="500ms", retries={
        "attempts": 1, "perTryTimeout": "200ms", "retryOn": "5xx"}))
    none = consistent_chain(ratings=vs("ratings", timeout="500ms", retries={
        "attempts": 0, "perTryTimeout": "200ms"}))
    assert of_rule(findings(retried) + findings(none), "per-try-not-retried") == []


# -- subset-undefined -----------------------------------------------------------------------

def test_a_subset_no_destination_rule_defines_is_reported() -> None:
    """§2.2 subsets: the destination subset must exist for the host's endpoints."""
    chain = consistent_chain(pricing=vs("pricing", timeout="300ms", subset="v2"))
    found = of_rule(findings(chain, rules=[dr("pricing", "v1")]), "subset-undefined")
    assert len(found) == 1
    assert found[0].objects == ("VirtualService 'pricing' (shop)",
                                "DestinationRule 'pricing' (shop)")
    assert "subset 'v2' of pricing, but DestinationRule 'pricing' defines v1" in \
        found[0].message
    alone = of_rule(findings(chain), "subset-undefined")
    assert "no DestinationRule has host pricing" in alone[0].message


def test_a_defined_subset_is_not_reported() -> None:
    chain = consistent_chain(pricing=vs("pricing", timeout="300ms", subset="v1"))
    rules = [dr("pricing.shop.svc.cluster.local", "v1")]
    assert of_rule(findings(chain, rules=rules), "subset-undefined") == []


# -- edges ----------------------------------------------------------------------------------

def test_an_observed_call_tree_gives_the_ingress_edge_and_every_observed_call() -> None:
    edges = choose_edges(("frontend", "orders", "inventory", "pricing", "ratings", "unused"),
                         routes_of(consistent_chain(), NS), CHAIN)
    assert [(e.name, e.route.virtual_service if e.route else None) for e in edges] == [
        ("ingress -> frontend", "frontend-ingress"), ("frontend -> orders", "orders"),
        ("orders -> inventory", "inventory"), ("orders -> ratings", "ratings"),
        ("inventory -> pricing", "pricing")]
    assert all(e.observed for e in edges)


def test_without_a_call_tree_each_service_is_an_edge_from_any_caller() -> None:
    """The entry, which only the ingress routes, is 'ingress -> frontend', not '* -> frontend';
    a Service with no route at all is '* -> unused' and has no timeout."""
    services = ("frontend", "inventory", "orders", "pricing", "ratings", "unused")
    edges = choose_edges(services, routes_of(consistent_chain(), NS), None)
    assert [e.name for e in edges] == [
        "ingress -> frontend", "* -> inventory", "* -> orders", "* -> pricing",
        "* -> ratings", "* -> unused"]
    assert {e.caller for e in edges} == {INGRESS, ANY}
    found = audit(edges, namespace=NS)
    assert [(f.rule, f.edge) for f in found] == [("no-timeout", "* -> unused")]


def test_hosts_are_short_names_and_other_namespaces_are_left_out() -> None:
    routes = routes_of([vs("pricing.shop.svc.cluster.local", timeout="1s"),
                        vs("ledger.billing.svc.cluster.local", timeout="1s", name="ledger")], NS)
    assert [r.host for r in routes] == ["pricing"]


def test_the_entry_path_is_the_ingress_routes_exact_or_prefix_match() -> None:
    store = vs("gateway", timeout="1500ms", gateways=["g"], match=[{"uri": {"prefix": "/api/"}}])
    regex = vs("gateway", timeout="1s", gateways=["g"], match=[{"uri": {"regex": "/a.*"}}])
    assert entry_path_of(routes_of([vs("gateway", timeout="1s"), store], NS)) == "/api/"
    assert entry_path_of(routes_of([regex], NS)) is None


# -- the fixtures' real manifests -----------------------------------------------------------

def manifests(folder: str) -> dict[str, list[dict[str, Any]]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / folder).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return {kind: [d for d in docs if d.get("kind") == kind]
            for kind in ("Service", "VirtualService", "DestinationRule")}


STORE = CallTree("gateway", {"gateway": ("catalog",), "catalog": ("stock", "reviews"),
                             "stock": ("warehouse",)})


def test_the_reference_chain_audits_clean() -> None:
    """fixtures/k8s/20-traffic.yaml is built as a budget without inversions (its table)."""
    objects = manifests("fixtures/k8s")
    plan = make_plan("shop", objects["Service"], objects["VirtualService"],
                     objects["DestinationRule"], observed=CHAIN)
    assert plan.findings == () and plan.entry_path == "/"


def test_the_store_chains_backstop_routes_are_four_inversions() -> None:
    """fixtures/store/k8s/20-traffic.yaml: "the inner routes are deliberately longer than
    the edge": each inner route outlives its caller's try; with the honour-app-headers
    switch the finding says a propagated budget can bind first (§1.4)."""
    objects = manifests("fixtures/store/k8s")
    plan = make_plan("store", objects["Service"], objects["VirtualService"],
                     objects["DestinationRule"], observed=STORE, honor_app_headers=True)
    assert [(f.rule, f.edge, f.values["callee_bound"], f.values["caller_deadline"])
            for f in plan.findings] == [
        ("timeout-inversion", "gateway -> catalog", "4s", "1.5s"),
        ("timeout-inversion", "catalog -> stock", "3.6s", "2s"),
        ("timeout-inversion", "catalog -> reviews", "3s", "2s"),
        ("timeout-inversion", "stock -> warehouse", "3s", "1.8s")]
    assert all("x-envoy-upstream-rq-timeout-ms" in f.message for f in plan.findings)
    assert "the timeout-cascade experiments on the leaves below it (reviews, warehouse) " \
        "test whether it does" in plan.findings[0].message
    assert "the timeout-cascade experiment of this edge tests" in plan.findings[3].message
    assert {p.file_name for p in plan.experiments if p.template == "timeout-cascade"} == {
        "timeout-cascade--catalog-to-reviews.json", "timeout-cascade--stock-to-warehouse.json"}
    assert plan.entry_path == "/api/"


def test_a_namespace_without_services_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="namespace 'empty' has no Service"):
        make_plan("empty", [], [vs("pricing", timeout="1s")])


# -- experiments ----------------------------------------------------------------------------

def planned_reference() -> list[tuple[str, str, dict[str, str]]]:
    edges = choose_edges(("frontend", "orders", "inventory", "pricing", "ratings"),
                         routes_of(consistent_chain(), NS), CHAIN)
    return [(p.template, p.edge.name, {k: v for k, v in p.keys.items() if v})
            for p in plan_experiments(edges)]


def test_each_edge_gets_the_templates_that_fit_it() -> None:
    """Timeout cascades on every timed edge to a leaf (the delay holds the target's egress,
    §5.2: on a mid hop it would hold its own calls), a pod kill per mid hop, the side leaf
    ratings (beside the deeper inventory) fails whole, the main leaf pricing is cut off."""
    assert planned_reference() == [
        ("pod-kill-midchain", "frontend -> orders", {"target_service": "orders"}),
        ("pod-kill-midchain", "orders -> inventory", {"target_service": "inventory"}),
        ("timeout-cascade", "orders -> ratings",
         {"target_service": "ratings", "target_caller": "orders"}),
        ("sidecar-failure", "orders -> ratings", {"side_service": "ratings"}),
        ("timeout-cascade", "inventory -> pricing",
         {"target_service": "pricing", "target_caller": "inventory"}),
        ("partition-leaf", "inventory -> pricing",
         {"target_service": "inventory", "partition_peer": "pricing"}),
    ]


def test_an_edge_without_a_timeout_gets_no_timeout_cascade() -> None:
    """A timeout experiment needs a route timeout to exceed (preflight refuses it, §2.1)."""
    chain = [v for v in consistent_chain() if v["metadata"]["name"] != "pricing"]
    edges = choose_edges(("frontend", "orders", "inventory", "pricing", "ratings"),
                         routes_of(chain, NS), CHAIN)
    templates = {(p.template, p.edge.name) for p in plan_experiments(edges)}
    assert ("timeout-cascade", "inventory -> pricing") not in templates
    assert ("partition-leaf", "inventory -> pricing") in templates


def load_template(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "experiments" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def test_a_rendered_experiment_changes_only_configuration_defaults_title_and_description(
        ) -> None:
    edges = choose_edges(("frontend", "orders", "inventory", "pricing", "ratings"),
                         routes_of(consistent_chain(), NS), CHAIN)
    planned = next(p for p in plan_experiments(edges) if p.template == "partition-leaf")
    template = load_template("partition-leaf")
    doc = render_experiment(template, planned, namespace="shop", defaults={
        "entry_path": "/x", "meshchaos_manifests": "fixtures/k8s", "not_a_key": "v"})
    assert {k for k in template if template[k] != doc[k]} == {
        "title", "description", "configuration"}
    changed = {k: doc["configuration"][k]["default"] for k in template["configuration"]
               if template["configuration"][k] != doc["configuration"][k]}
    assert changed == {"entry_path": "/x"}  # inventory/pricing are the template's own
    assert "not_a_key" not in doc["configuration"]
    assert "[inventory -> pricing in shop]" in doc["title"]
    assert "Defaults aim at edge inventory -> pricing of namespace shop" in doc["description"]
    assert "reference chain" not in doc["description"]
    ensure_experiment_is_valid(doc)


def test_unused_service_keys_are_cleared_and_used_ones_set() -> None:
    edge = Edge("catalog", "reviews", None, True)
    planned = plan_experiments([Edge(INGRESS, "gateway", None, True),
                                Edge("gateway", "catalog", None, True),
                                Edge("catalog", "stock", None, True),
                                Edge("stock", "warehouse", None, True), edge])
    side = next(p for p in planned if p.template == "sidecar-failure")
    doc = render_experiment(load_template("sidecar-failure"), side, namespace="store",
                            defaults={})
    defaults = {k: doc["configuration"][k]["default"] for k in (
        "namespace", "target_service", "target_caller", "partition_peer", "side_service")}
    assert defaults == {"namespace": "store", "target_service": "", "target_caller": "",
                        "partition_peer": "", "side_service": "reviews"}
    assert side.file_name == "sidecar-failure--catalog-to-reviews.json"
