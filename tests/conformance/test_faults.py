"""Chaos Mesh network faults applied by the sidecars.

docs/fidelity.md §5.2, §2.2; docs/architecture.md "Fault rules".
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from localmesh.sidecar.config import FaultRule
from localmesh.sidecar.faults import FaultEngine, hold
from localmesh.sidecar.overshoot import OvershootRing
from tests.conformance.conftest import LEAF, Pair, leaf_route


def _delay(ms: float, peers: list[str] | None = None, jitter: float = 0.0) -> dict[str, Any]:
    return {"id": "shop/delay", "action": "delay", "peers": peers,
            "delay": {"latency_ms": ms, "jitter_ms": jitter, "correlation": 0.0}}


async def _timed(pair: Pair, path: str, **kw: Any) -> tuple[int, float]:
    start = time.monotonic()
    resp = await pair.call(path, **kw)
    return resp.status, time.monotonic() - start


async def test_delay_on_the_callee_holds_its_responses_at_least_the_latency(pair: Pair) -> None:
    """§5.2 "With no target, all egress of the selected pods is affected, including the responses
    they send to callers"; docs: "a hold is never shorter than asked"."""
    await pair.configure(leaf_faults=[_delay(200)])
    for i in range(3):
        status, elapsed = await _timed(pair, f"/d{i}")
        assert status == 200
        assert 0.2 <= elapsed < 0.2 + 0.3
    stats = json.loads((await pair.leaf.admin_get("/stats")).body)
    assert stats["fault_holds"] == 3
    assert stats["fault_last_hold_ms"] >= 200


async def test_delay_counts_against_the_callers_route_timeout(pair: Pair) -> None:
    """§2.2 "netem delay → no timeout unless a VS timeout/perTryTimeout exists": with one, a
    delay longer than it gives 504 UT."""
    await pair.configure(leaf_faults=[_delay(400)], routes=leaf_route(timeout_ms=200))
    status, elapsed = await _timed(pair, "/slow")
    assert status == 504
    assert elapsed < 0.4


async def test_delay_on_the_caller_applies_only_to_the_target_peer(pair: Pair) -> None:
    """§5.2 `to` → "on the selected pods, for traffic to the target IPs"; other peers are
    unaffected."""
    await pair.configure(front_faults=[_delay(250, peers=["shop/leaf-1"])])
    status, elapsed = await _timed(pair, "/to-target")
    assert status == 200 and elapsed >= 0.25
    await pair.configure(front_faults=[_delay(250, peers=["shop/other-9"])])
    status, elapsed = await _timed(pair, "/to-other")
    assert status == 200 and elapsed < 0.25


async def test_caller_delay_on_a_warm_connection_counts_against_the_route_timeout(
        pair: Pair) -> None:
    """§2.2 "netem delay → no timeout unless a VS timeout/perTryTimeout exists": a send held by
    the caller's delay while a keep-alive connection is ready still runs out the route timeout,
    504 UT, and the upstream never sees the request."""
    await pair.configure(routes=leaf_route(timeout_ms=200))
    assert (await pair.call("/warm")).status == 200  # leaves an idle connection to the leaf
    await pair.configure(front_faults=[_delay(400, peers=["shop/leaf-1"])],
                         routes=leaf_route(timeout_ms=200))
    status, elapsed = await _timed(pair, "/held")
    assert status == 504 and 0.2 <= elapsed < 0.4
    line = await pair.front.wait_log(lambda ln: "/held" in ln)
    assert " 504 UT " in line
    assert "/held" not in "".join(pair.leaf.lines)


async def test_caller_delay_holds_are_never_shorter_and_recorded(pair: Pair) -> None:
    """docs/architecture.md "Fault rules": "the clock is re-checked after the timer fires; a hold
    is never shorter than asked" — also for sends held on the caller's side over a ready
    keep-alive connection: one overshoot ≥ 0 per held request in the caller's `/stats`."""
    await pair.configure()
    assert (await pair.call("/warm")).status == 200
    await pair.configure(front_faults=[_delay(50, peers=["shop/leaf-1"])])
    for i in range(5):
        status, elapsed = await _timed(pair, f"/h{i}")
        assert status == 200 and elapsed >= 0.05
    stats = json.loads((await pair.front.admin_get("/stats")).body)
    over = stats["fault_hold_overshoot_us"]
    assert stats["fault_holds"] == over["count"] == 5
    assert all(v >= 0 for v in over["recent_us"])


async def test_fault_removal_restores_normal_latency(pair: Pair) -> None:
    """docs/architecture.md: `set_faults(..., [])` clears the rules (pushed live)."""
    await pair.configure(leaf_faults=[_delay(300)])
    assert (await _timed(pair, "/a"))[1] >= 0.3
    await pair.configure(leaf_faults=[])
    assert (await _timed(pair, "/b"))[1] < 0.3


async def test_partition_is_a_connect_timeout_not_a_refusal(pair: Pair) -> None:
    """§5.2 partition: "Silent drops: callers see connect timeouts (UF after the … connectTimeout)
    or stalls"; docs: "new connections wait until the caller's connect timeout … nothing is
    refused"; §2.2 retried ≤2x → 503 UF,URX."""
    rule = {"id": "shop/part", "action": "partition", "peers": ["shop/leaf-1"]}
    await pair.configure(front_faults=[rule], connect_timeout_ms={LEAF: 200})
    status, elapsed = await _timed(pair, "/part")
    assert status == 503
    assert elapsed >= 3 * 0.2
    line = await pair.front.wait_log(lambda ln: "/part " in ln)
    assert " 503 UF,URX upstream_reset_before_response_started{connection_timeout} " in line
    assert not pair.app.seen


