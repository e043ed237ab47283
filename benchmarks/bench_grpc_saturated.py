"""Saturated sidecar CPU per request: gRPC (HTTP/2) vs HTTP/1.1, side by side in one run.

Issue 16 asks that a gRPC call cost the sidecars at most 2x the CPU of an HTTP/1.1 request
at saturation, and that the HTTP/1.1 rows keep their ratio to the floor proxy. One caller
sidecar (``front``) serves every phase; its outbound listener routes three Services:

- ``grpc``: an HTTP/2 cluster (``h2_ports``) to the inbound listener of sidecar ``leaf-g``,
  in front of a grpcio aio echo server (bench_grpc.py's);
- ``web``: HTTP/1.1 to the inbound listener of sidecar ``leaf-h``, in front of the lean
  localmesh.http app (bench_sidecar.py's);
- ``app``: HTTP/1.1 straight to that app (one sidecar, as bench_sidecar.py's c=32 row).

Then the floor proxy (bench_sidecar.py's bare uvloop + httptools forwarder) in front of the
same app. Phases alternate in rounds (HTTP/1.1 two sidecars, gRPC two sidecars, HTTP/1.1 one
sidecar, floor), each a closed loop of 32 calls in flight from a process of its own (32
keep-alive connections for HTTP/1.1; one grpcio channel, 32 streams, for gRPC), so every
protocol sees the same machine load. CPU is utime+stime of each process (/proc/<pid>/stat).

Usage: .venv/bin/python benchmarks/bench_grpc_saturated.py [--seconds S] [--rounds R]
(defaults 3 s, 2 rounds: about 35 s with start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_grpc import _SERVER as GRPC_SERVER
from bench_grpc import NS, _doc, _free_port, _service
from bench_sidecar import _APP as HTTP_APP
from bench_sidecar import _BARE, _cpu_seconds
from bench_sidecar import _LOAD as HTTP_LOAD

CONCURRENCY = 32

# argv: port, concurrency, seconds, authority; prints the calls completed.
_GRPC_LOAD = r"""
import asyncio, sys, time, grpc
async def main():
    port, conc, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    authority = sys.argv[4]
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0),
        ("grpc.default_authority", authority)])
    call = ch.unary_unary("/bench.Echo/Unary")
    await call(b"x", timeout=5)
    done, stop_at = 0, time.perf_counter() + secs
    async def worker():
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(b"x", timeout=5)
            done += 1
    await asyncio.gather(*(worker() for _ in range(conc)))
    await ch.close()
    print(done, flush=True)
