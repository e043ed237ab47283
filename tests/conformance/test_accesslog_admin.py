"""Access log lines and the admin listener (docs/fidelity.md §1.6, §2.3; docs/architecture.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import pytest

from tests.conformance.conftest import (
    LEAF,
    OtlpReceiver,
    Pair,
    Sidecars,
    config,
    field_of,
    leaf_route,
)

_START = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] ")


async def test_text_access_log_fields_follow_istio_format(pair: Pair) -> None:
    """§2.3 Istio's TEXT format; "Empty values print `-`"; docs/architecture.md `%START_TIME%` is
    `2026-11-26T17:25:03.123Z` and the extended format appends traceparent, expected timeout and
    attempt count."""
    await pair.configure(routes=leaf_route(timeout_ms=900))
    resp = await pair.call("/work?x=1", {"user-agent": "probe/1", "x-request-id": "rid-1",
                                        "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"})
    assert resp.status == 200
    line = await pair.front.wait_log(lambda ln: "rid-1" in ln)
    assert _START.match(line)
    f = [field_of(line, i) for i in range(25)]
    assert f[1] == "GET /work?x=1 HTTP/1.1"
    assert f[2:5] == ["200", "-", "via_upstream"]
    assert f[5] == "-"  # CONNECTION_TERMINATION_DETAILS
    assert f[6] == "-"  # UPSTREAM_TRANSPORT_FAILURE_REASON (quoted)
    assert f[7] == "0" and int(f[8]) == len(resp.body)
    assert int(f[9]) >= 0 and f[10] == resp.headers["x-envoy-upstream-service-time"]
    assert f[11] == "-" and f[12] == "probe/1" and f[13] == "rid-1" and f[14] == "leaf:8080"
    assert f[15] == f"127.0.0.1:{pair.leaf.ports['inbound']}"
    assert f[16] == f"outbound|8080||{LEAF}"
    assert f[18] == f"127.0.0.1:{pair.front.ports['outbound']}"
    assert f[20] == "-" and f[21] == "leaf-route"
    trace_field = field_of(line, -3)
    assert trace_field.startswith(f"00-{'a' * 32}-")
    assert trace_field != f"00-{'a' * 32}-{'b' * 16}-01"
    assert field_of(line, -2) == "900" and field_of(line, -1) == "1"
    leaf_line = await pair.leaf.wait_log(lambda ln: "rid-1" in ln)
    assert field_of(leaf_line, 16) == "inbound|8080||"


async def test_json_access_log_encoding(pair: Pair) -> None:
    """§2.3 "the JSON variant keys the same operators as start_time, response_code,
    response_flags, …"; empty values are null."""
    await pair.configure(mesh={"access_log": {"enabled": True, "encoding": "JSON",
                                              "format": ""}})
    await pair.call("/json", {"x-request-id": "rid-json"})
    line = await pair.front.wait_log(lambda ln: "rid-json" in ln)
    doc = json.loads(line)
    assert doc["response_code"] == 200
    assert doc["response_flags"] == "-"
    assert doc["path"] == "/json"
    assert doc["method"] == "GET"
    assert doc["upstream_cluster"] == f"outbound|8080||{LEAF}"
    assert doc["x_forwarded_for"] is None


async def test_one_line_per_request_per_sidecar(pair: Pair) -> None:
    """docs/architecture.md: one access log line per downstream request per sidecar."""
    await pair.configure()
    for i in range(5):
        await pair.call(f"/n{i}")
    await pair.leaf.wait_log(lambda ln: "/n4 " in ln)
    await pair.front.wait_log(lambda ln: "/n4 " in ln)
    assert sum("/n" in ln for ln in pair.front.lines) == 5
    assert sum("/n" in ln for ln in pair.leaf.lines) == 5


async def test_access_log_can_be_disabled(pair: Pair) -> None:
    """§2.3 "Off by default (accessLogFile: "")": disabled = no lines."""
    await pair.configure(mesh={"access_log": {"enabled": False, "encoding": "TEXT",
                                              "format": ""}})
    await pair.call("/quiet")
    await pair.configure()
    await pair.call("/loud")
    await pair.front.wait_log(lambda ln: "/loud" in ln)
    assert not any("/quiet" in ln for ln in pair.front.lines)


