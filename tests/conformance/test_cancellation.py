"""What the callee sees when its caller gives up (docs/fidelity.md §1.1, §1.6, §6)."""

from __future__ import annotations

import contextlib

from tests.conformance.conftest import Pair, field_of, leaf_route


async def test_caller_timeout_makes_callee_sidecar_log_0_dc_and_cancels_the_app(
        pair: Pair) -> None:
    """§1.1 "H1 reset = the upstream connection is closed … The next hop sees a downstream
    disconnect"; §1.6 "After hop n-1 times out, hop n's inbound sidecar logs `0 DC` (H1) … and
    resets its own upstream to the app"; §6 the app's context is Canceled."""
    await pair.configure(routes=leaf_route(timeout_ms=300))
    resp = await pair.call("/work?sleep=3")
    assert resp.status == 504
    line = await pair.leaf.wait_log(lambda ln: "sleep=3" in ln)
    assert " 0 DC downstream_remote_disconnect " in line
    assert await pair.app.last_was_cancelled()


async def test_app_giving_up_makes_its_own_sidecar_log_0_dc(pair: Pair) -> None:
    """§6 net/http client: "on expiry … the transport closes/resets, and the local sidecar logs
    `0 DC/DR`"; the sidecar closes its upstream so the callee app is cancelled too."""
    await pair.configure()
    with contextlib.suppress(TimeoutError):
        await pair.call("/work?sleep=3", within=0.3)
    line = await pair.front.wait_log(lambda ln: "sleep=3" in ln)
    assert field_of(line, 2) == "0"
    assert " 0 DC downstream_remote_disconnect " in line
    assert await pair.app.last_was_cancelled()


async def test_completed_request_is_not_cancelled(pair: Pair) -> None:
    """Control for the two tests above: a request that finishes in time is not cancelled."""
    await pair.configure(routes=leaf_route(timeout_ms=2000))
    resp = await pair.call("/work?sleep=0.1")
    assert resp.status == 200
    assert not pair.app.seen[-1].cancelled
