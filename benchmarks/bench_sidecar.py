"""Sidecar overhead benchmark: prints one table.

Measures, on loopback, against a direct call in the same run:
- added latency per sidecar hop at concurrency 1 (p50/p99): client → app directly,
  client → outbound sidecar → app (1 hop), client → outbound → inbound → app (2 hops);
- throughput through one sidecar at concurrency 1 and 32 (keep-alive connections);
- sidecar CPU µs per request at saturation (utime+stime from /proc/<pid>/stat);
- 504 precision: how late the ``upstream request timeout`` comes after a 100 ms route timeout;
- delay injection accuracy (100 ms and 1 s) under an open-loop 200 req/s, as held in the
  sidecar (admin /stats) and as seen by the client.

Usage: ``.venv/bin/python benchmarks/bench_sidecar.py [--quick]``. The app and the
sidecars run as separate processes; the load generator runs here (uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from localmesh.http import ClientConnection, ConnectionPool

_APP = r"""
import asyncio, sys
from localmesh.http import Response, serve
async def handle(req, conn):
    if req.target.startswith("/hang"):
        await asyncio.sleep(60)
    return Response(200, {"content-type": "text/plain"}, b"ok")
async def main():
    srv = await serve(handle)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
import uvloop; uvloop.run(main())
"""
_TICKS = os.sysconf("SC_CLK_TCK")
SVC = "app.bench.svc.cluster.local"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Procs:
    """The app and sidecar processes of the benchmark (own sessions, killed at exit)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[asyncio.subprocess.Process] = []
        self.pool = ConnectionPool()

    async def app(self) -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _APP, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        return proc.pid, int(await proc.stdout.readline())

    async def sidecar(self, name: str, app_port: int) -> tuple[int, dict[str, int]]:
        ports_file = self.tmp / f"{name}.ports"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "localmesh.sidecar", "--pod", f"{name}-1", "--namespace",
            "bench", "--service", name, "--app-port", str(app_port), "--ports-file",
            str(ports_file), stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        while not ports_file.exists():  # noqa: ASYNC110 - written by another process
            await asyncio.sleep(0.02)
        return proc.pid, json.loads(ports_file.read_text())

    async def push(self, admin: int, doc: dict[str, Any]) -> None:
        resp = await self.pool.request("POST", f"http://127.0.0.1:{admin}/config", {},
                                       json.dumps(doc).encode(), timeout=5)
        assert resp.status == 200, resp.body

    async def stats(self, admin: int) -> dict[str, Any]:
        resp = await self.pool.request("GET", f"http://127.0.0.1:{admin}/stats", timeout=5)
        return dict(json.loads(resp.body))

    async def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            await proc.wait()
        await self.pool.close()


def _doc(pod: str, service: str, target_port: int, *, app_port: int = 0,
         timeout_ms: float = 0, faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "version": int(time.time() * 1000) % 1_000_000_000,
        "node": {"pod": pod, "namespace": "bench", "service": service, "mode": "sidecar",
                 "app_port": app_port},
        "mesh": {"honor_app_envoy_headers": False, "sampling_percent": 1.0,
                 "access_log": {"enabled": True, "encoding": "TEXT", "format": ""},
                 "connect_timeout_ms": 1000, "otlp_endpoint": ""},
        "services": {SVC: {"name": "app", "namespace": "bench", "ports": [8080], "endpoints": [
            {"pod": "app-1", "namespace": "bench", "host": "127.0.0.1", "port": target_port,
             "labels": {"app": "app"}, "ready": True}]}},
        "routes": {SVC: [{"name": "r", "match": [], "destinations": [
            {"host": SVC, "subset": "", "port": 8080, "weight": 100}],
            "timeout_ms": timeout_ms, "retries": None}]} if timeout_ms else {},
        "faults": faults or [],
    }


@contextlib.asynccontextmanager
async def _conn(port: int) -> AsyncIterator[ClientConnection]:
    pool = ConnectionPool()
    conn = await pool.acquire("127.0.0.1", port, 5.0)
    try:
        yield conn
    finally:
        conn.abort()
        await pool.close()


async def _latencies(port: int, target: str, n: int) -> list[float]:
    out = []
    async with _conn(port) as conn:
        for _ in range(n):
            t = time.perf_counter()
            resp = await conn.send("GET", target, "app.bench:8080", {}, b"")
            out.append((time.perf_counter() - t) * 1000)
            assert resp.status == 200, resp.status
    return out


async def _throughput(port: int, target: str, concurrency: int,
                      seconds: float) -> tuple[float, int]:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with _conn(port) as conn:
            while time.perf_counter() < stop_at:
                resp = await conn.send("GET", target, "app.bench:8080", {}, b"")
                assert resp.status == 200
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start), done


