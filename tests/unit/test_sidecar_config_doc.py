"""The sidecar configuration document (docs/architecture.md "Sidecar"): what
``localmesh.xds`` writes is what ``localmesh.sidecar.config`` reads, and a document that
does not fit ``localmesh.documents.SidecarConfigDoc`` is refused once, where it is read,
naming the bad field by its path and the bad value."""

from __future__ import annotations

import copy
import json
from typing import Any, NotRequired, TypedDict

import pytest

from localmesh.chaos.faults import SOURCE, record_rules
from localmesh.doccheck import Shape, ShapeError
from localmesh.documents import SidecarConfigDoc
from localmesh.errors import MeshError, SidecarConfigError
from localmesh.sidecar.config import DEFAULT_RETRY, parse_config
from localmesh.store import ObjectStore
from localmesh.xds import build_shared, build_sidecar_config

ORDERS = "orders.shop.svc.cluster.local"
_MESH_YAML = """
accessLogFile: /dev/stdout
accessLogEncoding: JSON
connectTimeout: 2s
defaultConfig:
  tracing:
    sampling: 25.0
"""


def _pod(name: str, app: str, *, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"app": app, "version": "v1", **labels},
                         "annotations": {"meshchaos.io/app-port": "40100",
                                         "meshchaos.io/inbound-port": "40200"}},
            "spec": {"containers": [{"name": app}]},
            "status": {"podIP": "127.0.0.1", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def _store() -> ObjectStore:
    store = ObjectStore()
    for ns in ("shop", "istio-system"):
        store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    store.create({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "istio", "namespace": "istio-system",
                               "annotations": {"meshchaos.io/honor-app-envoy-headers": "true"}},
                  "data": {"mesh": _MESH_YAML}})
    store.create({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "orders", "namespace": "shop"},
                  "spec": {"selector": {"app": "orders"}, "ports": [{"port": 8080}]}})
    store.create(_pod("orders-1", "orders"))
    store.create(_pod("orders-2", "orders", ready=False))
    store.create(_pod("gateway-1", "gateway", istio="ingressgateway"))
    http = {"name": "canary",
            "match": [{"uri": {"prefix": "/api"},
                       "headers": {"X-Canary": {"exact": "1"}, "x-user": {"regex": "u-.*"}}}],
            "route": [{"destination": {"host": "orders", "subset": "v1",
                                       "port": {"number": 8080}}}],
            "timeout": "500ms",
            "retries": {"attempts": 2, "perTryTimeout": "200ms", "retryOn": "5xx,503"}}
    store.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                  "metadata": {"name": "orders", "namespace": "shop"},
                  "spec": {"hosts": ["orders"], "http": [http]}})
    store.create({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                  "metadata": {"name": "edge", "namespace": "shop"},
                  "spec": {"hosts": ["shop.example.com"], "gateways": ["shop-gateway"],
                           "http": [{"route": [{"destination": {"host": "orders"}}]}]}})
    store.create({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                  "metadata": {"name": "orders", "namespace": "shop"},
                  "spec": {"host": "orders",
                           "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
                           "trafficPolicy": {"connectionPool": {"tcp": {
                               "connectTimeout": "250ms"}}}}})
    return store


def _faults() -> list[Any]:
    specs = [
        {"action": "delay", "delay": {"latency": "300ms", "jitter": "10ms",
                                      "correlation": "25"}},
        {"action": "loss", "loss": {"loss": "30", "correlation": "5"}},
        {"action": "bandwidth", "bandwidth": {"rate": "1mbps", "limit": 20971520,
                                              "buffer": 10000}},
        {"action": "netem", "duplicate": {"duplicate": "1"}, "corrupt": {"corrupt": "2"},
         "rate": {"rate": "1mbit"}},
        {"action": "partition", "externalTargets": ["example.com"]},
    ]
    return [rule for i, s in enumerate(specs)
            for rule in record_rules({"mode": "all", "selector": {}, **s}, f"shop/f{i}",
                                     SOURCE, ["shop/orders-1"], [])]


