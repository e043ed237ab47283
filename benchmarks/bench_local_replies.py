"""Local replies of a sidecar that must come at once: prints one table.

Measures, on loopback, the latency a client sees (p50 / p99 / max over ``--requests``):
- the ingress gateway's ``404 NR`` for a Host no Gateway-bound VirtualService routes
  (docs/fidelity.md §1.6; the issue's target: under 50 ms, where a loop through the gateway
  took 5.6 s), on a keep-alive connection and on a new connection per request;
- a sidecar's loop guard, ``503 UH`` on ``BlackHoleCluster`` for a passthrough to its own
  listener (§1.6);
- the ``431`` for a request head over Envoy's 60 KiB (§1.8), new connection each time.

Nothing goes upstream in any of them. Usage:
``.venv/bin/python benchmarks/bench_local_replies.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localmesh.http import ConnectionPool

NS = "shop"


async def _start_sidecar(tmp: Path, pod: str, mode: str) -> tuple[asyncio.subprocess.Process,
                                                                   dict[str, int]]:
    ports_file = tmp / f"{pod}.ports"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "localmesh.sidecar", "--pod", pod, "--namespace", NS,
        "--service", pod.rsplit("-", 1)[0], "--mode", mode, "--ports-file", str(ports_file),
        stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
    async with asyncio.timeout(20):
        while not ports_file.exists():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.02)
    return proc, json.loads(ports_file.read_text())


def _config(pod: str, mode: str) -> dict[str, Any]:
    route = {"name": "shop", "match": [], "timeout_ms": 0, "retries": None,
             "destinations": [{"host": f"front.{NS}.svc.cluster.local", "subset": "",
                               "port": 8080, "weight": 100}]}
    return {"version": 1,
            "node": {"pod": pod, "namespace": NS, "service": pod, "mode": mode, "app_port": 0},
            "mesh": {"honor_app_envoy_headers": False, "sampling_percent": 0.0,
                     "access_log": {"enabled": True, "encoding": "TEXT", "format": ""},
                     "connect_timeout_ms": 10000, "otlp_endpoint": ""},
            "services": {}, "routes": {}, "subsets": {}, "connect_timeout_ms": {},
            "gateway_routes": [{"hosts": ["shop.example.com"], "routes": [route]}]
            if mode == "gateway" else [],
            "faults": []}


def _row(name: str, took: list[float]) -> str:
    ms = sorted(t * 1000 for t in took)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {name} | {statistics.median(ms):.2f} / {p99:.2f} / {ms[-1]:.2f} ms |"


async def _timed(n: int, once: Any) -> list[float]:
    took = []
    for _ in range(n):
        start = time.perf_counter()
        await once()
        took.append(time.perf_counter() - start)
    return took


async def _raw(port: int, head: bytes, expect: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    data = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert int(data.split(b" ", 2)[1]) == expect, data


async def main(requests: int) -> None:
    load_before = os.getloadavg()[0]
    pool = ConnectionPool()
    with tempfile.TemporaryDirectory() as tmp:
        gw, gw_ports = await _start_sidecar(Path(tmp), "istio-ingressgateway-1", "gateway")
        sc, sc_ports = await _start_sidecar(Path(tmp), "front-1", "sidecar")
        try:
            for ports, pod, mode in ((gw_ports, "istio-ingressgateway-1", "gateway"),
                                     (sc_ports, "front-1", "sidecar")):
                resp = await pool.request("POST", f"http://127.0.0.1:{ports['admin']}/config",
                                          {"content-type": "application/json"},
                                          json.dumps(_config(pod, mode)).encode(), timeout=5)
                assert resp.status == 200, resp.body
            ingress = f"http://127.0.0.1:{gw_ports['outbound']}/nowhere"

            async def keep_alive() -> None:
                resp = await pool.request("GET", ingress, {"host": "nobody.example.com"},
                                          timeout=5)
                assert resp.status == 404

            unmatched = (b"GET /nowhere HTTP/1.1\r\nhost: nobody.example.com\r\n"
                         b"connection: close\r\n\r\n")
            own = sc_ports["outbound"]
            loop_head = (f"GET http://127.0.0.1:{own}/loop HTTP/1.1\r\n"
                         f"host: 127.0.0.1:{own}\r\n\r\n").encode()
            big_head = (b"GET /big HTTP/1.1\r\nhost: front:8080\r\nx-big: "
                        + b"v" * (61 * 1024) + b"\r\n\r\n")
            await _timed(20, keep_alive)  # warm up
            rows = [
                _row("ingress 404 NR, keep-alive", await _timed(requests, keep_alive)),
                _row("ingress 404 NR, new connection", await _timed(
                    requests, lambda: _raw(gw_ports["outbound"], unmatched, 404))),
                _row("loop guard 503 UH, new connection", await _timed(
                    requests, lambda: _raw(own, loop_head, 503))),
                _row("head over 60 KiB: 431, new connection", await _timed(
                    requests, lambda: _raw(sc_ports["inbound"], big_head, 431))),
            ]
        finally:
            for proc in (gw, sc):
                os.killpg(proc.pid, signal.SIGTERM)
                await proc.wait()
            await pool.close()
    print(f"load average before: {load_before:.2f}; {requests} requests each")
    print("| local reply | p50 / p99 / max |")
    print("|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))