async def test_live_config_change_applies_within_a_second(pair: Pair) -> None:
    """docs/architecture.md: `POST /config` "replaces the previous one atomically", like a
    live xDS push: a new route timeout applies to the next request."""
    await pair.configure()
    assert (await pair.call("/work?sleep=0.5")).status == 200
    pushed = time.monotonic()
    await pair.configure(routes=leaf_route(timeout_ms=200))
    resp = await pair.call("/work?sleep=0.5")
    assert resp.status == 504
    assert time.monotonic() - pushed < 1.0
    stats = json.loads((await pair.front.admin_get("/stats")).body)
    assert stats["config_version"] == 2 and stats["rq_timeout"] == 1


async def test_bad_config_is_rejected_with_400_and_the_old_one_kept(pair: Pair) -> None:
    """docs/architecture.md admin: a bad document → 400 with a clear message."""
    await pair.configure()
    bad = config("front-1", "front", services=pair.services(), version=9,
                 routes={LEAF: [{"name": "r", "destinations": [], "timeout_ms": 10}]})
    resp = await pair.front.push(bad)
    assert resp.status == 400
    assert ("sidecar config: routes['leaf.shop.svc.cluster.local'][0].destinations is [], "
            "not a non-empty list") in json.loads(resp.body)["error"]
    bad_fmt = config("front-1", "front", services=pair.services(), version=9,
                     mesh={"access_log": {"enabled": True, "encoding": "TEXT",
                                          "format": "%NOPE%"}})
    resp = await pair.front.push(bad_fmt)
    assert resp.status == 400
    assert "%NOPE%" in json.loads(resp.body)["error"]
    resp = await pair.pool.request("POST", f"{pair.front.admin}/config", {}, b"{not json",
                                   timeout=5)
    assert resp.status == 400
    current = json.loads((await pair.front.admin_get("/config")).body)
    assert current["version"] == 1
    assert (await pair.call("/still")).status == 200


async def test_ready_only_after_first_config(sidecars: Sidecars) -> None:
    """docs/architecture.md: "The sidecar is ready when its admin GET /ready answers 200 after
    its first config push"."""
    sc = await sidecars.start("solo-1", "solo")
    assert (await sc.admin_get("/ready")).status == 503
    assert (await sc.push(config("solo-1", "solo", services={}))).status == 200
    assert (await sc.admin_get("/ready")).status == 200


async def test_sigterm_flushes_the_access_log_and_spans_and_exits(
        pair: Pair, otlp: OtlpReceiver) -> None:
    """docs/architecture.md: "On SIGTERM: stop accepting, flush logs and spans, exit"."""
    await pair.configure(mesh={"otlp_endpoint": otlp.endpoint})
    trace = "5" * 32
    await pair.call("/last-words", {"traceparent": f"00-{trace}-{'6' * 16}-01"})
    os.kill(pair.front.proc.pid, signal.SIGTERM)
    async with asyncio.timeout(5):
        code = await pair.front.proc.wait()
    assert code == 0
    await pair.front.wait_log(lambda ln: "/last-words" in ln, within=2)
    spans = await otlp.wait_spans(
        lambda s: any(x["trace_id"] == trace and x["service"] == "front.shop" for x in s))
    assert any(x["attrs"]["http.url"].endswith("/last-words") for x in spans)
    with pytest.raises(OSError):
        await pair.pool.request("GET", f"http://127.0.0.1:{pair.front.ports['outbound']}/x",
                                timeout=2)


async def test_quitquitquit_stops_the_sidecar(pair: Pair) -> None:
    """docs/architecture.md admin: `POST /quitquitquit`."""
    await pair.configure()
    resp = await pair.pool.request("POST", f"{pair.front.admin}/quitquitquit", timeout=5)
    assert resp.status == 200
    async with asyncio.timeout(5):
        assert await pair.front.proc.wait() == 0


async def test_sigterm_lets_requests_in_flight_finish(pair: Pair) -> None:
    """docs/architecture.md SIGTERM: "stop accepting, flush logs and spans, exit" — a request
    already in flight still gets its answer (bounded drain, as Envoy drains on shutdown)."""
    await pair.configure()
    call = asyncio.create_task(pair.call("/slow?sleep=0.5"))
    await asyncio.sleep(0.2)
    os.kill(pair.front.proc.pid, signal.SIGTERM)
    resp = await call
    assert resp.status == 200
    async with asyncio.timeout(5):
        assert await pair.front.proc.wait() == 0
    await pair.front.wait_log(lambda ln: "/slow?sleep=0.5" in ln and " 200 " in ln, within=2)