def _xds_doc(pod: str = "orders-1") -> SidecarConfigDoc:
    store = _store()
    return build_sidecar_config(build_shared(store), store.get("", "pods", "shop", pod),
                                "shop", pod, version=7, otlp_endpoint="http://127.0.0.1:4318",
                                faults=_faults())


def _wire(doc: object) -> Any:
    """As the admin endpoint receives it."""
    return json.loads(json.dumps(doc))


# -- what xds writes, the sidecar reads --------------------------------------------------


def test_a_document_from_xds_fits_its_type_and_round_trips() -> None:
    doc = _xds_doc()
    received = _wire(doc)
    assert Shape[SidecarConfigDoc](SidecarConfigDoc).check(received) == doc
    cfg = parse_config(received)
    assert cfg.raw == doc
    assert (cfg.version, cfg.pod, cfg.namespace, cfg.service, cfg.mode, cfg.app_port) == (
        7, "orders-1", "shop", "orders", "sidecar", 40100)
    assert cfg.mesh.honor_app_envoy_headers and cfg.mesh.sampling_percent == 25.0
    assert (cfg.mesh.access_log.enabled, cfg.mesh.access_log.encoding) == (True, "JSON")
    assert cfg.mesh.connect_timeout_ms == 2000.0
    assert cfg.mesh.otlp_endpoint == "http://127.0.0.1:4318"
    orders = cfg.services[ORDERS]
    assert (orders.name, orders.namespace, orders.ports) == ("orders", "shop", (8080,))
    assert [(e.pod, e.port, e.ready) for e in orders.endpoints] == [
        ("orders-1", 40200, True), ("orders-2", 40200, False)]
    [route] = cfg.routes[ORDERS]
    assert (route.name, route.timeout_ms) == ("canary", 500.0)
    [match] = route.matches
    assert (match.kind, match.value) == ("prefix", "/api")
    assert [(h.name, h.kind, h.value) for h in match.headers] == [
        ("x-canary", "exact", "1"), ("x-user", "regex", "u-.*")]
    assert match.matches("/api/x", {"x-canary": "1", "x-user": "u-7"})
    [dest] = route.destinations
    assert (dest.host, dest.subset, dest.port, dest.weight) == (ORDERS, "v1", 8080, 100)
    assert route.retry.num_retries == 2 and route.retry.per_try_timeout_ms == 200.0
    assert route.retry.retry_on == {"5xx", "retriable-status-codes"}
    assert route.retry.retriable_status_codes == {503}
    assert cfg.subsets == {ORDERS: {"v1": {"version": "v1"}}}
    assert cfg.connect_timeout_ms == {ORDERS: 250.0}
    assert cfg.gateway_routes == ()  # a sidecar, not the ingress gateway
    delay, loss, bandwidth, netem, partition = cfg.faults
    assert (delay.action, delay.latency_ms, delay.jitter_ms, delay.delay_correlation,
            delay.peers) == ("delay", 300.0, 10.0, 25.0, None)
    assert (loss.loss_percent, loss.loss_correlation) == (30.0, 5.0)
    assert (bandwidth.rate_bytes_per_s, bandwidth.bucket_bytes) == (1e6, 10000.0)
    assert (netem.corrupt_percent, netem.rate_bytes_per_s) == (2.0, 125000.0)
    assert partition.peers == frozenset() and partition.action == "partition"


def test_the_gateway_document_carries_the_gateway_routes() -> None:
    cfg = parse_config(_wire(_xds_doc("gateway-1")))
    assert cfg.mode == "gateway"
    [(hosts, routes)] = cfg.gateway_routes
    assert hosts == ("shop.example.com",)
    assert routes[0].destinations[0].host == ORDERS
    assert routes[0].retry == DEFAULT_RETRY  # no retries block: Istio's default policy


