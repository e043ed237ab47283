"""Chaos on gRPC hops: a real grpcio client → front's sidecar → (h2c) → leaf's sidecar → a
real grpcio server, with Chaos Mesh's faults and a VirtualService fault on the way.

docs/fidelity.md §5.2 (NetworkChaos, emulated on the pod's egress by the sidecar's fault
engine), §5.3 (PodChaos), §5.5 (HTTPChaos, which does not act on HTTP/2), §2.4 (the fault
filter's gRPC abort), §1.9 (local replies to gRPC are trailers-only). Every call has a
client deadline, so no test can hang longer than it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.conformance.conftest import LEAF, Sidecars, config, field_of, leaf_route
from tests.conformance.test_grpc import (
    UPSTREAM_LOCAL,
    GrpcPair,
    grpc_services,
    is_grpc_line,
    rpc_error,
    running_pair,
)

LEAF_PEER = "shop/leaf-1"
FRONT_PEER = "shop/front-1"
# Envoy's reset body for a connection that closed under its streams (CodecClient::onEvent:
# a connected client's RemoteClose is StreamResetReason::ConnectionTermination, flag UC).
TERMINATION = ("upstream connect error or disconnect/reset before headers. "
               "reset reason: connection termination")


class ChaosPair(GrpcPair):
    """The gRPC pair, configured with faults on one end or the other."""

    async def faults(self, *, front: list[dict[str, Any]] | None = None,
                     leaf: list[dict[str, Any]] | None = None,
                     leaf_http: list[dict[str, Any]] | None = None, app_port: int = 0,
                     **kw: Any) -> None:
        self.version += 1
        svcs = grpc_services(self)
        for sc, name, port, rules in ((self.front, "front", 1, front),
                                      (self.leaf, "leaf", app_port or self.app.port, leaf)):
            doc = config(sc.pod, name, services=svcs, app_port=port, version=self.version,
                         faults=rules, **kw)
            if sc is self.leaf and leaf_http:
                doc["http_faults"] = leaf_http  # HTTPChaos rules, as the controller writes them
            resp = await sc.push(doc)
            assert resp.status == 200, resp.body


@pytest.fixture
async def cpair(sidecars: Sidecars) -> AsyncIterator[ChaosPair]:
    async with running_pair(sidecars, ChaosPair) as pair:
        yield pair


def _delay(ms: float, peers: list[str] | None = None) -> dict[str, Any]:
    return {"id": "shop/delay", "action": "delay", "peers": peers,
            "delay": {"latency_ms": ms, "jitter_ms": 0.0, "correlation": 0.0}}


def _partition(peers: list[str]) -> dict[str, Any]:
    return {"id": "shop/part", "action": "partition", "peers": peers}


async def _timed(p: ChaosPair, request: bytes) -> tuple[bytes, float]:
    t0 = time.monotonic()
    reply = await p.stub()(request, timeout=5.0)
    return reply, time.monotonic() - t0


def _grpc_lines(lines: list[str]) -> list[str]:
    return [x for x in lines if is_grpc_line(x)]


# -- NetworkChaos delay: frames are held, on a multiplexed connection too -------------------


async def test_a_delay_on_the_callee_holds_every_grpc_answer_at_least_the_latency(
        cpair: ChaosPair) -> None:
    """§5.2 "egress only": with no target the callee pod's egress is shaped, including the
    answers it sends; netem holds bytes, never less than asked. Calls multiplexed on one
    HTTP/2 connection are each held, concurrently (netem delays packets, it does not
    serialise them)."""
    await cpair.faults(leaf=[_delay(200)], routes=leaf_route())
    reply, elapsed = await _timed(cpair, b"one")
    assert reply == b"echo:one" and elapsed >= 0.2, elapsed
    t0 = time.monotonic()
    replies = await asyncio.gather(*(cpair.stub()(f"n{i}".encode(), timeout=5)
                                     for i in range(8)))
    together = time.monotonic() - t0
    assert replies == [f"echo:n{i}".encode() for i in range(8)]
    assert 0.2 <= together < 0.2 * 4, together  # each held 200 ms, not 8 x 200 ms in a row
    await cpair.front.wait_log(lambda _: len(_grpc_lines(cpair.front.lines)) >= 9)
    assert len({field_of(x, UPSTREAM_LOCAL) for x in _grpc_lines(cpair.front.lines)}) == 1
    stats = json.loads((await cpair.leaf.admin_get("/stats")).body)
    assert stats["fault_holds"] >= 9


async def test_a_delay_on_the_caller_toward_the_callee_holds_each_request(
        cpair: ChaosPair) -> None:
    """§5.2 ``direction: to`` with a target: the caller's egress toward that peer is held
    (its requests), and traffic toward any other peer is not."""
    await cpair.faults(front=[_delay(250, peers=[LEAF_PEER])], routes=leaf_route())
    _, elapsed = await _timed(cpair, b"to-leaf")
    assert elapsed >= 0.25, elapsed
    await cpair.faults(front=[_delay(250, peers=["shop/other-9"])], routes=leaf_route())
    _, elapsed = await _timed(cpair, b"elsewhere")
    assert elapsed < 0.25, elapsed


async def test_a_delay_counts_against_the_grpc_deadline_and_ends_in_unavailable(
        cpair: ChaosPair) -> None:
    """A held answer runs past the caller's route timeout (300 ms): Envoy's local reply to a
    gRPC caller is trailers-only, UNAVAILABLE "upstream request timeout" (§1.9, §5.2)."""
    await cpair.faults(leaf=[_delay(600)], routes=leaf_route(timeout_ms=300))
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"late", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "upstream request timeout")
    assert 0.28 <= time.monotonic() - t0 < 0.6
    line = await cpair.front.wait_log(is_grpc_line)
    assert " 504 UT response_timeout " in line, line


# -- NetworkChaos partition: new connections time out, established ones stall ---------------


async def test_a_partition_stalls_an_established_http2_connection_until_the_route_timeout(
        cpair: ChaosPair) -> None:
    """§5.2 partition: drops are silent, "established ones stall, nothing is refused": the
    pooled HTTP/2 connection stays up, the call's stream gets nothing back, the route timer
    ends it (504 UT → UNAVAILABLE "upstream request timeout") and the callee never saw it."""
    await cpair.faults(routes=leaf_route(timeout_ms=300))
    assert await cpair.stub()(b"warm", timeout=5) == b"echo:warm"  # the connection is up
    await cpair.faults(front=[_partition([LEAF_PEER])], routes=leaf_route(timeout_ms=300))
    seen = len(cpair.app.calls)
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"stalled", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "upstream request timeout")
    assert 0.28 <= time.monotonic() - t0 < 0.8
    line = await cpair.front.wait_log(lambda x: is_grpc_line(x) and " 504 " in x)
    assert " 504 UT response_timeout " in line, line
    assert len(cpair.app.calls) == seen


async def test_without_a_route_timeout_a_partition_ends_at_the_callers_deadline(
        cpair: ChaosPair) -> None:
    """With no route timeout the gRPC deadline alone holds (finalTimeout, §1.9): the caller
    sees DEADLINE_EXCEEDED on its side, or the sidecar's UNAVAILABLE "upstream request
    timeout" when its grpc-timeout timer, set to the same instant, answers first."""
    await cpair.faults(routes=leaf_route())
    assert await cpair.stub()(b"warm", timeout=5) == b"echo:warm"
    await cpair.faults(front=[_partition([LEAF_PEER])], routes=leaf_route())
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"stalled", timeout=0.4))
    assert 0.38 <= time.monotonic() - t0 < 1.0
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
        err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "upstream request timeout"), \
        (err.code(), err.details())
    line = await cpair.front.wait_log(lambda x: is_grpc_line(x) and "stalled" not in x
                                      and " 200 " not in x)
    # The sidecar's grpc-timeout timer (504 UT) or the client's RST_STREAM at its deadline
    # (0 DR), never an answer from the stalled callee.
    assert " 504 UT response_timeout " in line or " 0 DR http2.remote_reset " in line, line