async def test_partitioned_caller_stalls_at_the_callee(pair: Pair) -> None:
    """§5.2 partition "established ones stall": the callee's sidecar drops what the peer sends,
    so the caller's route timeout fires (504), and the callee app never sees the request."""
    rule = {"id": "shop/part", "action": "partition", "peers": ["shop/front-1"]}
    await pair.configure(leaf_faults=[rule], routes=leaf_route(timeout_ms=300))
    status, _ = await _timed(pair, "/stall")
    assert status == 504
    assert not pair.app.seen


async def test_full_loss_stalls_until_the_route_timeout(pair: Pair) -> None:
    """docs: "loss … 100% = the connection stalls"."""
    rule = {"id": "shop/loss", "action": "loss", "peers": None,
            "loss": {"percent": 100.0, "correlation": 0.0}}
    await pair.configure(front_faults=[rule], routes=leaf_route(timeout_ms=300))
    status, elapsed = await _timed(pair, "/lost")
    assert status == 504 and 0.3 <= elapsed < 1.0


# -- the models themselves, in process ----------------------------------------------------


async def test_hold_is_never_shorter_than_asked() -> None:
    """docs: "the clock is re-checked after the timer fires; a hold is never shorter"."""
    for seconds in (0.001, 0.01, 0.05):
        start = time.monotonic()
        await hold(seconds)
        assert time.monotonic() - start >= seconds


def test_loss_waits_whole_rto_multiples_doubling() -> None:
    """docs: "each send is lost with the probability and resent after Linux RTO 200 ms, doubling
    per consecutive loss" — the waits are sums 0.2, 0.6, 1.4, …"""
    engine = FaultEngine()
    engine.set_rules((FaultRule("x", "loss", None, loss_percent=50.0),))
    allowed, total, rto = {0.0}, 0.0, 0.2
    for _ in range(40):
        total, rto = total + rto, min(rto * 2, 120.0)
        allowed.add(round(total, 6))
    waits = [engine.delay_for(None, 100) for _ in range(400)]
    assert all(w is not None and round(w, 6) in allowed for w in waits)
    lost_share = sum(1 for w in waits if w) / len(waits)
    assert 0.35 < lost_share < 0.65


def test_bandwidth_bucket_delays_bytes_beyond_the_burst() -> None:
    """§5.2 bandwidth = "tbf rate R burst <buffer>": a token bucket on bytes sent."""
    engine = FaultEngine()
    engine.set_rules((FaultRule("x", "bandwidth", None, rate_bytes_per_s=10_000.0,
                                bucket_bytes=1_000.0),))
    assert engine.delay_for(None, 1_000) == pytest.approx(0.0, abs=1e-3)
    assert engine.delay_for(None, 5_000) == pytest.approx(0.5, abs=0.01)


def test_partition_and_peer_filter() -> None:
    """docs: `peers: null` = all egress, else only traffic to/from those pods."""
    engine = FaultEngine()
    engine.set_rules((FaultRule("x", "partition", frozenset({"shop/a"})),))
    assert engine.partitioned("shop/a") and engine.delay_for("shop/a", 1) is None
    assert not engine.partitioned("shop/b") and engine.delay_for("shop/b", 1) == 0.0


async def test_jittered_delay_stays_within_bounds() -> None:
    """§5.2 delay{latency, jitter, correlation}: latency ± jitter, never negative."""
    engine = FaultEngine()
    engine.set_rules((FaultRule("x", "delay", None, latency_ms=100.0, jitter_ms=50.0),))
    values = [engine.delay_for(None, 1) for _ in range(200)]
    assert all(v is not None and 0.05 <= v <= 0.15 for v in values)
    assert max(v for v in values if v) - min(v for v in values if v) > 0.05
    await asyncio.sleep(0)


async def test_delay_overshoots_in_stats_are_never_negative(pair: Pair) -> None:
    """docs/architecture.md "Fault rules": "the clock is re-checked after the timer fires; a hold
    is never shorter than asked" — so every overshoot (actual - asked) that `/stats` reports for a
    50 ms delay is ≥ 0, one per held response."""
    await pair.configure(leaf_faults=[_delay(50)])
    for i in range(5):
        status, elapsed = await _timed(pair, f"/o{i}")
        assert status == 200 and elapsed >= 0.05
    stats = json.loads((await pair.leaf.admin_get("/stats")).body)
    over = stats["fault_hold_overshoot_us"]
    assert over["count"] == over["window"] == stats["fault_holds"] == 5
    assert len(over["recent_us"]) == 5
    assert all(v >= 0 for v in over["recent_us"])
    assert 0 <= over["min"] <= over["p50"] <= over["p99"] <= over["max"] < 300_000


def test_overshoot_ring_keeps_only_the_newest_values_in_order() -> None:
    """docs: the accuracy record is bounded — the ring keeps the last N overshoots, oldest first,
    while the count keeps growing."""
    ring = OvershootRing(size=4)
    for us in range(1, 7):
        ring.record(0.1, 0.1 + us / 1e6)
    snap = ring.snapshot()
    assert snap["count"] == 6 and snap["window"] == 4
    assert snap["recent_us"] == [3, 4, 5, 6]
    assert (snap["min"], snap["max"]) == (3, 6)
    assert OvershootRing().snapshot() == {"count": 0, "window": 0, "recent_us": []}
