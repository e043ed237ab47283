"""A 4-hop chain of lean apps, side by side in one run: direct, bare proxies, sidecars.

Issue 2 asks for throughput through a 4-service chain at concurrency 1 and 32 against a
direct call in the same run. ``bench_chain.py`` drives the reference chain (whose apps run
the OpenTelemetry SDK and simulated work, and cost more than their sidecars); this one
isolates the mesh: four lean apps (``localmesh.http`` server and client, one task per
request, forwarding ``x-request-id`` and ``traceparent``) in a line, app1 → app2 → app3 →
app4, wired three ways in the same run:

- **direct**: each app calls the next app's port;
- **bare**: the sidecars' positions (inbound in front of each app, outbound behind apps 1 to 3:
  seven passes per request) held by the floor proxy of ``bench_sidecar.py`` (uvloop +
  httptools, no sidecar work), one process per pod with two listeners;
- **sidecars**: one real sidecar per pod (``python -m localmesh.sidecar``, pushed the
  configuration the mesh would push: the next service's endpoint is its sidecar's inbound
  listener; access log on, 1 % sampling, no OTLP endpoint, as in ``bench_sidecar.py``).

The closed-loop load (c workers, kept-alive connections) enters app1 (through its inbound
listener when there is one). Per level it prints requests/s, p50/p99 and the CPU µs each
process kind spent per chain request (utime+stime over the window). Target (issue 2):
1,200 requests/s through the chain at c=32 on this 2-core machine.

Usage: .venv/bin/python benchmarks/bench_hops.py [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_sidecar import Procs, _cpu_seconds, _pct

from localmesh.http import ConnectionPool

HOPS = 4
TARGET_RPS = 1200.0

# argv: what to call next ("" for the leaf: a port, or with a proxy an authority), proxy port
# ("" for none), its name, and optionally the port to listen on. Prints its port.
_HOP = r"""
import asyncio, sys
from localmesh.http import ConnectionPool, Response, serve
nxt, proxy, name = sys.argv[1], sys.argv[2], sys.argv[3]
pool = ConnectionPool(max_idle_per_host=256)
LEAF = Response(200, {"content-type": "text/plain"}, b"ok")
PROPAGATED = ("x-request-id", "traceparent")
if proxy:
    host, port, target = "127.0.0.1", int(proxy), f"http://{nxt}/"
    authority = nxt
elif nxt:
    host, port, target = "127.0.0.1", int(nxt), "/"
    authority = f"127.0.0.1:{nxt}"
async def handle(req, conn):
    if not nxt:
        return LEAF
    headers = {k: req.headers[k] for k in PROPAGATED if k in req.headers}
    up = await pool.acquire(host, port, 5.0)
    try:
        resp = await up.send("GET", target, authority, headers, b"")
    except BaseException:
        pool.discard(up)
        raise
    pool.release(up)
    return Response(resp.status, {"content-type": "text/plain"}, resp.body + b" " + name.encode())