async def _timeouts(port: int, n: int) -> list[float]:
    async def one() -> float:
        async with _conn(port) as conn:
            t = time.perf_counter()
            resp = await conn.send("GET", "http://app.bench:8080/hang", "app.bench:8080", {},
                                   b"")
            assert resp.status == 504, resp.status
            return (time.perf_counter() - t) * 1000 - 100.0
    late: list[float] = []
    for _ in range(n // 5):
        late += await asyncio.gather(*(one() for _ in range(5)))
    return late


async def _open_loop(port: int, rate: float, seconds: float) -> list[float]:
    pool = ConnectionPool(max_idle_per_host=512)
    lat: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        resp = await pool.request("GET", f"http://127.0.0.1:{port}/d",
                                  {"host": "app.bench:8080"}, timeout=10)
        assert resp.status == 200
        lat.append((time.perf_counter() - t) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    await pool.close()
    return lat


async def run(quick: bool) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    n = 500 if quick else 2000
    secs = 1.5 if quick else 3.0
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            app_pid, app = await procs.app()
            front_pid, front = await procs.sidecar("front", 1)
            _, leaf = await procs.sidecar("app", app)
            await procs.push(front["admin"], _doc("front-1", "front", app))
            await procs.push(leaf["admin"], _doc("app-1", "app", leaf["inbound"], app_port=app))
            two_hop = await procs.sidecar("front2", 1)
            await procs.push(two_hop[1]["admin"], _doc("front2-1", "front2", leaf["inbound"]))
            url = "http://app.bench:8080/x"
            await _latencies(app, "/x", 200)  # warm up every path
            await _latencies(front["outbound"], url, 200)
            await _latencies(two_hop[1]["outbound"], url, 200)
            direct = await _latencies(app, "/x", n)
            one = await _latencies(front["outbound"], url, n)
            two = await _latencies(two_hop[1]["outbound"], url, n)
            d50, d99 = _pct(direct, 0.5), _pct(direct, 0.99)
            rows.append(("direct call p50 / p99", f"{d50:.3f} / {d99:.3f} ms", ""))
            rows.append(("added per hop, 1 sidecar (p50 / p99)",
                         f"{_pct(one, .5) - d50:.3f} / {_pct(one, .99) - d99:.3f} ms",
                         "target ≤0.15 / ≤1 ms"))
            rows.append(("added per hop, 2 sidecars / 2 (p50 / p99)",
                         f"{(_pct(two, .5) - d50) / 2:.3f} / {(_pct(two, .99) - d99) / 2:.3f} ms",
                         "outbound + inbound"))
            for c in (1, 32):
                cpu0, app0 = _cpu_seconds(front_pid), _cpu_seconds(app_pid)
                rps, count = await _throughput(front["outbound"], url, c, secs)
                cpu_us = (_cpu_seconds(front_pid) - cpu0) / count * 1e6
                app_us = (_cpu_seconds(app_pid) - app0) / count * 1e6
                rows.append((f"throughput via 1 sidecar, c={c}", f"{rps:,.0f} req/s",
                             "target ≥10,000 (c=32)" if c == 32 else ""))
                rows.append((f"sidecar CPU per request, c={c}", f"{cpu_us:.1f} µs",
                             f"CPU-bound capacity {1e6 / cpu_us:,.0f} req/s; target ≤40 µs"))
                rows.append((f"app CPU per request, c={c} (yardstick)", f"{app_us:.1f} µs",
                             f"sidecar/app = {cpu_us / app_us:.1f} (a proxy does ≥2 apps' I/O)"))
            await procs.push(front["admin"], _doc("front-1", "front", app, timeout_ms=100))
            late = await _timeouts(front["outbound"], 50 if quick else 100)
            rows.append(("504 after 100 ms route timeout: late p50 / p99",
                         f"{_pct(late, .5):.2f} / {_pct(late, .99):.2f} ms", "target p99 ≤5 ms"))
            for delay_ms in (100.0, 1000.0):
                rule = {"id": "bench/d", "action": "delay", "peers": None,
                        "delay": {"latency_ms": delay_ms, "jitter_ms": 0, "correlation": 0}}
                await procs.push(front["admin"], _doc("front-1", "front", app, faults=[rule]))
                before = await procs.stats(front["admin"])
                lat = await _open_loop(front["outbound"], 200.0, 1.5 if quick else 3.0)
                after = await procs.stats(front["admin"])
                holds = after["fault_holds"] - before["fault_holds"]
                held = (after["fault_hold_seconds_total"]
                        - before["fault_hold_seconds_total"]) / max(holds, 1) * 1000
                rows.append((f"delay {delay_ms:.0f} ms @200 req/s: sidecar mean hold",
                             f"{held:.2f} ms (+{held - delay_ms:.2f})", f"{holds} holds"))
                rows.append((f"delay {delay_ms:.0f} ms @200 req/s: client p50 / p99",
                             f"{_pct(lat, .5):.2f} / {_pct(lat, .99):.2f} ms",
                             f"min {min(lat):.2f} ms"))
        finally:
            await procs.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter phases")
    args = parser.parse_args()
    try:
        import uvloop
        rows = uvloop.run(run(args.quick))
    except ImportError:
        rows = asyncio.run(run(args.quick))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'value':<{vwidth}}  note")
    print(f"{'-' * width}  {'-' * vwidth}  ----")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {note}")
    print(f"\n(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"machine shared with other work: numbers are upper bounds)")


if __name__ == "__main__":
    main()
