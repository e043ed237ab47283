"""Ingress gateway mode, request bodies and the lean client API.

docs/architecture.md "Sidecar"; RFC 9112 message framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from localmesh.http import ConnectionPool, Request, Response, ServerConnection, serve
from tests.conformance.conftest import LEAF, Pair, Sidecars, config, field_of, leaf_route


async def test_gateway_routes_origin_form_requests_by_gateway_virtual_service(
        pair: Pair, sidecars: Sidecars) -> None:
    """docs/architecture.md: "Gateway mode: the outbound listener is the ingress; origin-form
    requests are routed by Host (and by VirtualServices bound to a gateway) to a Service"."""
    await pair.configure()
    gw = await sidecars.start("ingress-1", "istio-ingressgateway", mode="gateway")
    doc = config("ingress-1", "istio-ingressgateway", services=pair.services())
    doc["node"]["mode"] = "gateway"
    doc["gateway_routes"] = [{"hosts": ["*"], "routes": leaf_route(prefix="/api")[LEAF]}]
    assert (await gw.push(doc)).status == 200
    url = f"http://127.0.0.1:{gw.ports['outbound']}"
    resp = await pair.pool.request("GET", f"{url}/api/orders", timeout=5)
    assert resp.status == 200
    assert pair.app.seen[-1].path == "/api/orders"
    assert (await pair.pool.request("GET", f"{url}/other", timeout=5)).status == 404
    by_host = await pair.pool.request("GET", f"{url}/direct", {"host": "leaf.shop:8080"},
                                      timeout=5)
    assert by_host.status == 404  # a gateway VS with hosts "*" owns every Host
    line = await gw.wait_log(lambda ln: "/api/orders" in ln)
    assert f"outbound|8080||{LEAF}" in line


async def test_post_body_crosses_both_sidecars(pair: Pair) -> None:
    """Bodies are forwarded whole with their length; %BYTES_RECEIVED% counts them (§2.3)."""
    await pair.configure()
    payload = json.dumps({"items": list(range(2000))}).encode()
    conn = await pair.pool.acquire("127.0.0.1", pair.front.ports["outbound"], 5)
    resp = await conn.send("POST", "http://leaf:8080/submit", "leaf:8080",
                           {"content-type": "application/json"}, payload)
    pair.pool.release(conn)
    assert resp.status == 200
    assert json.loads(resp.body)["body"].encode() == payload
    line = await pair.front.wait_log(lambda ln: "POST /submit" in ln)
    assert f" {len(payload)} {len(resp.body)} " in line


async def test_chunked_request_body_is_reframed(pair: Pair) -> None:
    """RFC 9112 §7.1: a chunked body is decoded; the sidecar forwards it with a length."""
    await pair.configure()
    reader, writer = await asyncio.open_connection("127.0.0.1", pair.front.ports["outbound"])
    writer.write(b"POST http://leaf:8080/chunks HTTP/1.1\r\nhost: leaf:8080\r\n"
                 b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["body"] == "hello world"
    assert "transfer-encoding" not in pair.app.seen[-1].headers


async def test_cancelled_client_request_closes_its_connection() -> None:
    """The lean client's contract: cancelling a request (or its timeout) closes the connection,
    so the server sees the caller leave — the H1 reset of docs/fidelity.md §1.1."""
    gone = asyncio.Event()

    async def handler(req: Request, conn: ServerConnection) -> Response:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            gone.set()
            raise
        return Response(200)

    server = await serve(handler)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool()
    try:
        task = asyncio.create_task(pool.request("GET", f"http://127.0.0.1:{port}/", timeout=5))
        await asyncio.sleep(0.1)
        task.cancel()
        async with asyncio.timeout(2):
            await gone.wait()
        gone.clear()
        with contextlib.suppress(TimeoutError):
            await pool.request("GET", f"http://127.0.0.1:{port}/", timeout=0.1)
        async with asyncio.timeout(2):
            await gone.wait()
        assert pool.idle_count("127.0.0.1", port) == 0
    finally:
        await pool.close()
        server.close()


async def test_client_reuses_keep_alive_connections() -> None:
    """RFC 9112 §9.3 persistence: sequential requests reuse one connection."""
    peers: set[tuple[str, int]] = set()

    async def handler(req: Request, conn: ServerConnection) -> Response:
        peers.add(conn.peer)
        return Response(200, {"content-type": "text/plain"}, b"ok")

    server = await serve(handler)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool()
    try:
        for _ in range(5):
            assert (await pool.request("GET", f"http://127.0.0.1:{port}/")).body == b"ok"
        assert len(peers) == 1
        head = await pool.request("HEAD", f"http://127.0.0.1:{port}/")
        assert head.status == 200 and head.body == b""
    finally:
        await pool.close()
        server.close()


class _TwoWrites(BaseHTTPRequestHandler):
    """Python's http.server: headers and body leave in two writes, Nagle on."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.write(b"pong")


async def test_two_segment_responses_do_not_wait_for_delayed_acks(
        sidecars: Sidecars) -> None:
    """Linux delays ACKs up to 40 ms on a request/response connection; an app that writes
    headers and body separately (Nagle on) then stalls each response by that much on a
    keep-alive upstream. The sidecar ACKs incomplete messages at once (TCP_QUICKACK)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TwoWrites)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app_port = server.server_address[1]
    try:
        sc = await sidecars.start("py-1", "py", app_port=app_port)
        assert (await sc.push(config("py-1", "py", services={}, app_port=app_port))).status \
            == 200
        pool = ConnectionPool()
        took = []
        for _ in range(15):
            start = time.monotonic()
            resp = await pool.request("GET", f"http://127.0.0.1:{sc.ports['inbound']}/ping",
                                      {"host": "py:8080"}, timeout=5)
            took.append(time.monotonic() - start)
            assert resp.body == b"pong"
        await pool.close()
        assert statistics.median(took) < 0.030, sorted(took)
    finally:
        server.shutdown()
        server.server_close()


