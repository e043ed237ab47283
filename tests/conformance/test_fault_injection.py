"""VirtualService fault injection as Envoy's fault filter does it, in the caller's sidecar.

docs/fidelity.md §2.4. Envoy: ``source/extensions/filters/http/fault/fault_filter.cc``
(``FaultFilter::decodeHeaders``, ``postDelayInjection``, ``abortWithStatus``) and
``docs/root/configuration/http/http_filters/fault_filter.rst`` ("The fault injection filter
must be inserted before any other filter, including the router filter"); Istio:
``pilot/pkg/networking/core/route/route.go`` (``TranslateFault``, ``translateRoute`` puts it
in the route's ``typed_per_filter_config``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conformance.conftest import LEAF, OtlpReceiver, Pair, config, field_of, leaf_route

ALWAYS = {"numerator": 100, "denominator": "HUNDRED"}
NEVER = {"numerator": 0, "denominator": "HUNDRED"}


def _faulty(fault: dict[str, Any], timeout_ms: float = 0,
            retries: dict[str, Any] | None = None, **match: Any) -> dict[str, Any]:
    routes = leaf_route(timeout_ms=timeout_ms, retries=retries, **match)
    routes[LEAF][0]["fault"] = fault
    return routes


def _delay(ms: float, pct: dict[str, Any] = ALWAYS) -> dict[str, Any]:
    return {"fixed_delay_ms": ms, "percentage": pct}


def _abort(status: int, pct: dict[str, Any] = ALWAYS) -> dict[str, Any]:
    return {"http_status": status, "percentage": pct}


async def _timed(pair: Pair, path: str, **kw: Any) -> tuple[int, bytes, float]:
    start = time.monotonic()
    resp = await pair.call(path, **kw)
    return resp.status, resp.body, time.monotonic() - start


async def test_a_delay_holds_the_request_at_least_its_fixed_delay_then_forwards_it(
        pair: Pair) -> None:
    """fault_filter.cc ``decodeHeaders``: the delay timer stops the filter chain and sets
    ``ResponseFlag::DelayInjected`` (``DI``); ``postDelayInjection`` continues decoding, so the
    request reaches the upstream and its answer comes back ``via_upstream``."""
    await pair.configure(routes=_faulty({"delay": _delay(300)}))
    status, _, elapsed = await _timed(pair, "/held")
    assert status == 200 and elapsed >= 0.3
    assert len(pair.app.seen) == 1
    line = await pair.front.wait_log(lambda ln: "/held" in ln)
    assert " 200 DI via_upstream " in line
    assert int(field_of(line, 9)) >= 300  # %DURATION% counts the delay


async def test_an_abort_is_a_local_reply_with_envoys_body_details_and_flag_fi(
        pair: Pair) -> None:
    """``abortWithStatus``: ``sendLocalReply(code, "fault filter abort", ...,
    RcDetails::FaultAbort = "fault_filter_abort")`` with ``ResponseFlag::FaultInjected``
    (``FI``); the request never reaches the router, so no upstream host is logged and the
    callee sees nothing."""
    await pair.configure(routes=_faulty({"abort": _abort(503)}))
    resp = await pair.call("/aborted")
    assert resp.status == 503
    assert resp.body == b"fault filter abort"
    assert resp.headers["content-type"] == "text/plain"
    assert "x-envoy-upstream-service-time" not in resp.headers
    line = await pair.front.wait_log(lambda ln: "/aborted" in ln)
    assert " 503 FI fault_filter_abort " in line
    assert field_of(line, 15) == "-"  # %UPSTREAM_HOST%: no upstream was chosen
    assert field_of(line, 16) == f"outbound|8080||{LEAF}"  # the route's cluster is known
    assert pair.app.seen == []


async def test_an_abort_is_not_retried_even_when_retry_on_covers_its_status(
        pair: Pair) -> None:
    """The fault filter runs before the router (fault_filter.rst "must be inserted before any
    other filter, including the router filter"): a retry policy that retries 5xx never sees the
    abort, so no try is made and ``x-envoy-attempt-count`` is never set."""
    await pair.configure(routes=_faulty(
        {"abort": _abort(503)}, retries={"attempts": 3, "retry_on": ["5xx"]}))
    resp = await pair.call("/no-retry")
    assert resp.status == 503
    line = await pair.front.wait_log(lambda ln: "/no-retry" in ln)
    assert " 503 FI fault_filter_abort " in line and "URX" not in line
    assert field_of(line, -1) == "-"  # no x-envoy-attempt-count: the router never ran
    assert pair.app.seen == []


async def test_the_delay_does_not_count_against_the_route_timeout(pair: Pair) -> None:
    """router.cc ``Filter::onRequestComplete`` arms the route timer when the *router* has the
    whole request, which is after the fault filter released it: a 600 ms delay on a route with
    a 300 ms timeout still gets its 200, and the router announces the whole 300 ms upstream
    (``x-envoy-expected-rq-timeout-ms``, §1.5)."""
    await pair.configure(routes=_faulty({"delay": _delay(600)}, timeout_ms=300),
                         mesh={"honor_app_envoy_headers": True})
    status, _, elapsed = await _timed(pair, "/long-delay")
    assert status == 200 and elapsed >= 0.6
    assert pair.app.seen[-1].headers["x-envoy-expected-rq-timeout-ms"] == "300"
    line = await pair.front.wait_log(lambda ln: "/long-delay" in ln)
    assert " 200 DI via_upstream " in line


async def test_the_route_timeout_starts_when_the_delay_ends(pair: Pair) -> None:
    """Same order, seen from the timer's side: with a 300 ms delay and a 300 ms route timeout a
    slow upstream is cut 300 ms *after* the delay, i.e. no earlier than 600 ms in all, and the
    line carries both flags in Envoy's flag order (``UT`` before ``DI``)."""
    await pair.configure(routes=_faulty({"delay": _delay(300)}, timeout_ms=300))
    status, body, elapsed = await _timed(pair, "/work?sleep=2")
    assert status == 504 and body == b"upstream request timeout"
    assert 0.6 <= elapsed < 1.5
    line = await pair.front.wait_log(lambda ln: "sleep=2" in ln)
    assert " 504 UT,DI response_timeout " in line


async def test_a_delay_can_be_followed_by_an_abort(pair: Pair) -> None:
    """fault_filter.cc: "Delays and aborts are independent events. One can inject a delay
    followed by an abort"; ``postDelayInjection`` draws the abort after the delay, so the
    answer is the abort, late by the delay, flagged ``DI,FI``."""
    await pair.configure(routes=_faulty({"delay": _delay(250), "abort": _abort(500)}))
    status, body, elapsed = await _timed(pair, "/both")
    assert (status, body) == (500, b"fault filter abort") and elapsed >= 0.25
    line = await pair.front.wait_log(lambda ln: "/both" in ln)
    assert " 500 DI,FI fault_filter_abort " in line
    assert pair.app.seen == []


async def test_the_fault_applies_only_on_the_route_whose_match_fits(pair: Pair) -> None:
    """Istio puts the fault in the route's ``typed_per_filter_config`` (``translateRoute``) and
    the filter reads the selected route's (``mostSpecificPerFilterConfig``): a header-matched
    route carries it, the catch-all route after it does not."""
    routes = _faulty({"abort": _abort(500)}, name="jason",
                     headers={"end-user": {"exact": "jason"}})
    routes[LEAF].append({"name": "everyone", "match": [],
                         "destinations": [{"host": LEAF, "port": 8080}]})
    await pair.configure(routes=routes)
    other = await pair.call("/stars", {"end-user": "someone"})
    jason = await pair.call("/stars", {"end-user": "jason"})
    assert other.status == 200
    assert (jason.status, jason.body) == (500, b"fault filter abort")
    assert len(pair.app.seen) == 1


async def test_a_zero_fraction_never_fires_and_a_whole_one_always_does(pair: Pair) -> None:
    """``featureEnabled(key, FractionalPercent)``: ``random % denominator < numerator``. Istio
    writes an abort without ``percentage`` as 0 (``TranslateFault`` leaves it unset): such an
    abort never fires; 100/HUNDRED fires on every request."""
    await pair.configure(routes=_faulty({"abort": _abort(503, NEVER)}))
    never = [await pair.call(f"/n{i}") for i in range(30)]
    await pair.configure(routes=_faulty({"abort": _abort(503, {"numerator": 1_000_000,
                                                                "denominator": "MILLION"})}))
    always = [await pair.call(f"/a{i}") for i in range(30)]
    assert {r.status for r in never} == {200}
    assert {r.status for r in always} == {503}


async def test_a_caller_leaving_during_the_delay_sends_nothing_upstream(pair: Pair) -> None:
    """A downstream reset destroys the stream (``FaultFilter::onDestroy`` disables the delay
    timer): the request is never forwarded, and the line is ``0 DI,DC`` (§1.6)."""
    await pair.configure(routes=_faulty({"delay": _delay(800)}))
    with pytest.raises(TimeoutError):
        await pair.call("/gone", within=0.2)
    line = await pair.front.wait_log(lambda ln: "/gone" in ln, within=3)
    assert " 0 DI,DC downstream_remote_disconnect " in line
    await asyncio.sleep(0.9)  # past the delay's end: the hold must not have released it
    assert pair.app.seen == []


async def test_the_span_carries_the_fault_flags_and_status(pair: Pair, otlp: OtlpReceiver,
                                                           ) -> None:
    """Envoy tags the downstream span in ``HttpTracerUtility::finalizeDownstreamSpan`` with
    ``response_flags`` (``FI``), ``http.status_code`` and ``error`` for a 5xx; the fault filter
    adds no tag of its own, and an aborted request has no upstream (child) span."""
    await pair.configure(routes=_faulty({"abort": _abort(503)}),
                         mesh={"otlp_endpoint": otlp.endpoint})
    resp = await pair.call("/traced")
    assert resp.status == 503
    spans = await otlp.wait_spans(lambda ss: any(
        s["attrs"].get("http.url", "").endswith("/traced") for s in ss))
    mine = [s for s in spans if s["attrs"].get("http.url", "").endswith("/traced")]
    assert len(mine) == 1  # the outbound span only: no try, so no child span
    attrs = mine[0]["attrs"]
    assert attrs["response_flags"] == "FI"
    assert attrs["http.status_code"] == 503
    assert mine[0]["status"] == 2  # STATUS_CODE_ERROR: Envoy's error tag for a 5xx


async def test_the_sidecar_refuses_an_abort_status_envoy_cannot_send(pair: Pair) -> None:
    """envoy/extensions/filters/http/fault/v3/fault.proto ``FaultAbort.http_status``:
    ``[(validate.rules).uint32 = {lt: 600 gte: 200}]``. Istio's webhook lets 600 through
    (its check is ``status > 600``), so it is the proxy that rejects the route configuration
    (a NACK: the previous configuration stays)."""
    await pair.configure(routes=leaf_route())
    svcs = pair.services()
    resp = await pair.front.push(config("front-1", "front", services=svcs, app_port=1,
                                        routes=_faulty({"abort": _abort(600)}), version=99))
    assert resp.status == 400
    assert b"fault.abort.http_status is 600, not an HTTP status in [200, 600)" in resp.body
    assert (await pair.call("/still-routed")).status == 200