asyncio.run(main())
"""
@dataclass
class Phase:
    """One kind of traffic: where the load goes and whose CPU is counted."""

    name: str
    port: int
    authority: str
    grpc: bool
    pids: dict[str, int]
    calls: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def python(self, source: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", source, *args], stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def listener(self, source: str, *args: str) -> tuple[int, int]:
        """A process that prints its port first: (pid, port)."""
        proc = self.python(source, *args)
        assert proc.stdout is not None
        return proc.pid, int(proc.stdout.readline())

    def sidecar(self, pod: str, service: str, app_port: int, inbound: int,
                services: dict[str, dict[str, Any]]) -> tuple[int, dict[str, int]]:
        cfg = self.tmp / f"{pod}.json"
        cfg.write_text(json.dumps(_doc(pod, service, app_port, services)))
        ports = self.tmp / f"{pod}.ports"
        proc = subprocess.Popen(
            [sys.executable, "-m", "localmesh.sidecar", "--pod", pod, "--namespace", NS,
             "--service", service, "--app-port", str(app_port), "--inbound-port", str(inbound),
             "--ports-file", str(ports), "--config", str(cfg)], stdout=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 20
        while not ports.exists() or not ports.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"sidecar {pod} did not start")
            time.sleep(0.02)
        return proc.pid, dict(json.loads(ports.read_text()))

    def run(self, phase: Phase, seconds: float) -> None:
        source = _GRPC_LOAD if phase.grpc else HTTP_LOAD
        before = {k: _cpu_seconds(pid) for k, pid in phase.pids.items()}
        t0 = time.perf_counter()
        proc = self.python(source, str(phase.port), str(CONCURRENCY), str(seconds),
                           phase.authority)
        out, _ = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"load for {phase.name} exited {proc.returncode}")
        phase.seconds += time.perf_counter() - t0
        phase.calls += int(out)
        for k, pid in phase.pids.items():
            phase.cpu[k] = phase.cpu.get(k, 0.0) + _cpu_seconds(pid) - before[k]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(5)


def _us(phase: Phase, who: str) -> float:
    return phase.cpu[who] / phase.calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one phase")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        bench = Bench(Path(tmpdir))
        try:
            app_pid, app = bench.listener(HTTP_APP)
            grpc_pid, grpc_app = bench.listener(GRPC_SERVER)
            leaf_g_in, leaf_h_in = _free_port(), _free_port()
            grpc_fqdn, web_fqdn = f"grpc.{NS}.svc.cluster.local", f"web.{NS}.svc.cluster.local"
            app_fqdn = f"app.{NS}.svc.cluster.local"
            leaf_g, _ = bench.sidecar("leaf-g", "grpc", grpc_app, leaf_g_in, {
                grpc_fqdn: _service("grpc", "leaf-g", leaf_g_in, h2=True)})
            leaf_h, _ = bench.sidecar("leaf-h", "web", app, leaf_h_in, {
                web_fqdn: _service("web", "leaf-h", leaf_h_in, h2=False)})
            front, ports = bench.sidecar("front", "front", 1, 0, {
                grpc_fqdn: _service("grpc", "leaf-g", leaf_g_in, h2=True),
                web_fqdn: _service("web", "leaf-h", leaf_h_in, h2=False),
                app_fqdn: _service("app", "app-1", app, h2=False)})
            bare_pid, bare = bench.listener(_BARE, str(app))
            out = ports["outbound"]
            phases = [
                Phase("HTTP/1.1, two sidecars", out, "web.bench:8080", False,
                      {"caller": front, "callee": leaf_h, "app": app_pid}),
                Phase("gRPC unary, two sidecars", out, "grpc.bench:8080", True,
                      {"caller": front, "callee": leaf_g, "app": grpc_pid}),
                Phase("HTTP/1.1, one sidecar", out, "app.bench:8080", False,
                      {"caller": front, "app": app_pid}),
                Phase("floor proxy (bare uvloop+httptools)", bare, "app.bench:8080", False,
                      {"caller": bare_pid, "app": app_pid}),
            ]
            for phase in phases:  # warm: connections, caches, the sidecars' memo
                bench.run(phase, 0.3)
                phase.calls, phase.cpu, phase.seconds = 0, {}, 0.0
            for _ in range(args.rounds):
                for phase in phases:
                    bench.run(phase, args.seconds)
        finally:
            bench.close()
    _print(phases, args)


def _print(phases: list[Phase], args: argparse.Namespace) -> None:
    print(f"c={CONCURRENCY} closed loop, {args.rounds} rounds x {args.seconds:.1f} s per phase, "
          "phases alternating")
    print(f"{'path':38} {'req/s':>8} {'caller µs':>10} {'callee µs':>10} {'sidecars µs':>12} "
          f"{'app µs':>8}")
    for p in phases:
        callee = _us(p, "callee") if "callee" in p.cpu else 0.0
        print(f"{p.name:38} {p.calls / p.seconds:8,.0f} {_us(p, 'caller'):10.1f} "
              f"{callee:10.1f} {_us(p, 'caller') + callee:12.1f} {_us(p, 'app'):8.1f}")
    h1, g, one, floor = phases
    h1_sum = _us(h1, "caller") + _us(h1, "callee")
    g_sum = _us(g, "caller") + _us(g, "callee")
    print("gRPC / HTTP/1.1 sidecar CPU per request: "
          f"caller {_us(g, 'caller') / _us(h1, 'caller'):.2f}x, "
          f"callee {_us(g, 'callee') / _us(h1, 'callee'):.2f}x, both {g_sum / h1_sum:.2f}x"
          "   (issue 16 target: ≤ 2x)")
    print(f"HTTP/1.1 one sidecar / floor proxy CPU per request: "
          f"{_us(one, 'caller') / _us(floor, 'caller'):.2f}x "
          f"(two sidecars / 2 / floor: {h1_sum / 2 / _us(floor, 'caller'):.2f}x)")
    print(f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
