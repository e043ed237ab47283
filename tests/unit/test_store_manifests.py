"""The store chain's Kubernetes + Istio manifests (fixtures/store/k8s): they parse, validate like
an API server would (the CRD schemas of localmesh/schemas), wire the documented topology, and
form the budget of 20-traffic.yaml's table, where the apps' deadline, not a route, binds."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from localmesh.manifests import load_manifests
from localmesh.validation import parse_go_duration, validate_object
from tests.unit.test_k8s_manifests import (
    CRD_FILES,
    crd_schema,
    kubernetes_documents,
    load_objects,
    unknown_fields,
    validator,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "fixtures" / "store" / "k8s"
REFERENCE = ROOT / "fixtures" / "k8s"
HOPS = ("gateway", "catalog", "stock", "warehouse", "reviews")
FORWARDERS = ("gateway", "catalog", "stock")
CALLS = {"gateway": {"CATALOG_URL": "catalog"},
         "catalog": {"STOCK_URL": "stock", "REVIEWS_URL": "reviews"},
         "stock": {"WAREHOUSE_URL": "warehouse"}, "warehouse": {}, "reviews": {}}
EDGE_BUDGET_MS = 1500.0
Obj = dict[str, Any]


OBJECTS = load_objects(MANIFESTS)


def by_name(kind: str, name: str, objects: list[Obj] = OBJECTS) -> Obj:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def label(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


def container(name: str) -> Obj:
    (app,) = by_name("Deployment", name)["spec"]["template"]["spec"]["containers"]
    return dict(app)


def env(name: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(name)["env"]}


# -- parsing and validation -----------------------------------------------------------

@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*")), ids=lambda p: p.name)
def test_every_file_is_yaml_of_kubernetes_objects(path: Path) -> None:
    """kubectl apply -f fixtures/store/k8s/ reads every file: apiVersion, kind, metadata.name,
    and a namespace unless the object is cluster-scoped."""
    for doc in kubernetes_documents(path):
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace")


def test_the_folder_loads_the_way_meshchaos_up_loads_it() -> None:
    """load_manifests validates every object (localmesh.validation: CRD schemas, CEL
    durations, DNS-1123 names, selectors matching template labels, Service ports)."""
    manifests = load_manifests([MANIFESTS])
    assert [m.obj for m in manifests] == OBJECTS
    for obj in OBJECTS:
        validate_object(obj)


ISTIO_WITH_SCHEMA = [o for o in OBJECTS if (o["apiVersion"].split("/")[0], o["kind"]) in CRD_FILES]


@pytest.mark.parametrize("obj", ISTIO_WITH_SCHEMA, ids=label)
def test_istio_objects_validate_against_the_crd_schema(obj: Obj) -> None:
    """IA-CRD: the served version's openAPIV3Schema, no field a structural schema would prune
    (kubectl --validate=strict), and the CEL rule duration >= 1ms."""
    group, version = obj["apiVersion"].split("/")
    schema = crd_schema(group, obj["kind"], version)
    validator(group, obj["kind"], version).validate({"spec": obj["spec"]})
    assert list(unknown_fields(obj["spec"], schema["properties"]["spec"], "spec")) == []


def test_every_istio_route_and_rule_was_schema_checked() -> None:
    """The parametrization above is not vacuous: 5 VirtualServices, 5 DestinationRules."""
    kinds = sorted(o["kind"] for o in ISTIO_WITH_SCHEMA)
    assert kinds == ["DestinationRule"] * 5 + ["VirtualService"] * 5


# -- namespace, mesh config, ingress ----------------------------------------------------

def test_namespace_store_has_sidecar_injection_enabled() -> None:
    assert by_name("Namespace", "store")["metadata"]["labels"] == {"istio-injection": "enabled"}
    assert {o["metadata"].get("namespace") for o in OBJECTS if o["kind"] != "Namespace"} == {
        "store", "istio-system"}


def test_mesh_config_and_telemetry_are_the_reference_chains() -> None:
    """The probes read both chains' sidecars alike: the same ConfigMap (honour-app-headers
    annotation, extended access-log format, 100% sampling) and the same Telemetry."""
    reference = load_objects(REFERENCE)
    for kind, name in (("ConfigMap", "istio"), ("Telemetry", "mesh-default")):
        ours, theirs = by_name(kind, name), by_name(kind, name, reference)
        assert ours == theirs
    annotations = by_name("ConfigMap", "istio")["metadata"]["annotations"]
    assert annotations["meshchaos.io/honor-app-envoy-headers"] == "true"


def test_the_ingress_routes_only_api_paths_to_gateway_with_the_edge_budget() -> None:
    """A Gateway on the ingress gateway's port 80 and one route: prefix /api/ → gateway v1,
    1500ms, no retries at the edge; any other path gets no route (404 NR)."""
    gateway = by_name("Gateway", "store-gateway")
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}
    (server,) = gateway["spec"]["servers"]
    assert server["port"] == {"number": 80, "name": "http", "protocol": "HTTP"}
    ingress = by_name("VirtualService", "gateway-ingress")
    assert ingress["spec"]["gateways"] == ["store-gateway"]
    (route,) = ingress["spec"]["http"]
    assert route["match"] == [{"uri": {"prefix": "/api/"}}]
    assert route["route"] == [{"destination": {"host": "gateway", "subset": "v1",
                                               "port": {"number": 8080}}}]
    assert ms(route["timeout"]) == EDGE_BUDGET_MS and route["retries"] == {"attempts": 0}


# -- the hops ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOPS)
def test_each_hop_has_a_service_on_port_8080_named_http(name: str) -> None:
    svc = by_name("Service", name)
    assert svc["spec"]["selector"] == {"app": name}
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize("name", HOPS)
def test_each_hop_runs_the_same_command_locally_and_on_a_cluster(name: str) -> None:
    """The local-command annotation (run from the repository root) names a file that exists
    and is the container's command, so both targets run the same program."""
    template = by_name("Deployment", name)["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": name, "version": "v1",
                                              "sidecar.istio.io/inject": "true"}
    annotations = template["metadata"]["annotations"]
    assert (MANIFESTS / annotations["meshchaos.io/local-cwd"]).resolve() == ROOT
    argv = shlex.split(annotations["meshchaos.io/local-command"])
    assert container(name)["command"] == argv
    if argv[0] == "node":
        assert (ROOT / argv[1]).is_file() and argv[1] == f"fixtures/store/{name}.js"
    else:
        assert argv[:2] == ["python", "-m"] and argv[2] == f"fixtures.store.{name}"
        assert (ROOT / (argv[2].replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize("name", HOPS)
def test_each_hop_is_ready_on_healthz_and_starts_correct(name: str) -> None:
    app = container(name)
    assert app["ports"][0]["containerPort"] == 8080
    assert app["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert all(set(e) == {"name", "value"} and isinstance(e["value"], str) for e in app["env"])
    assert env(name)["STORE_DEFECT"] == "none" and env(name)["PORT"] == "8080"


def test_the_two_stacks_are_node_at_the_edge_and_the_leaf_python_between() -> None:
    """One hop not in Python is the point: the headers and the budget cross languages."""
    stacks = {name: container(name)["command"][0] for name in HOPS}
    assert stacks == {"gateway": "node", "catalog": "python", "stock": "python",
                      "warehouse": "node", "reviews": "python"}


def test_forwarders_work_long_enough_before_calling_for_a_stale_budget_to_show() -> None:
    """A stale budget is stale by the time spent before the call: at least 20ms, well above
    the sidecars' own few ms, so the deadline probes can tell it from noise."""
    assert {name: float(env(name)["WORK_MS"]) >= 20 for name in FORWARDERS} == dict.fromkeys(
        FORWARDERS, True)


def test_the_hops_call_the_documented_topology() -> None:
    """ingress → gateway → catalog → (stock → warehouse ‖ reviews): each callee URL names a
    Service of the chain on its port."""
    for name, calls in CALLS.items():
        urls = {k: v for k, v in env(name).items() if k.endswith("_URL")}
        assert urls == {key: f"http://{callee}:8080" for key, callee in calls.items()}


# -- routes and the budget --------------------------------------------------------------

def ms(duration: str | None) -> float:
    return math.inf if duration is None else parse_go_duration(duration) / 1e6


def mesh_route(host: str) -> Obj:
    vs = by_name("VirtualService", host)
    assert vs["spec"]["hosts"] == [host] and not vs["spec"].get("gateways")
    (route,) = vs["spec"]["http"]
    assert route["route"][0]["destination"]["host"] == host
    return dict(route)


def table_rows() -> dict[str, tuple[float, int, float]]:
    """The budget table in 20-traffic.yaml's comment: route → (timeout, tries, per try)."""
    rows: dict[str, tuple[float, int, float]] = {}
    pattern = re.compile(r"^#\s+(\w+) -> (\w+)\s+(\S+)\s+(?:(\d) x (\S+)|1 \(no retry\))")
    for line in (MANIFESTS / "20-traffic.yaml").read_text().splitlines():
        if match := pattern.match(line):
            _, callee, timeout, tries, per_try = match.groups()
            rows[callee] = (ms(timeout), int(tries or 1), ms(per_try) if per_try else ms(timeout))
    return rows


def test_the_budget_table_in_the_manifest_is_what_the_routes_say() -> None:
    routes = {host: mesh_route(host) for host in ("catalog", "stock", "reviews", "warehouse")}
    said = {host: (ms(r["timeout"]), 1 + r["retries"]["attempts"],
                   ms(r["retries"]["perTryTimeout"])) for host, r in routes.items()}
    edge = by_name("VirtualService", "gateway-ingress")["spec"]["http"][0]
    said["gateway"] = (ms(edge["timeout"]), 1, ms(edge["timeout"]))
    assert table_rows() == said


@pytest.mark.parametrize("host", ["catalog", "stock", "reviews", "warehouse"])
def test_inner_routes_never_undercut_a_budget_an_app_sends(host: str) -> None:
    """fidelity §1.2/§1.4: an app's x-envoy-upstream-rq-timeout-ms replaces the route
    timeout, and a per-try timeout >= that is ignored. With every inner per-try timeout at
    least the edge budget, the app's value is the only timer, so a stale or shrinking budget
    is what the next hop sees. All tries (plus the 25ms back-off) fit the route's backstop."""
    route = mesh_route(host)
    timeout, per_try = ms(route["timeout"]), ms(route["retries"]["perTryTimeout"])
    tries = 1 + route["retries"]["attempts"]
    assert per_try >= EDGE_BUDGET_MS
    assert tries * per_try + 25 * (tries - 1) <= timeout
    assert route["retries"]["retryOn"] == "connect-failure,refused-stream,reset,503"


@pytest.mark.parametrize("name", HOPS)
def test_destination_rules_define_subset_v1_and_a_connect_timeout(name: str) -> None:
    """Every route targets subset v1, which its DestinationRule must define (else 503 NR)."""
    dr = by_name("DestinationRule", name)
    assert dr["spec"]["host"] == name
    assert dr["spec"]["subsets"] == [{"name": "v1", "labels": {"version": "v1"}}]
    assert ms(dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["connectTimeout"]) > 0