def test_fields_with_a_default_may_be_left_out() -> None:
    """Only version, node.pod/namespace/service and a few fields without a meaningful default
    are required; the rest default as docs/architecture.md says."""
    cfg = parse_config({"version": 1, "node": {"pod": "p-1", "namespace": "shop",
                                               "service": "p"},
                        "routes": {ORDERS: [{"destinations": [{"host": ORDERS}],
                                             "retries": {"attempts": 1}}]}})
    assert (cfg.mode, cfg.app_port, cfg.services, cfg.faults) == ("sidecar", 0, {}, ())
    assert cfg.mesh.connect_timeout_ms == 10_000.0 and cfg.mesh.access_log.enabled
    [route] = cfg.routes[ORDERS]
    assert (route.timeout_ms, route.matches, route.destinations[0].weight) == (0.0, (), 100)
    assert route.retry.retry_on == DEFAULT_RETRY.retry_on


# -- a bad document is refused with the path of its first bad field ----------------------

_MISSING = object()


def _good() -> dict[str, Any]:
    doc = _wire(_xds_doc())
    doc["gateway_routes"] = [{"hosts": ["*"], "routes": copy.deepcopy(doc["routes"][ORDERS])}]
    return dict(doc)


def _set(doc: Any, path: tuple[Any, ...], value: object) -> None:
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is _MISSING:
        del doc[last]
    else:
        doc[last] = value


ROUTE = ("routes", ORDERS, 0)
R = f"routes['{ORDERS}'][0]"
TOKENS = ("one of '5xx', 'cancelled', 'connect-failure', 'deadline-exceeded', "
          "'envoy-ratelimited', 'gateway-error'")


