"""A unary gRPC call direct vs through two sidecars (caller's outbound, callee's inbound), c=1.

Issue 16 asks for the added latency per gRPC hop at c=1 (target ≤ 0.3 ms p50, 1 ms p99),
measured side by side in one run against a direct call. The server is grpcio's aio server
with a generic handler on raw bytes (its own process); the two sidecars are real
``python -m localmesh.sidecar`` processes whose configuration gives the callee's Service
port an HTTP/2 cluster (``h2_ports``, as a ``grpc`` port name would); the client is
grpcio's blocking stub in this process, one channel per path, calls alternating between
the two paths in rounds so both see the same machine load. It also prints each sidecar's
CPU (utime+stime) per call over the sidecar path's calls.

Usage: .venv/bin/python benchmarks/bench_grpc.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from bench_sidecar import _cpu_seconds

_SERVER = r"""
import asyncio, sys, grpc
async def unary(request, context):
    return request
async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""
NS = "bench"
LEAF = f"leaf.{NS}.svc.cluster.local"


def _service(name: str, pod: str, port: int, *, h2: bool) -> dict[str, Any]:
    """A Service of the sidecar's config with one ready endpoint; ``h2``: its port is
    ``grpc``, an HTTP/2 cluster (docs/fidelity.md §2.5)."""
    svc: dict[str, Any] = {"name": name, "namespace": NS, "ports": [8080], "endpoints": [
        {"pod": pod, "namespace": NS, "host": "127.0.0.1", "port": port,
         "labels": {"app": name}, "ready": True}]}
    if h2:
        svc["h2_ports"] = [8080]
    return svc


def _doc(pod: str, service: str, app_port: int,
         services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": 1,
        "node": {"pod": pod, "namespace": NS, "service": service, "mode": "sidecar",
                 "app_port": app_port},
        "mesh": {"honor_app_envoy_headers": False, "sampling_percent": 1.0,
                 "access_log": {"enabled": True, "encoding": "TEXT"},
                 "connect_timeout_ms": 10000, "otlp_endpoint": ""},
        "services": services, "routes": {}, "subsets": {}, "connect_timeout_ms": {},
        "gateway_routes": [], "faults": []}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sidecar(tmp: Path, pod: str, service: str, app_port: int, inbound: int,
             leaf_inbound: int) -> subprocess.Popen[bytes]:
    cfg = tmp / f"{pod}.json"
    cfg.write_text(json.dumps(_doc(pod, service, app_port, {
        LEAF: _service("leaf", "leaf-1", leaf_inbound, h2=True)})))
    ports = tmp / f"{pod}.ports"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localmesh.sidecar", "--pod", pod, "--namespace", NS,
         "--service", service, "--app-port", str(app_port), "--inbound-port", str(inbound),
         "--ports-file", str(ports), "--config", str(cfg)],
        stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not ports.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"sidecar {pod} did not start")
        time.sleep(0.02)
    return proc


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=500, help="calls per path per round")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        try:
            server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE)
            procs.append(server)
            assert server.stdout is not None
            app_port = int(server.stdout.readline())
            leaf_in = _free_port()
            leaf = _sidecar(tmp, "leaf-1", "leaf", app_port, leaf_in, leaf_in)
            procs.append(leaf)
            front = _sidecar(tmp, "front-1", "front", 1, 0, leaf_in)
            procs.append(front)
            cpu = {"front": 0.0, "leaf": 0.0}
            front_out = json.loads((tmp / "front-1.ports").read_text())["outbound"]
            opts = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]
            direct = grpc.insecure_channel(f"127.0.0.1:{app_port}", options=opts)
            meshed = grpc.insecure_channel(
                f"127.0.0.1:{front_out}",
                options=[*opts, ("grpc.default_authority", "leaf:8080")])
            calls = {name: ch.unary_unary("/bench.Echo/Unary")
                     for name, ch in (("direct", direct), ("sidecars", meshed))}
            for call in calls.values():  # warm: connections, caches, the sidecars' memo
                for _ in range(200):
                    call(b"x", timeout=5)
            lat: dict[str, list[float]] = {"direct": [], "sidecars": []}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    before = {"front": _cpu_seconds(front.pid), "leaf": _cpu_seconds(leaf.pid)}
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        call(b"x", timeout=5)
                        lat[name].append((time.perf_counter() - t0) * 1e3)
                    if name == "sidecars":
                        cpu["front"] += _cpu_seconds(front.pid) - before["front"]
                        cpu["leaf"] += _cpu_seconds(leaf.pid) - before["leaf"]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(5)
    print(f"{'path (c=1, unary, ' + str(len(lat['direct'])) + ' calls each)':44} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for name, values in lat.items():
        print(f"{name:44} {_pct(values, 0.5):8.3f} {_pct(values, 0.99):8.3f}")
    d50, d99 = _pct(lat["direct"], 0.5), _pct(lat["direct"], 0.99)
    s50, s99 = _pct(lat["sidecars"], 0.5), _pct(lat["sidecars"], 0.99)
    print(f"{'added by two sidecars (one gRPC hop)':44} {s50 - d50:8.3f} {s99 - d99:8.3f}"
          "   (issue 16 target: ≤ 0.3 ms p50, ≤ 1 ms p99)")
    n = len(lat["sidecars"])
    print(f"CPU per call: caller's sidecar {cpu['front'] / n * 1e6:.0f} µs, "
          f"callee's sidecar {cpu['leaf'] / n * 1e6:.0f} µs")
    print(f"(load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
