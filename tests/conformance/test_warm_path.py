"""The router's behaviours when the first try goes out on a warm keep-alive connection.

The sidecars answer such a request on callbacks, without a task (the common case, see
``localmesh.sidecar.proxy``); the other conformance tests mostly send one request on a fresh
connection, which takes the coroutine path. Each test here first makes one quick call so the
caller's and the callee's sidecars both hold an idle upstream connection, then checks one
clause of docs/fidelity.md on the request that follows.
"""

from __future__ import annotations

import contextlib

from tests.conformance.conftest import Pair, field_of, leaf_route


async def _warm(pair: Pair) -> int:
    """One quick call; returns how many requests the app has seen so far."""
    assert (await pair.call("/warm")).status == 200
    return len(pair.app.seen)


async def test_route_timeout_on_a_warm_connection_is_504_ut_and_the_callee_logs_0_dc(
        pair: Pair) -> None:
    """§1.1: on expiry, "flag UT and local reply 504 … details `response_timeout`", never
    retried; "H1 reset = the upstream connection is closed … The next hop sees a downstream
    disconnect" and logs `0 DC` (§1.6), and the app's request is cancelled (§6)."""
    await pair.configure(routes=leaf_route(timeout_ms=300))
    await _warm(pair)
    resp = await pair.call("/work?sleep=3")
    assert resp.status == 504 and resp.body == b"upstream request timeout"
    line = await pair.front.wait_log(lambda ln: "sleep=3" in ln)
    assert " 504 UT response_timeout " in line
    assert field_of(line, -1) == "1"
    callee = await pair.leaf.wait_log(lambda ln: "sleep=3" in ln)
    assert " 0 DC downstream_remote_disconnect " in callee
    assert await pair.app.last_was_cancelled()


async def test_per_try_timeout_on_a_warm_connection_is_retried_to_urx(pair: Pair) -> None:
    """§1.2: a per-try timeout is retried when retry_on has `5xx`, with `x-envoy-attempt-count`
    1, 2, 3 (§1.3); "Retries exhausted → flag URX"."""
    await pair.configure(routes=leaf_route(
        timeout_ms=3000, retries={"attempts": 2, "per_try_timeout_ms": 200,
                                  "retry_on": ["5xx"]}),
        mesh={"honor_app_envoy_headers": True})
    before = await _warm(pair)
    resp = await pair.call("/work?sleep=1")
    assert resp.status == 504
    line = await pair.front.wait_log(lambda ln: "sleep=1" in ln)
    assert " 504 UT,URX upstream_per_try_timeout " in line
    counts = [s.headers.get("x-envoy-attempt-count") for s in pair.app.seen[before:]]
    assert counts == ["1", "2", "3"]


async def test_retriable_status_on_a_warm_connection_is_retried_then_returned_with_urx(
        pair: Pair) -> None:
    """§2.2 ConvertPolicy: integer retryOn tokens become `retriable_status_codes`; the last
    response is returned with URX once retries are exhausted (§1.2)."""
    await pair.configure(routes=leaf_route(retries={
        "attempts": 2, "retry_on": ["retriable-status-codes"], "retriable_status_codes": [503]}))
    before = await _warm(pair)
    resp = await pair.call("/work?status=503")
    assert resp.status == 503
    assert len(pair.app.seen) - before == 3
    line = await pair.front.wait_log(lambda ln: "status=503" in ln)
    assert " 503 URX via_upstream " in line


async def test_app_giving_up_on_a_warm_connection_makes_its_sidecar_log_0_dc(
        pair: Pair) -> None:
    """§6: when the app's client gives up, "the transport closes/resets, and the local sidecar
    logs `0 DC/DR`"; the sidecar closes its upstream, so the callee app is cancelled too."""
    await pair.configure()
    await _warm(pair)
    with contextlib.suppress(TimeoutError):
        await pair.call("/work?sleep=3", within=0.3)
    line = await pair.front.wait_log(lambda ln: "sleep=3" in ln)
    assert field_of(line, 2) == "0"
    assert " 0 DC downstream_remote_disconnect " in line
    assert await pair.app.last_was_cancelled()