@pytest.mark.parametrize(("path", "value", "message"), [
    pytest.param((*ROUTE, "timeout_ms"), "x", f"{R}.timeout_ms is 'x', not a number >= 0",
                 id="string-for-a-number"),
    pytest.param(("faults", 0, "delay", "latency_ms"), -1,
                 "faults[0].delay.latency_ms is -1, not a number >= 0", id="below-minimum"),
    pytest.param(("mesh", "sampling_percent"), float("nan"),
                 "mesh.sampling_percent is nan, not a number >= 0", id="nan"),
    pytest.param(("node", "app_port"), 1.5, "node.app_port is 1.5, not an integer >= 0",
                 id="float-for-an-integer"),
    pytest.param(("version",), True, "version is True, not an integer >= 0",
                 id="bool-for-an-integer"),
    pytest.param(("mesh", "honor_app_envoy_headers"), "yes",
                 "mesh.honor_app_envoy_headers is 'yes', not true or false", id="bool"),
    pytest.param(("node", "pod"), _MISSING, "node.pod is missing", id="missing"),
    pytest.param((*ROUTE, "destinations", 0, "host"), _MISSING,
                 f"{R}.destinations[0].host is missing", id="missing-deep"),
    pytest.param((*ROUTE, "timeout"), 500,
                 f"{R}.timeout is not a field of RouteDoc (it has: destinations, fault, match, "
                 "name, retries, timeout_ms)", id="unknown-field"),
    pytest.param(("node", "mode"), "ambient",
                 "node.mode is 'ambient', not one of 'sidecar', 'gateway'", id="literal"),
    pytest.param(("faults", 1, "action"), "jitter",
                 "faults[1].action is 'jitter', not one of 'delay', 'loss', 'duplicate'",
                 id="fault-action"),
    pytest.param(("mesh", "access_log", "encoding"), "text",
                 "mesh.access_log.encoding is 'text', not one of 'TEXT', 'JSON'",
                 id="encoding"),
    pytest.param((*ROUTE, "retries", "retry_on", 1), "5xy",
                 f"{R}.retries.retry_on[1] is '5xy', not {TOKENS}", id="retry-on-token"),
    pytest.param((*ROUTE, "destinations"), [],
                 f"{R}.destinations is [], not a non-empty list", id="empty-list"),
    pytest.param((*ROUTE, "destinations", 0, "host"), "",
                 f"{R}.destinations[0].host is '', not a non-empty string", id="empty-string"),
    pytest.param(("services", ORDERS, "ports"), 8080,
                 f"services['{ORDERS}'].ports is 8080, not a list", id="list"),
    pytest.param(("services", ORDERS, "endpoints", 1, "labels", "app"), 7,
                 f"services['{ORDERS}'].endpoints[1].labels['app'] is 7, not a string",
                 id="map-value"),
    pytest.param(("mesh",), [], "mesh is [], not an object", id="object"),
    pytest.param(("subsets", ORDERS, "v1", "version"), None,
                 f"subsets['{ORDERS}']['v1']['version'] is None, not a string",
                 id="nested-maps"),
    pytest.param((*ROUTE, "retries"), "none",
                 f"{R}.retries is 'none', not an object or null", id="union"),
    pytest.param((*ROUTE, "retries", "attempts"), -1,
                 f"{R}.retries.attempts is -1, not an integer >= 0", id="inside-a-union"),
    pytest.param(("faults", 0, "peers"), "shop/x",
                 "faults[0].peers is 'shop/x', not a list or null", id="peers"),
    pytest.param(("connect_timeout_ms", ORDERS), "1s",
                 f"connect_timeout_ms['{ORDERS}'] is '1s', not a number >= 0", id="map"),
    pytest.param(("gateway_routes", 0, "routes", 0, "timeout_ms"), "x",
                 "gateway_routes[0].routes[0].timeout_ms is 'x', not a number >= 0",
                 id="gateway-route"),
    # rules a type cannot say, checked while the objects are built, in the same words
    pytest.param((*ROUTE, "match", 0, "headers", "x-user", "regex"), "(",
                 f"{R}.match[0].headers['x-user'].regex is '(', not a valid regex (missing ), "
                 "unterminated", id="bad-regex"),
    pytest.param((*ROUTE, "match", 0, "headers", "x-canary"), {},
                 f"{R}.match[0].headers['x-canary'] is {{}}, not an object with one of exact, "
                 "prefix, regex", id="header-match-kind"),
    pytest.param(("faults", 2, "bandwidth", "rate_bytes_per_s"), 0,
                 "faults[2].bandwidth.rate_bytes_per_s is 0, not > 0 (action 'bandwidth')",
                 id="bandwidth-rate"),
    pytest.param(("faults", 2, "bandwidth"), _MISSING,
                 "faults[2].bandwidth is missing (action 'bandwidth' needs it)",
                 id="bandwidth-block"),
])
def test_a_bad_field_is_refused_with_its_path_and_value(
        path: tuple[Any, ...], value: object, message: str) -> None:
    doc = _good()
    parse_config(copy.deepcopy(doc))  # the document is good before the change
    _set(doc, path, value)
    with pytest.raises(SidecarConfigError) as caught:
        parse_config(doc)
    assert str(caught.value).startswith(f"sidecar config: {message}")
    assert isinstance(caught.value, MeshError | ValueError)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(SidecarConfigError, match=r"^sidecar config: the document is \[\], "
                                                 "not an object$"):
        parse_config([])


def test_a_long_value_is_quoted_cut_short() -> None:
    doc = _good()
    doc["node"]["service"] = ["x" * 200]
    with pytest.raises(SidecarConfigError) as caught:
        parse_config(doc)
    assert len(str(caught.value)) < 140 and "...," in str(caught.value)


# -- the checker itself --------------------------------------------------------------------


class _Inner(TypedDict):
    n: int
    note: NotRequired[str]


class _Outer(TypedDict):
    inner: _Inner
    tags: NotRequired[list[str] | None]


def test_not_required_keys_are_optional_under_postponed_annotations() -> None:
    """This module uses ``from __future__ import annotations``, under which Python 3.11's
    TypedDict counts every key as required; the checker reads NotRequired itself."""
    shape = Shape[_Outer](_Outer)
    assert shape.check({"inner": {"n": 1}}) == {"inner": {"n": 1}}
    assert shape.check({"inner": {"n": 1, "note": "x"}, "tags": None})["tags"] is None
    with pytest.raises(ShapeError) as caught:
        shape.check({"inner": {"note": "x"}})
    assert (caught.value.path, caught.value.problem) == ("inner.n", "is missing")
