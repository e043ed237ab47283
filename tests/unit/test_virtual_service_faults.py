"""VirtualService ``fault``: admitted as Istio's webhook admits it, translated as istiod does.

docs/fidelity.md §2.4. Istio ``pkg/config/validation/validation.go``
(``validateHTTPFaultInjection``, ``validateHTTPFaultInjectionAbort``/``Delay``,
``validatePercentage``, ``validateHTTPStatus``), the CRD's CEL rule on ``fixedDelay``
(``duration(self) >= duration('1ms')``), and ``pilot/pkg/networking/core/route/route.go``
(``TranslateFault``, ``translatePercentToFractionalPercent``,
``translateIntegerToFractionalPercent``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localmesh.errors import Invalid
from localmesh.sidecar.config import parse_config
from localmesh.store import ObjectStore
from localmesh.validation import validate_object
from localmesh.xds import build_shared, build_sidecar_config
from localmesh.yamldoc import safe_load
from tests.istio_samples import RATINGS_TEST_DELAY, ratings_test_vs

RATINGS = "ratings.shop.svc.cluster.local"

# The form of Istio's fault-injection task (tests/istio_samples.py); _vs puts another fault
# on its header-matched route.
ISTIO_DELAY = RATINGS_TEST_DELAY
_vs = ratings_test_vs


def _routes(*objects: dict[str, Any]) -> list[dict[str, Any]]:
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    for obj in objects:
        store.create(copy.deepcopy(obj))
    return list(build_shared(store).routes[RATINGS])  # type: ignore[arg-type]


def test_istios_delay_task_becomes_a_fault_on_the_header_matched_route_only() -> None:
    """``translateRoute``: ``TypedPerFilterConfig[wellknown.Fault] = TranslateFault(in.Fault)``
    per HTTPRoute; ``percentage.value`` 100 → 1000000/MILLION; the catch-all has none."""
    jason, everyone = _routes(safe_load(ISTIO_DELAY))
    assert jason["match"] == [{"headers": {"end-user": {"exact": "jason"}}}]
    assert jason["fault"] == {"delay": {"fixed_delay_ms": 7000.0, "percentage": {
        "numerator": 1_000_000, "denominator": "MILLION"}}}
    assert "fault" not in everyone


def test_the_abort_task_translates_status_and_fraction() -> None:
    """``FaultAbort_HttpStatus{HttpStatus: uint32(a.HttpStatus)}``; 50.0 → 500000/MILLION."""
    (route, _) = _routes(_vs({"abort": {"httpStatus": 500, "percentage": {"value": 50.0}}}))
    assert route["fault"] == {"abort": {"http_status": 500, "percentage": {
        "numerator": 500_000, "denominator": "MILLION"}}}


def test_the_deprecated_integer_percent_is_per_hundred_and_percentage_wins_over_it() -> None:
    """``if in.Delay.Percentage != nil {...} else {translateIntegerToFractionalPercent(
    in.Delay.Percent)}``, the latter ``Numerator: uint32(p), Denominator: HUNDRED``."""
    (legacy, _) = _routes(_vs({"delay": {"fixedDelay": "1s", "percent": 30}}))
    (both, _) = _routes(_vs({"delay": {"fixedDelay": "1s", "percent": 30,
                                       "percentage": {"value": 0.5}}}))
    assert legacy["fault"]["delay"]["percentage"] == {"numerator": 30, "denominator": "HUNDRED"}
    assert both["fault"]["delay"]["percentage"] == {"numerator": 5000, "denominator": "MILLION"}


def test_a_fault_without_percentages_fires_for_no_request() -> None:
    """A delay with neither field gets ``percent`` 0 → 0/HUNDRED; an abort without
    ``percentage`` keeps Envoy's unset FractionalPercent (numerator 0)."""
    (route, _) = _routes(_vs({"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 503}}))
    cfg = parse_config(build_sidecar_config(
        _shared(route), None, "shop", "front-1", version=1, otlp_endpoint="", faults=[]))
    fault = cfg.routes[RATINGS][0].fault
    assert fault is not None
    assert fault.delay_fraction.numerator == 0 and fault.abort_fraction.numerator == 0
    assert not any(fault.delays() or fault.aborts() for _ in range(1000))


def _shared(route: dict[str, Any]) -> Any:
    store = ObjectStore()
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    shared = build_shared(store)
    shared.routes = {RATINGS: [route]}  # type: ignore[list-item]
    return shared


def test_the_sidecar_reads_the_translated_fault_in_seconds_and_fractions() -> None:
    (route, _) = _routes(_vs({"delay": {"fixedDelay": "250ms", "percentage": {"value": 100}},
                              "abort": {"httpStatus": 503, "percentage": {"value": 100}}}))
    cfg = parse_config(build_sidecar_config(
        _shared(route), None, "shop", "front-1", version=1, otlp_endpoint="", faults=[]))
    fault = cfg.routes[RATINGS][0].fault
    assert fault is not None
    assert (fault.delay_s, fault.abort_status) == (0.25, 503)
    assert fault.delays() and fault.aborts()


def test_a_grpc_status_abort_becomes_envoys_numeric_grpc_status_answered_200() -> None:
    """``TranslateFault``: ``FaultAbort_GrpcStatus{GrpcStatus:
    uint32(grpc.SupportedGRPCStatus[a.GrpcStatus])}`` ("UNAVAILABLE" → 14); Envoy's
    ``FaultFilter::abortStatus``: "If gRPC status code is set, then http status will be set
    to Http::Code::OK (200)" (docs/fidelity.md §2.4)."""
    (route, _) = _routes(_vs({"abort": {"grpcStatus": "UNAVAILABLE",
                                        "percentage": {"value": 100}}}))
    assert route["fault"] == {"abort": {"grpc_status": 14, "percentage": {
        "numerator": 1_000_000, "denominator": "MILLION"}}}
    cfg = parse_config(build_sidecar_config(
        _shared(route), None, "shop", "front-1", version=1, otlp_endpoint="", faults=[]))
    fault = cfg.routes[RATINGS][0].fault
    assert fault is not None
    assert (fault.abort_status, fault.abort_grpc_status) == (200, 14) and fault.aborts()


@pytest.mark.parametrize(("name", "code"), [("OK", 0), ("CANCELLED", 1),
                                            ("DEADLINE_EXCEEDED", 4), ("UNAUTHENTICATED", 16)])
def test_every_supported_grpc_status_name_translates_to_its_code(name: str, code: int) -> None:
    """gRPC's doc/statuscodes.md numbering, as Istio's ``SupportedGRPCStatus`` maps it."""
    validate_object(_vs({"abort": {"grpcStatus": name, "percentage": {"value": 1}}}))
    (route, _) = _routes(_vs({"abort": {"grpcStatus": name, "percentage": {"value": 1}}}))
    assert route["fault"]["abort"]["grpc_status"] == code


def test_the_sidecar_refuses_an_abort_with_two_error_types_or_none() -> None:
    """Envoy's ``FaultAbort.error_type`` is a required oneof: a route document with both
    ``http_status`` and ``grpc_status``, or neither, is a NACK naming the field."""
    from localmesh.errors import SidecarConfigError
    pct = {"numerator": 1, "denominator": "HUNDRED"}
    for abort, said in (({"http_status": 503, "grpc_status": 14, "percentage": pct},
                         "abort is 'http_status and grpc_status', not one error type"),
                        ({"percentage": pct}, "abort has neither http_status nor grpc_status")):
        route = {"name": "r", "destinations": [{"host": RATINGS}], "fault": {"abort": abort}}
        with pytest.raises(SidecarConfigError) as caught:
            parse_config(build_sidecar_config(_shared(route), None, "shop", "front-1",
                                              version=1, otlp_endpoint="", faults=[]))
        assert said in str(caught.value), caught.value


def test_what_envoy_cannot_do_is_not_translated() -> None:
    """``TranslateFault``: a non-fixed delay is dropped ("Exponential faults are not yet
    supported"), whatever its percentage."""
    (route, _) = _routes(_vs({"delay": {"exponentialDelay": "1s", "percentage": {"value": 1}}}))
    assert "fault" not in route


# -- admission ----------------------------------------------------------------------------

def _refused(fault: dict[str, Any]) -> str:
    with pytest.raises(Invalid) as caught:
        validate_object(_vs(fault))
    return str(caught.value)


@pytest.mark.parametrize(("fault", "message"), [
    pytest.param({"delay": {"fixedDelay": "2 s", "percentage": {"value": 100}}},
                 "VirtualService 'ratings': spec.http[0].fault.delay.fixedDelay '2 s' is not "
                 "a valid duration", id="duration-with-a-space"),
    pytest.param({"delay": {"fixedDelay": "0s", "percentage": {"value": 100}}},
                 "spec.http[0].fault.delay.fixedDelay '0s' must be at least 1ms",
                 id="zero-delay"),
    pytest.param({"abort": {"httpStatus": 700, "percentage": {"value": 100}}},
                 "VirtualService 'ratings': spec.http[0].fault.abort.httpStatus 700 is not in "
                 "range 200-599", id="status-700"),
    pytest.param({"abort": {"httpStatus": 503, "percentage": {"value": 150}}},
                 "spec.http[0].fault.abort.percentage.value 150 is neither 0.0, nor in range "
                 "[0.0001, 100.0]", id="percentage-150"),
    pytest.param({"delay": {"fixedDelay": "1s", "percentage": {"value": -1}}},
                 "spec.http[0].fault.delay.percentage.value -1 is neither 0.0", id="negative"),
    pytest.param({"delay": {"fixedDelay": "1s", "percent": 150}},
                 "spec.http[0].fault.delay.percent 150 is not in range 0..100",
                 id="percent-150"),
    pytest.param({}, "spec.http[0].fault {} must have an abort and/or a delay", id="empty"),
    pytest.param({"abort": {"grpcStatus": "unavailable", "percentage": {"value": 100}}},
                 "VirtualService 'ratings': spec.http[0].fault.abort.grpcStatus 'unavailable' "
                 "is not a supported gRPC status", id="grpc-status-lower-case"),
    pytest.param({"abort": {"grpcStatus": "TIMEOUT", "percentage": {"value": 100}}},
                 "spec.http[0].fault.abort.grpcStatus 'TIMEOUT' is not a supported gRPC "
                 "status", id="grpc-status-unknown-name"),
    pytest.param({"abort": {"http2Error": "REFUSED_STREAM"}},
                 "spec.http[0].fault.abort.http2Error 'REFUSED_STREAM' is not supported",
                 id="http2-error"),
])
def test_a_malformed_fault_is_refused_naming_the_object_field_and_value(
        fault: dict[str, Any], message: str) -> None:
    """Istio's webhook (``validateHTTPFaultInjection``) and the CRD's CEL duration rule."""
    assert message in _refused(fault)


def test_istios_own_bound_admits_600_which_only_envoy_refuses() -> None:
    """``validateHTTPStatus``: ``status < 200 || status > 600`` — 600 passes the webhook (the
    sidecar refuses it, tests/conformance/test_fault_injection.py)."""
    validate_object(_vs({"abort": {"httpStatus": 600, "percentage": {"value": 1}}}))
    validate_object(safe_load(ISTIO_DELAY))
