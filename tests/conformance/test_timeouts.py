"""Route and per-try timeouts (docs/fidelity.md §1.1, §1.2, §1.5, §2.1)."""

from __future__ import annotations

import time

from tests.conformance.conftest import LEAF, Pair, field_of, leaf_route


async def test_route_timeout_gives_504_ut_with_envoy_body(pair: Pair) -> None:
    """§1.1: "On expiry ... flag UT and local reply 504, body `upstream request timeout`
    (text/plain), details `response_timeout`"."""
    await pair.configure(routes=leaf_route(timeout_ms=300))
    start = time.monotonic()
    resp = await pair.call("/work?sleep=2")
    elapsed = time.monotonic() - start
    assert resp.status == 504
    assert resp.body == b"upstream request timeout"
    assert resp.headers["content-type"] == "text/plain"
    assert 0.3 <= elapsed < 1.5
    line = await pair.front.wait_log(lambda ln: "sleep=2" in ln)
    assert " 504 UT response_timeout " in line
    assert field_of(line, -1) == "1"  # x-envoy-attempt-count: a route timeout is never retried


async def test_no_virtual_service_timeout_means_no_timeout(pair: Pair) -> None:
    """§2.1: "route.timeout = 0s unless HTTPRoute.timeout is set ... Envoy's 15s default never
    applies to sidecar routes"; §1.5: global = per-try = 0 → no expected-rq-timeout header."""
    await pair.configure(mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?sleep=0.5")
    assert resp.status == 200
    assert "x-envoy-expected-rq-timeout-ms" not in pair.app.seen[-1].headers


async def test_per_try_timeout_without_retry_on_gives_504_ut_without_retry(pair: Pair) -> None:
    """§1.2: "A per-try timeout counts as a reset: retried only if retry_on has 5xx,
    gateway-error, reset ... ⇒ Under Istio's default retryOn, a VS perTryTimeout without
    retryOn yields 504 UT with no retry"; details `upstream_per_try_timeout`."""
    await pair.configure(routes=leaf_route(
        timeout_ms=2000, retries={"attempts": 2, "per_try_timeout_ms": 200}))
    resp = await pair.call("/work?sleep=1")
    assert resp.status == 504
    assert resp.body == b"upstream request timeout"
    line = await pair.front.wait_log(lambda ln: "sleep=1" in ln)
    assert " 504 UT upstream_per_try_timeout " in line
    assert len(pair.app.seen) == 1


async def test_per_try_timeout_with_matching_retry_on_is_retried(pair: Pair) -> None:
    """§1.2: a per-try timeout is retried when retry_on has `5xx`; §1.3 `x-envoy-attempt-count`
    1, 2, … is sent upstream; §1.2 "Retries exhausted → flag URX"."""
    await pair.configure(routes=leaf_route(
        timeout_ms=3000, retries={"attempts": 2, "per_try_timeout_ms": 200,
                                  "retry_on": ["5xx"]}),
        mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?sleep=1")
    assert resp.status == 504
    line = await pair.front.wait_log(lambda ln: "sleep=1" in ln)
    assert " 504 UT,URX upstream_per_try_timeout " in line
    counts = [s.headers.get("x-envoy-attempt-count") for s in pair.app.seen]
    assert counts == ["1", "2", "3"]


async def test_per_try_timeout_not_shorter_than_route_timeout_is_ignored(pair: Pair) -> None:
    """§1.2: the per-try timeout is "ignored if ≥ global (global ≠ 0)": the 504 is the route's."""
    await pair.configure(routes=leaf_route(
        timeout_ms=300, retries={"attempts": 2, "per_try_timeout_ms": 500,
                                 "retry_on": ["5xx"]}))
    resp = await pair.call("/work?sleep=2")
    assert resp.status == 504
    line = await pair.front.wait_log(lambda ln: "sleep=2" in ln)
    assert " 504 UT response_timeout " in line
    assert len(pair.app.seen) == 1


async def test_expected_timeout_header_is_sent_and_shrinks_on_retry(pair: Pair) -> None:
    """§1.5 setTimeoutHeaders: expected = per_try, capped by global - elapsed, "doRetry()
    recomputes it"; only when > 0. The inbound sidecar passes it on with the switch on (§1.7)."""
    await pair.configure(routes=leaf_route(
        timeout_ms=1000, retries={"attempts": 2, "per_try_timeout_ms": 400,
                                  "retry_on": ["5xx"]}),
        mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work?sleep=2")
    assert resp.status == 504
    values = [int(s.headers["x-envoy-expected-rq-timeout-ms"]) for s in pair.app.seen]
    assert values[0] == 400
    assert len(values) >= 2
    assert all(v <= 1000 - 400 for v in values[2:])
    assert values[-1] < 400 or len(values) == 2


async def test_route_timeout_sets_expected_header_equal_to_route_timeout(pair: Pair) -> None:
    """§1.5: with no per-try timeout, expected = global on the first try."""
    await pair.configure(routes=leaf_route(timeout_ms=750),
                         mesh={"honor_app_envoy_headers": True})
    resp = await pair.call("/work")
    assert resp.status == 200
    assert pair.app.seen[-1].headers["x-envoy-expected-rq-timeout-ms"] == "750"
    line = await pair.front.wait_log(lambda ln: "GET /work " in ln)
    assert field_of(line, -2) == "750"


async def test_per_try_timer_starts_when_the_connection_is_ready_not_before_connect(
        pair: Pair) -> None:
    """§1.2 "when the timer runs": Envoy arms the per-try timer in UpstreamRequest::onPoolReady,
    so a connect slower than the per-try timeout ends in the connect timeout (503 UF), not in a
    per-try 504. The callee is partitioned (§5.2: SYNs vanish), its connect timeout 400 ms,
    the per-try timeout 100 ms, no retry of connect failures."""
    rule = {"id": "shop/part", "action": "partition", "peers": ["shop/leaf-1"]}
    await pair.configure(front_faults=[rule], connect_timeout_ms={LEAF: 400},
                         routes=leaf_route(timeout_ms=3000, retries={
                             "attempts": 1, "per_try_timeout_ms": 100, "retry_on": ["5xx"]}))
    start = time.monotonic()
    resp = await pair.call("/slow-connect")
    elapsed = time.monotonic() - start
    line = await pair.front.wait_log(lambda ln: "/slow-connect " in ln)
    assert resp.status == 503, line
    assert "{connection_timeout}" in line and " UF" in line
    assert elapsed >= 0.4  # the connect timeout ran out; a per-try cut would end at 0.1 s