async def test_gateway_without_gateway_routes_answers_404_nr_at_once_without_looping(
        pair: Pair, sidecars: Sidecars) -> None:
    """§1.6 gateway: Istio's gateway route table holds only the hosts of Gateway-bound
    VirtualServices (``buildGatewayHTTPRouteConfig``; none: the "blackhole" virtual host with
    no routes), so a request no Gateway + VirtualService routes is Envoy's ``404 NR``: not a
    Service's default route by Host, and never the passthrough to the gateway itself (which
    looped ~9,990 times into ``503 UF,URX`` after 5.6 s)."""
    await pair.configure()
    gw = await sidecars.start("ingress-1", "istio-ingressgateway", mode="gateway")
    doc = config("ingress-1", "istio-ingressgateway", services=pair.services())
    doc["node"]["mode"] = "gateway"
    assert (await gw.push(doc)).status == 200
    url = f"http://127.0.0.1:{gw.ports['outbound']}"
    for host in ("leaf.shop:8080", f"127.0.0.1:{gw.ports['outbound']}"):
        start = time.monotonic()
        resp = await pair.pool.request("GET", f"{url}/nowhere", {"host": host}, timeout=5)
        took = time.monotonic() - start
        assert (resp.status, resp.body) == (404, b"")
        # Bounded for a loaded 2-core box; a loop through the gateway takes seconds.
        assert took < 0.5, took
    await asyncio.sleep(0.2)  # the access log flushes every 50 ms: let any loop show itself
    lines = [ln for ln in gw.lines if "/nowhere" in ln]
    assert len(lines) == 2, lines  # one line per request: nothing went round again
    for line in lines:
        assert field_of(line, 2) == "404" and field_of(line, 3) == "NR"
        assert field_of(line, 4) == "route_not_found"
        assert field_of(line, 16) == "-" and field_of(line, 21) == "-"  # no cluster, no route
    assert not pair.app.seen


async def test_gateway_host_outside_its_virtual_services_is_404_nr(
        pair: Pair, sidecars: Sidecars) -> None:
    """§1.6 gateway: Envoy picks the virtual host by the Host header among the domains Istio
    wrote for the gateway's VirtualServices (the host, or a ``*.suffix`` wildcard); another
    Host has no virtual host, so no route: ``404 NR``."""
    await pair.configure()
    gw = await sidecars.start("ingress-1", "istio-ingressgateway", mode="gateway")
    doc = config("ingress-1", "istio-ingressgateway", services=pair.services())
    doc["node"]["mode"] = "gateway"
    doc["gateway_routes"] = [{"hosts": ["shop.example.com", "*.shop.example.com"],
                              "routes": leaf_route()[LEAF]}]
    assert (await gw.push(doc)).status == 200
    url = f"http://127.0.0.1:{gw.ports['outbound']}"
    for host, status in (("shop.example.com", 200), ("eu.shop.example.com:80", 200),
                         (".shop.example.com", 404), ("leaf.shop:8080", 404),
                         ("example.com", 404)):
        resp = await pair.pool.request("GET", f"{url}/h", {"host": host}, timeout=5)
        assert resp.status == status, host
    line = await gw.wait_log(lambda ln: '"example.com"' in ln)
    assert field_of(line, 3) == "NR" and field_of(line, 21) == "-"


async def test_client_sends_absolute_form_through_a_proxy(pair: Pair) -> None:
    """RFC 9112 §3.2.2: to a proxy a client sends the absolute-form target; the outbound
    listener is the app's HTTP_PROXY (docs/architecture.md)."""
    await pair.configure()
    resp = await pair.pool.request("GET", "http://leaf:8080/proxied?x=1", timeout=5,
                                   proxy=f"http://127.0.0.1:{pair.front.ports['outbound']}")
    assert resp.status == 200
    assert pair.app.seen[-1].path == "/proxied?x=1"
    assert pair.app.seen[-1].headers["host"] == "leaf:8080"