async def test_a_partition_makes_a_new_http2_connection_a_connect_timeout_not_a_refusal(
        cpair: ChaosPair) -> None:
    """§5.2: SYNs vanish, so a new connection waits out the connect timeout (200 ms here);
    Istio's default retryOn has ``connect-failure``, two retries: ``503 UF,URX``, and the
    gRPC caller gets UNAVAILABLE with Envoy's reset text (§1.6, §1.9)."""
    await cpair.faults(front=[_partition([LEAF_PEER])], routes=leaf_route(),
                       connect_timeout_ms={LEAF: 200})
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"never", timeout=5))
    assert time.monotonic() - t0 >= 3 * 0.2
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == ("upstream connect error or disconnect/reset before headers. "
                             "retried and the latest reset reason: connection timeout")
    line = await cpair.front.wait_log(is_grpc_line)
    assert " 503 UF,URX upstream_reset_before_response_started{connection_timeout} " in line
    assert not cpair.app.calls


async def test_a_partitioned_caller_stalls_at_the_callees_sidecar(cpair: ChaosPair) -> None:
    """§5.2: the partition is on both ends; the callee's sidecar drops what the caller's
    sends, so nothing reaches the callee's app and the caller's route timer answers."""
    await cpair.faults(leaf=[_partition([FRONT_PEER])], routes=leaf_route(timeout_ms=300))
    err = await rpc_error(cpair.stub()(b"dropped", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE,
                                           "upstream request timeout")
    assert not cpair.app.calls


# -- NetworkChaos loss and bandwidth ------------------------------------------------------


async def test_full_loss_stalls_a_grpc_call_until_the_route_timeout(cpair: ChaosPair) -> None:
    """§5.2 loss: each send lost is resent after the RTO; 100 % never gets through, so the
    stream stalls as under a partition, ended by the route timer."""
    rule = {"id": "shop/loss", "action": "loss", "peers": None,
            "loss": {"percent": 100.0, "correlation": 0.0}}
    await cpair.faults(front=[rule], routes=leaf_route(timeout_ms=300))
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"lost", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert 0.28 <= time.monotonic() - t0 < 1.0


async def test_bandwidth_holds_a_large_grpc_answer_by_its_size_over_the_rate(
        cpair: ChaosPair) -> None:
    """§5.2 bandwidth (tbf): a token bucket on bytes sent. A 60 KB answer through a
    100 kB/s bucket of 10 kB waits about (60 kB - 10 kB) / 100 kB/s = 0.5 s; a small
    answer right after the bucket refilled does not."""
    rule = {"id": "shop/bw", "action": "bandwidth", "peers": None,
            "bandwidth": {"rate_bytes_per_s": 100_000, "buffer_bytes": 10_000}}
    await cpair.faults(leaf=[rule], routes=leaf_route())
    big = b"x" * 60_000
    reply, elapsed = await _timed(cpair, big)
    assert reply == b"echo:" + big
    assert 0.45 <= elapsed < 1.5, elapsed
    await asyncio.sleep(0.2)  # the bucket refills (10 kB in 0.1 s)
    _, small = await _timed(cpair, b"s")
    assert small < 0.1, small


# -- PodChaos pod-kill: every stream on the connection is reset --------------------------


async def test_killing_the_callee_pod_resets_every_stream_on_the_connection_with_uc(
        cpair: ChaosPair) -> None:
    """§5.3 pod-kill deletes the pod: its processes die and the kernel closes their sockets.
    Envoy's CodecClient sees RemoteClose on a connected HTTP/2 connection and resets every
    active stream with ConnectionTermination: flag ``UC``, body "…reset reason: connection
    termination", not retried by Istio's default retryOn (connect-failure covers only
    connects); each gRPC caller gets UNAVAILABLE with that text (§1.6, §1.9)."""
    await cpair.faults(routes=leaf_route())
    calls = [asyncio.ensure_future(cpair.stub()(b"sleep:3", timeout=5))
             for i in range(5)]
    async with asyncio.timeout(3):  # the app records calls; it has no event to wait on
        while len(cpair.app.calls) < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    t0 = time.monotonic()
    cpair.leaf.kill()  # the pod's sidecar and app go together
    await cpair.app.stop()
    errors = [await rpc_error(c) for c in calls]
    assert time.monotonic() - t0 < 1.0
    assert {(e.code(), e.details()) for e in errors} == {
        (grpc.StatusCode.UNAVAILABLE, TERMINATION)}
    await cpair.front.wait_log(lambda _: len(_grpc_lines(cpair.front.lines)) >= 5)
    lines = _grpc_lines(cpair.front.lines)
    for line in lines:
        assert " 503 UC upstream_reset_before_response_started{connection_termination} " \
            in line, line
    assert len({field_of(x, UPSTREAM_LOCAL) for x in lines}) == 1  # one connection, all reset


async def test_after_the_kill_the_dead_connection_is_not_reused(cpair: ChaosPair) -> None:
    """The pool drops a closed connection (Envoy's onConnectionEvent): the next call dials
    again and, with nothing listening, is a connect failure retried twice, ``503 UF,URX``
    with "remote connection failure" — not another reset on the dead connection."""
    await cpair.faults(routes=leaf_route())
    assert await cpair.stub()(b"warm", timeout=5) == b"echo:warm"
    cpair.leaf.kill()
    await cpair.app.stop()
    await asyncio.wait_for(cpair.leaf.proc.wait(), 5)
    err = await rpc_error(cpair.stub()(b"after", timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "remote connection failure" in err.details(), err.details()
    line = await cpair.front.wait_log(lambda x: is_grpc_line(x) and " 503 " in x)
    assert " 503 UF,URX " in line, line


# -- HTTPChaos (§5.5): HTTP/1.1 rules, HTTP/2 streams pass -----------------------------------


async def test_httpchaos_rules_do_not_act_on_http2_streams_and_are_counted_as_such(
        cpair: ChaosPair) -> None:
    """Chaos Mesh has no gRPC chaos (chaos-mesh#2611) and the local HTTPChaos rules are
    HTTP/1.1 ones: an abort-everything rule on the leaf's app port leaves a gRPC call over
    HTTP/2 alone, and the sidecar counts the stream in ``http_chaos_http2_unaffected`` (the
    controller puts a Warning event on the chaos object, tests/unit/
    test_httpchaos_lifecycle.py)."""
    abort_all = {"id": "shop/http", "target": "Request",
                 "selector": {"port": cpair.app.port, "path": "*"}, "abort": True}
    await cpair.faults(routes=leaf_route(), leaf_http=[abort_all])
    assert await cpair.stub()(b"through", timeout=5) == b"echo:through"
    stats = json.loads((await cpair.leaf.admin_get("/stats")).body)
    assert stats["http_chaos_http2_unaffected"] == 1
    assert stats["http_chaos_matched"] == 0 and stats["http_chaos_aborted"] == 0


# -- VirtualService fault.abort.grpcStatus (§2.4) --------------------------------------------


def _route_with_fault(fault: dict[str, Any]) -> dict[str, Any]:
    routes = leaf_route(timeout_ms=3000)
    routes[LEAF][0]["fault"] = fault
    return routes


async def test_a_grpc_status_abort_is_trailers_only_with_its_code_and_fault_filter_abort(
        cpair: ChaosPair) -> None:
    """Envoy ``FaultFilter::abortStatus``: a gRPC abort has HTTP status 200, and
    ``abortWithStatus`` → ``sendLocalReply(200, "fault filter abort", …, grpc_status,
    FaultAbort)``: to a gRPC request a trailers-only answer with that grpc-status and the
    body as grpc-message; flag FI, details fault_filter_abort; the router never runs, so
    the callee sees nothing (§2.4, §1.9)."""
    fmt = "%PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% " \
          "%GRPC_STATUS% %GRPC_STATUS(NUMBER)% %UPSTREAM_HOST%\n"
    await cpair.faults(routes=_route_with_fault({"abort": {
        "grpc_status": 8, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}),
        mesh={"access_log": {"enabled": True, "encoding": "TEXT", "format": fmt}})
    err = await rpc_error(cpair.stub()(b"aborted", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "fault filter abort")
    line = await cpair.front.wait_log(lambda x: x.startswith("HTTP/2"))
    assert line == "HTTP/2 200 FI fault_filter_abort ResourceExhausted 8 -", line
    assert not cpair.app.calls


async def test_an_http_status_abort_on_a_grpc_route_maps_through_http_to_grpc_status(
        cpair: ChaosPair) -> None:
    """The HTTP abort on a gRPC request: the local reply is trailers-only with
    ``httpToGrpcStatus(503)`` = 14 UNAVAILABLE and "fault filter abort" (§1.9, §2.4)."""
    await cpair.faults(routes=_route_with_fault({"abort": {
        "http_status": 503, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}))
    err = await rpc_error(cpair.stub()(b"aborted", timeout=5))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "fault filter abort")
    line = await cpair.front.wait_log(is_grpc_line)
    assert " 503 FI fault_filter_abort " in line, line


async def test_a_delay_then_grpc_abort_holds_the_call_then_answers_its_code(
        cpair: ChaosPair) -> None:
    """``postDelayInjection``: "Delays can be followed by aborts"; the gRPC abort comes
    after the hold (flags DI,FI)."""
    always = {"numerator": 100, "denominator": "HUNDRED"}
    await cpair.faults(routes=_route_with_fault({
        "delay": {"fixed_delay_ms": 200, "percentage": always},
        "abort": {"grpc_status": 5, "percentage": always}}))
    t0 = time.monotonic()
    err = await rpc_error(cpair.stub()(b"late-abort", timeout=5))
    assert time.monotonic() - t0 >= 0.2
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "fault filter abort")
    line = await cpair.front.wait_log(is_grpc_line)
    assert " 200 DI,FI fault_filter_abort " in line, line


async def test_a_grpc_status_abort_answers_a_plain_http_request_200_fault_filter_abort(
        cpair: ChaosPair) -> None:
    """``sendLocalReply`` shapes the reply as gRPC only for a gRPC request
    (``isGrpcRequestHeaders``): an HTTP/1.1 request on the same route gets the abort's HTTP
    status, 200, with the text body "fault filter abort" and flag FI (§2.4)."""
    await cpair.faults(routes=_route_with_fault({"abort": {
        "grpc_status": 14, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}))
    resp = await cpair.front.pool.request(
        "GET", f"http://127.0.0.1:{cpair.front.ports['outbound']}/plain",
        {"host": "leaf:8080"}, b"", timeout=5)
    assert (resp.status, resp.body) == (200, b"fault filter abort")
    assert "grpc-status" not in resp.headers
    line = await cpair.front.wait_log(lambda x: "/plain " in x)
    assert " 200 FI fault_filter_abort " in line, line
    assert not cpair.app.calls


# -- PodChaos container-kill of the gRPC server: the callee's sidecar answers ----------------

# The app as a process of its own, so that it can die as a killed container does (SIGKILL:
# no GOAWAY, no RST_STREAM, the kernel closes its sockets). It prints its port, then serves
# one unary method that sleeps the seconds it is sent.
_APP = """
import asyncio, grpc, sys
async def unary(request, context):
    await asyncio.sleep(float(request.decode()))
    return b"done"
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "meshchaos.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


async def test_killing_the_grpc_server_container_is_answered_by_its_sidecar_and_retried(
        cpair: ChaosPair) -> None:
    """§5.3 container-kill: the app dies, its sidecar lives. The callee's Envoy sees its
    HTTP/2 connection to the app close under the streams (ConnectionTermination, ``503 UC``)
    and answers each caller trailers-only, UNAVAILABLE (§1.9). That answer comes *via
    upstream* to the caller's sidecar, where Istio's default retryOn ``unavailable`` matches
    its grpc-status 14 (§1.3, §2.2): two retries, each refused by the dead app's port
    (``503 UF,URX`` at the callee, whose inbound route retries a reset before the request),
    then the last answer goes to the caller with ``URX``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _APP, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        port = int((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
        await cpair.faults(routes=leaf_route(), app_port=port)
        call = asyncio.ensure_future(cpair.stub()(b"3", timeout=5))
        await asyncio.sleep(0.5)  # the call is in the app (it sleeps 3 s)
        os.killpg(proc.pid, signal.SIGKILL)
        err = await rpc_error(call)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # The last try's answer: the callee's inbound retried its connect to the dead app
    # (Istio's inbound reset-before-request policy, §2.2) before giving up.
    assert err.details().startswith(
        "upstream connect error or disconnect/reset before headers. retried and the latest "
        "reset reason: remote connection failure"), err.details()
    leaf = await cpair.leaf.wait_log(lambda _: len(_grpc_lines(cpair.leaf.lines)) >= 3)
    leaf_lines = _grpc_lines(cpair.leaf.lines)
    assert " 503 UC upstream_reset_before_response_started{connection_termination} " \
        in leaf_lines[0], leaf
    # Each retry reaches the callee's sidecar, whose own connect retries all meet the refusal.
    assert all(" 503 UF,URX upstream_reset_before_response_started{remote_connection_failure"
               in x for x in leaf_lines[1:3]), "\n".join(leaf_lines)
    front = await cpair.front.wait_log(is_grpc_line)
    assert " 200 URX via_upstream " in front and front.rstrip().endswith('"3"'), front
