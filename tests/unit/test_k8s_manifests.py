"""The chain's Kubernetes + Istio manifests (fixtures/k8s): they parse, validate like an API
server would, configure every hop, and form a timeout budget without inversions."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fixtures.chain.config import parse_calls, parse_work
from localmesh.validation import parse_go_duration, validate_object
from probes.evidence.formats import MESHCHAOS_TEXT

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "fixtures" / "k8s"
SCHEMAS = ROOT / "localmesh" / "schemas"
CRD_FILES = {
    ("networking.istio.io", "VirtualService"): "networking.istio.io_virtualservices.yaml",
    ("networking.istio.io", "DestinationRule"): "networking.istio.io_destinationrules.yaml",
}
HOPS = {"frontend", "orders", "inventory", "pricing", "ratings"}
GRPC_HOPS = {"pricing"}  # served over gRPC: the chain's gRPC leg (issue 16)
Obj = dict[str, Any]


def load_objects(folder: Path) -> list[Obj]:
    """Every object of a manifests folder's YAML files, in the order kubectl apply -f reads
    them (the store's and the broker's folders are read with this too)."""
    return [doc for path in sorted(folder.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kubernetes_documents(path: Path) -> list[Obj]:
    """One manifests file's documents, each checked for what kubectl apply -f needs of any
    object: apiVersion, kind and metadata.name (which namespace, each folder's test says)."""
    assert path.suffix == ".yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["name"]
    return docs


OBJECTS = load_objects(MANIFESTS)


def of_kind(kind: str, objects: list[Obj] = OBJECTS) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def by_name(kind: str, name: str, objects: list[Obj] = OBJECTS) -> Obj:
    (obj,) = [o for o in of_kind(kind, objects) if o["metadata"]["name"] == name]
    return obj


def label(obj: Obj) -> str:
    return f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


# -- parsing and schemas ----------------------------------------------------------

@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*")), ids=lambda p: p.name)
def test_every_file_is_yaml_of_kubernetes_objects(path: Path) -> None:
    """kubectl apply -f fixtures/k8s/ reads every file: each document needs apiVersion, kind
    and metadata.name (and a namespace unless it is cluster-scoped)."""
    for doc in kubernetes_documents(path):
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace")


@functools.cache
def crd_schema(group: str, kind: str, version: str) -> Obj:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the DestinationRule CRD is 377 kB
    crd = yaml.load((SCHEMAS / CRD_FILES[(group, kind)]).read_text(), Loader=loader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: Obj = served["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(group, kind, version)
    cls = jsonschema.validators.validator_for(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def unknown_fields(value: Any, schema: Obj, path: str) -> Iterator[str]:
    """Fields a structural schema would prune (kubectl --validate=strict refuses them)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


ISTIO_WITH_SCHEMA = [o for o in OBJECTS if (o["apiVersion"].split("/")[0], o["kind"]) in CRD_FILES]


@pytest.mark.parametrize("obj", ISTIO_WITH_SCHEMA, ids=label)
def test_istio_objects_validate_against_the_crd_schema(obj: Obj) -> None:
    """IA-CRD (localmesh/schemas): the object validates against the served version's
    openAPIV3Schema, has no field the structural schema would prune, and passes the CEL
    duration rule duration(self) >= duration('1ms') (via localmesh.validation)."""
    group, version = obj["apiVersion"].split("/")
    schema = crd_schema(group, obj["kind"], version)
    validator(group, obj["kind"], version).validate({"spec": obj["spec"]})
    assert list(unknown_fields(obj["spec"], schema["properties"]["spec"], "spec")) == []
    validate_object(obj)


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type() -> None:
    """The checks above can fail: a typo'd retry field and a string where an int belongs."""
    vs = copy.deepcopy(by_name("VirtualService", "inventory"))
    vs["spec"]["http"][0]["retries"]["perTryTimout"] = "1s"
    schema = crd_schema("networking.istio.io", "VirtualService", "v1")
    assert list(unknown_fields(vs["spec"], schema["properties"]["spec"], "spec")) == [
        "spec.http[0].retries.perTryTimout"]
    vs["spec"]["http"][0]["retries"]["attempts"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validator("networking.istio.io", "VirtualService", "v1").validate({"spec": vs["spec"]})


def test_gateway_selects_the_ingress_gateway_and_serves_http_on_port_80() -> None:
    """networking.istio.io Gateway (no CRD schema in localmesh/schemas, so checked by hand):
    selector + servers[].port{number,name,protocol} + hosts are required by Istio."""
    (gateway,) = of_kind("Gateway")
    spec = gateway["spec"]
    assert spec["selector"] == {"istio": "ingressgateway"}
    (server,) = spec["servers"]
    assert server["port"] == {"number": 80, "name": "http", "protocol": "HTTP"}
    assert server["hosts"] == ["*"]
    ingress = by_name("VirtualService", "frontend-ingress")
    assert ingress["spec"]["gateways"] == [gateway["metadata"]["name"]]
    (route,) = ingress["spec"]["http"][0]["route"]
    assert route["destination"] == {"host": "frontend", "subset": "v1", "port": {"number": 8080}}


def test_every_object_passes_the_local_api_server_validation() -> None:
    """The local mesh admits these objects (localmesh.validation: CRD schemas, CEL durations,
    DNS-1123 names, selectors matching template labels, Service ports)."""
    for obj in OBJECTS:
        validate_object(obj)


# -- core kinds ---------------------------------------------------------------------

def test_namespace_shop_has_sidecar_injection_enabled() -> None:
    """Istio injects sidecars into namespaces labelled istio-injection=enabled."""
    ns = by_name("Namespace", "shop")
    assert ns["metadata"]["labels"] == {"istio-injection": "enabled"}


@pytest.mark.parametrize("name", sorted(HOPS))
def test_each_hop_has_a_service_on_port_8080_named_for_its_protocol(name: str) -> None:
    """Istio protocol selection (docs/fidelity.md §2.5): a Service port named http(-*) is
    HTTP; pricing, the gRPC leg, says grpc by name and by appProtocol."""
    svc = by_name("Service", name)
    assert svc["metadata"]["namespace"] == "shop"
    assert svc["spec"]["selector"] == {"app": name}
    port = {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
    if name in GRPC_HOPS:
        port = {**port, "name": "grpc", "appProtocol": "grpc"}
    assert svc["spec"]["ports"] == [port]


@pytest.mark.parametrize("name", sorted(HOPS))
def test_each_hop_deployment_runs_the_chain_with_a_sidecar_and_readiness(name: str) -> None:
    """architecture.md "Pods as processes": the local-command annotation, labels app/version,
    sidecar injection, the chain image, a readinessProbe on /healthz of the containerPort."""
    deploy = by_name("Deployment", name)
    template = deploy["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels == {"app": name, "version": "v1", "sidecar.istio.io/inject": "true"}
    assert template["metadata"]["annotations"]["meshchaos.io/local-command"] == (
        "python -m fixtures.chain")
    assert (MANIFESTS / template["metadata"]["annotations"]["meshchaos.io/local-cwd"]
            / "fixtures" / "chain" / "__main__.py").is_file()
    (container,) = template["spec"]["containers"]
    assert container["image"] == "meshchaos/chain:0.1.0"
    assert container["ports"][0]["containerPort"] == 8080
    env = {e["name"]: e["value"] for e in container["env"]}
    if name in GRPC_HOPS:  # a gRPC server has no /healthz: ready once it accepts
        assert env["CHAIN_PROTOCOL"] == "grpc"
        assert container["readinessProbe"]["tcpSocket"] == {"port": 8080}
    else:
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert env["OTEL_SERVICE_NAME"] == name and env["CHAIN_DEFECT"] == "none"
    assert all(isinstance(v, str) for v in env.values())  # literal values only


def test_the_hops_form_the_documented_tree() -> None:
    """frontend → orders → (inventory → pricing ‖ ratings): every call names a Service, and
    orders calls inventory and ratings in one parallel stage."""
    calls = {name: [[c.service for c in stage] for stage in parse_calls(env(name, "CHAIN_CALLS"))]
             for name in HOPS}
    assert calls == {"frontend": [["orders"]], "orders": [["inventory", "ratings"]],
                     "inventory": [["pricing"]], "pricing": [], "ratings": []}
    for name in HOPS:
        for stage in parse_calls(env(name, "CHAIN_CALLS")):
            for call in stage:
                if call.service in GRPC_HOPS:
                    assert call.url == f"grpc://{call.service}:8080"
                else:
                    assert call.url == f"http://{call.service}:8080/{call.service}"


def env(name: str, key: str, objects: list[Obj] = OBJECTS) -> str:
    (container,) = by_name("Deployment", name, objects)["spec"]["template"]["spec"]["containers"]
    values = {e["name"]: e["value"] for e in container["env"]}
    return str(values.get(key, ""))


@pytest.mark.parametrize("name", sorted(HOPS))
def test_destination_rules_define_subset_v1_and_a_connect_timeout(name: str) -> None:
    """Every route targets subset v1, which its DestinationRule must define (else 503 NR)."""
    dr = by_name("DestinationRule", name)
    assert dr["spec"]["host"] == name
    assert dr["spec"]["subsets"] == [{"name": "v1", "labels": {"version": "v1"}}]
    assert parse_go_duration(dr["spec"]["trafficPolicy"]["connectionPool"]["tcp"]
                             ["connectTimeout"]) > 0


# -- mesh config ----------------------------------------------------------------------

def mesh_doc() -> Obj:
    cm = by_name("ConfigMap", "istio")
    assert cm["metadata"]["namespace"] == "istio-system"
    doc: Obj = yaml.safe_load(cm["data"]["mesh"])
    return doc


def test_mesh_config_logs_every_request_and_samples_every_trace() -> None:
    """architecture.md "Mesh config": sampling 100, access log to /dev/stdout, an
    OpenTelemetry tracing provider, and the honour-app-headers switch on."""
    mesh = mesh_doc()
    assert mesh["defaultConfig"]["tracing"]["sampling"] == 100
    assert mesh["accessLogFile"] == "/dev/stdout"
    providers = {p["name"]: p for p in mesh["extensionProviders"]}
    assert providers["otel-tracing"]["opentelemetry"]["port"] == 4317
    annotations = by_name("ConfigMap", "istio")["metadata"]["annotations"]
    assert annotations["meshchaos.io/honor-app-envoy-headers"] == "true"


def test_meshchaos_log_provider_uses_exactly_the_extended_format() -> None:
    """architecture.md "Access log": Istio's TEXT format followed by traceparent, expected
    request timeout and attempt count; the probes parse exactly this string."""
    providers = {p["name"]: p for p in mesh_doc()["extensionProviders"]}
    text = providers["meshchaos-log"]["envoyFileAccessLog"]["logFormat"]["text"]
    assert text == MESHCHAOS_TEXT


def test_telemetry_enables_the_log_provider_and_full_tracing_mesh_wide() -> None:
    """Istio Telemetry in the root namespace applies mesh-wide; providers must exist."""
    (telemetry,) = of_kind("Telemetry")
    assert telemetry["apiVersion"] == "telemetry.istio.io/v1"
    assert telemetry["metadata"]["namespace"] == "istio-system"
    spec = telemetry["spec"]
    known = {p["name"] for p in mesh_doc()["extensionProviders"]}
    assert [p["name"] for p in spec["accessLogging"][0]["providers"]] == ["meshchaos-log"]
    (tracing,) = spec["tracing"]
    assert tracing["randomSamplingPercentage"] == 100
    assert {p["name"] for p in tracing["providers"]} <= known


# -- the timeout budget ---------------------------------------------------------------

MARGIN_MS = 20.0  # per hop: sidecars, app overhead, scheduling
BACKOFF_MS = 25.0  # Envoy waits below 2^(N-1) * 25 ms before retry N (fidelity §1.3, the code)


def route_of(host: str, objects: list[Obj], *, gateway: bool = False) -> Obj:
    for vs in of_kind("VirtualService", objects):
        bound = bool(vs["spec"].get("gateways"))
        for http in vs["spec"]["http"]:
            if bound == gateway and http["route"][0]["destination"]["host"] == host:
                route: Obj = http
                return route
    raise AssertionError(f"no {'gateway ' if gateway else ''}route to {host!r}")


def ms(duration: str | None) -> float:
    return math.inf if duration is None else parse_go_duration(duration) / 1e6


def route_budget(route: Obj) -> tuple[float, float, int]:
    """(timeout, the time one try may take, tries) of an Istio HTTP route (sections 1.2, 2.2)."""
    timeout = ms(route.get("timeout"))  # unset: no timeout at all (section 2.1)
    retries = route.get("retries") or {}
    tries = 1 + max(int(retries.get("attempts", 0)), 0)
    per_try = ms(retries.get("perTryTimeout")) if tries > 1 else math.inf
    return timeout, min(per_try, timeout), tries  # a per-try timeout >= timeout is ignored


def route_worst_ms(route: Obj) -> float:
    timeout, try_ms, tries = route_budget(route)
    backoffs = sum((1 << (n - 1)) * BACKOFF_MS for n in range(1, tries))
    return min(timeout, tries * try_ms + backoffs)


def work_max_ms(value: str) -> float:
    spec = parse_work(value)
    worst: dict[str, float] = {"fixed": spec.a, "uniform": spec.b, "exp": 5 * spec.a}  # exp ~p99
    return worst[spec.kind]


def hop_worst_ms(name: str, objects: list[Obj]) -> float:
    total = work_max_ms(env(name, "CHAIN_WORK_BEFORE", objects) or "0")
    total += work_max_ms(env(name, "CHAIN_WORK_AFTER", objects) or "0")
    for stage in parse_calls(env(name, "CHAIN_CALLS", objects)):
        total += max(route_worst_ms(route_of(c.service, objects)) for c in stage)
    return total


def budget_violations(objects: list[Obj]) -> list[str]:
    """Every route whose callee can outlast one try of it (a timeout inversion), whose tries do
    not fit in its own timeout, or that has no timeout at all."""
    routes = [("ingress", "frontend", route_of("frontend", objects, gateway=True))]
    for caller in sorted(HOPS):
        for stage in parse_calls(env(caller, "CHAIN_CALLS", objects)):
            routes += [(caller, c.service, route_of(c.service, objects)) for c in stage]
    problems = []
    for caller, callee, route in routes:
        timeout, try_ms, tries = route_budget(route)
        inner = hop_worst_ms(callee, objects) + MARGIN_MS
        if math.isinf(timeout):
            problems.append(f"{caller} -> {callee}: no timeout")
        if inner > try_ms:
            problems.append(f"{caller} -> {callee}: callee may take {inner:g}ms "
                            f"(incl. {MARGIN_MS:g}ms margin) but a try gets {try_ms:g}ms")
        backoffs = sum((1 << (n - 1)) * BACKOFF_MS for n in range(1, tries))
        if tries > 1 and tries * try_ms + backoffs > timeout:
            problems.append(f"{caller} -> {callee}: {tries} tries x {try_ms:g}ms + "
                            f"{backoffs:g}ms back-off exceed the {timeout:g}ms timeout")
    return problems


def test_the_chain_timeouts_form_a_budget_without_inversions() -> None:
    """fidelity §1.1/§1.2: the global timeout includes all retries and a try is cut at
    perTryTimeout, so each callee's worst case (its routes + work + margin) must fit in one try
    of the route calling it, and all tries in that route's timeout."""
    assert budget_violations(OBJECTS) == []


def test_route_worst_cases_match_the_table_in_the_manifest() -> None:
    """The budget table in 20-traffic.yaml is what the routes really say."""
    worst = {h: route_worst_ms(route_of(h, OBJECTS)) for h in HOPS - {"frontend"}}
    assert worst == {"pricing": 300, "ratings": 425, "inventory": 825, "orders": 1825}
    assert route_worst_ms(route_of("frontend", OBJECTS, gateway=True)) == 3000


def set_route(objects: list[Obj], host: str, **changes: Any) -> list[Obj]:
    inverted = copy.deepcopy(objects)
    route = route_of(host, inverted)
    for key, value in changes.items():
        if key == "perTryTimeout":
            route["retries"][key] = value
        else:
            route[key] = value
    return inverted


def test_budget_check_catches_an_inner_timeout_longer_than_its_callers_try() -> None:
    """A deliberately inverted copy: inventory → pricing at 1s while orders gives inventory
    400ms per try; orders' sidecar would cut inventory off while pricing still works."""
    inverted = set_route(OBJECTS, "pricing", timeout="1s")
    problems = budget_violations(inverted)
    assert any(p.startswith("orders -> inventory: callee may take") for p in problems), problems


def test_budget_check_catches_an_inner_route_whose_retries_outlast_the_caller() -> None:
    """Inversion through retries: frontend gives orders 900ms per try, but orders' route to
    inventory allows 2 x 600ms; the inner retries outlive the caller's try."""
    inverted = set_route(OBJECTS, "inventory", timeout="1500ms", perTryTimeout="600ms")
    problems = budget_violations(inverted)
    assert any(p.startswith("frontend -> orders: callee may take") for p in problems), problems


def test_budget_check_catches_retries_that_do_not_fit_their_own_timeout() -> None:
    """§1.2: with a 600ms timeout, 2 tries x 400ms never both run."""
    problems = budget_violations(set_route(OBJECTS, "inventory", timeout="600ms"))
    assert "orders -> inventory: 2 tries x 400ms + 25ms back-off exceed the 600ms timeout" in (
        problems)


def test_budget_check_catches_a_route_without_timeout() -> None:
    """§2.1: an Istio route without timeout has none, so the caller's budget is not enforced."""
    inverted = copy.deepcopy(OBJECTS)
    del route_of("pricing", inverted)["timeout"]
    assert "inventory -> pricing: no timeout" in budget_violations(inverted)