async def main():
    srv = await serve(handle, port=int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
import uvloop
uvloop.run(main())
"""


@dataclass
class Wiring:
    """One way of connecting the four apps: where the load enters, which pids are which."""

    name: str
    entry: int
    authority: str
    apps: list[int] = field(default_factory=list)
    proxies: list[int] = field(default_factory=list)


def _service(i: int) -> str:
    return f"app{i}.bench.svc.cluster.local"


def _hop_doc(i: int, app_port: int, next_inbound: int | None) -> dict[str, Any]:
    """The configuration the mesh pushes to app i's sidecar (see localmesh.xds)."""
    services = {}
    if next_inbound is not None:
        services[_service(i + 1)] = {
            "name": f"app{i + 1}", "namespace": "bench", "ports": [8080], "endpoints": [
                {"pod": f"app{i + 1}-1", "namespace": "bench", "host": "127.0.0.1",
                 "port": next_inbound, "labels": {"app": f"app{i + 1}"}, "ready": True}]}
    return {
        "version": 1,
        "node": {"pod": f"app{i}-1", "namespace": "bench", "service": f"app{i}",
                 "mode": "sidecar", "app_port": app_port},
        "mesh": {"honor_app_envoy_headers": False, "sampling_percent": 1.0,
                 "access_log": {"enabled": True, "encoding": "TEXT", "format": ""},
                 "connect_timeout_ms": 1000, "otlp_endpoint": ""},
        "services": services, "routes": {}, "faults": [],
    }


async def _direct(procs: Procs) -> Wiring:
    w = Wiring("direct", 0, "")
    nxt = ""
    for i in range(HOPS, 0, -1):
        pid, port = await procs.python(_HOP, nxt, "", f"app{i}")
        w.apps.insert(0, pid)
        nxt = str(port)
    w.entry, w.authority = int(nxt), f"127.0.0.1:{nxt}"
    return w


async def _bare(procs: Procs) -> Wiring:
    """Pod i: a floor proxy process with an inbound listener (→ app i) and an outbound one
    (→ pod i+1's inbound listener)."""
    w = Wiring("bare proxies", 0, "app1.bench:8080")
    next_inbound: int | None = None
    for i in range(HOPS, 0, -1):
        # The proxy connects upstream only when a caller connects, so app i may start after
        # it, on a port picked here, knowing the outbound listener's port.
        app_port = _free_port()
        upstreams = [app_port] if next_inbound is None else [app_port, next_inbound]
        ppid, ports = await procs.bare_proxies(*upstreams)
        nxt, proxy = ("", "") if next_inbound is None else (f"app{i + 1}.bench:8080",
                                                           str(ports[1]))
        pid, _ = await procs.python(_HOP, nxt, proxy, f"app{i}", str(app_port))
        w.apps.insert(0, pid)
        w.proxies.insert(0, ppid)
        next_inbound = ports[0]
    assert next_inbound is not None
    w.entry = next_inbound
    return w


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sidecars(procs: Procs) -> Wiring:
    w = Wiring("sidecars", 0, "app1.bench:8080")
    next_inbound: int | None = None
    for i in range(HOPS, 0, -1):
        spid, ports = await procs.sidecar(f"app{i}", 1)
        nxt = f"app{i + 1}.bench:8080" if next_inbound is not None else ""
        pid, port = await procs.python(_HOP, nxt, str(ports["outbound"]) if nxt else "",
                                       f"app{i}")
        await procs.push(ports["admin"], _hop_doc(i, port, next_inbound))
        w.apps.insert(0, pid)
        w.proxies.insert(0, spid)
        next_inbound = ports["inbound"]
    assert next_inbound is not None
    w.entry = next_inbound
    return w


@dataclass
class Level:
    wiring: str
    concurrency: int
    rps: float
    p50: float
    p99: float
    app_us: float
    proxy_us: float
    own_us: float


async def _round(w: Wiring, pool: ConnectionPool, concurrency: int,
                 seconds: float) -> list[float]:
    """``concurrency`` closed-loop workers for ``seconds``: every request's latency (ms)."""
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await pool.acquire("127.0.0.1", w.entry, 5.0)
        try:
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                resp = await conn.send("GET", "/", w.authority, {}, b"")
                lat.append((time.perf_counter() - t) * 1000)
                if resp.status != 200 or not resp.body.endswith(b"app1"):
                    raise RuntimeError(f"{w.name}: {resp.status} {resp.body[:200]!r}")
        finally:
            conn.abort()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat


async def _drive(w: Wiring, concurrency: int, seconds: float) -> Level:
    pool = ConnectionPool(max_idle_per_host=256)
    try:
        await _round(w, pool, concurrency, 0.3)  # warm every connection pool along the chain
        apps0 = sum(_cpu_seconds(p) for p in w.apps)
        prox0 = sum(_cpu_seconds(p) for p in w.proxies)
        own0 = time.process_time()
        start = time.perf_counter()
        lat = await _round(w, pool, concurrency, seconds)
        wall = time.perf_counter() - start
    finally:
        await pool.close()
    n = len(lat)
    return Level(w.name, concurrency, n / wall, _pct(lat, 0.5), _pct(lat, 0.99),
                 (sum(_cpu_seconds(p) for p in w.apps) - apps0) / n * 1e6,
                 (sum(_cpu_seconds(p) for p in w.proxies) - prox0) / n * 1e6,
                 (time.process_time() - own0) / n * 1e6)


async def run(seconds: float) -> list[Level]:
    levels: list[Level] = []
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            wirings = [await _direct(procs), await _bare(procs), await _sidecars(procs)]
            for c in (1, 32):
                for w in wirings:  # the three side by side at each level
                    levels.append(await _drive(w, c, seconds))
        finally:
            await procs.close()
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    args = parser.parse_args()
    import uvloop
    load0 = os.getloadavg()[0]
    levels = uvloop.run(run(args.duration))
    print(f"# 4-hop chain of lean apps (load average before {load0:.2f}, "
          f"after {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)\n")
    print("| wiring | c | req/s | p50 / p99 ms | CPU µs per chain request: apps / proxies "
          "/ load generator | note |")
    print("|---|---|---|---|---|---|")
    direct = {lv.concurrency: lv for lv in levels if lv.wiring == "direct"}
    for lv in levels:
        ratio = lv.rps / direct[lv.concurrency].rps
        note = f"{ratio:.0%} of direct"
        if lv.wiring == "sidecars" and lv.concurrency == 32:
            verdict = "met" if lv.rps >= TARGET_RPS else "MISSED"
            note += f"; target ≥{TARGET_RPS:,.0f} req/s: {verdict}"
        print(f"| {lv.wiring} | {lv.concurrency} | {lv.rps:,.0f} | {lv.p50:.2f} / {lv.p99:.2f} | "
              f"{lv.app_us:,.0f} / {lv.proxy_us:,.0f} / {lv.own_us:,.0f} | {note} |")


if __name__ == "__main__":
    main()
