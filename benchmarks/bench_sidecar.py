"""Sidecar overhead benchmark: prints one table.

Measures, on loopback, against a direct call in the same run:
- added latency per sidecar hop at concurrency 1 (p50/p99): client → app directly,
  client → outbound sidecar → app (1 hop), client → outbound → inbound → app (2 hops);
- throughput through one sidecar at concurrency 1 and 32 (keep-alive connections);
- sidecar CPU µs per request at saturation (utime+stime from /proc/<pid>/stat);
- the floor: a bare uvloop + httptools forwarding proxy's CPU per request at c=32;
- 504 precision: how late the ``upstream request timeout`` comes after a 100 ms route timeout;
- delay injection accuracy (100 ms and 1 s) under an open-loop 200 req/s: the shortest hold
  and the overshoot p50/p99 as recorded in the sidecar (admin /stats ring) and as seen by the
  client, alone and while a closed loop (c=32, a peer the delay rule does not cover)
  saturates the same sidecar. Targets: never shorter than asked, sidecar overshoot
  ≤0.6 ms p50 / ≤1.5 ms p99, client overshoot ≤10 ms p99. Beside them, the latency of the
  same open loop with no delay rule under the same saturation: the queueing in a busy
  sidecar and app that every client-side overshoot includes.

On a shared machine the rows also say how long the sidecar was runnable but waiting for a
CPU (``/proc/<pid>/schedstat``): lateness no code in the sidecar can remove.

Usage: ``.venv/bin/python benchmarks/bench_sidecar.py [--quick] [--only overhead|delay]``.
The app (a lean one, answering on the server's fast hook) and the sidecars run as separate
processes; the load generator runs here (uvloop),
the saturating closed loop in a process of its own.
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

# The trivial app answers on the server's fast hook (no task per request), so that the
# yardstick is a lean app, as the sidecar's own callback path is; /hang takes the task path.
_APP = r"""
import asyncio, sys
from localmesh.http import Response, serve
OK = Response(200, {"content-type": "text/plain"}, b"ok")
async def handle(req, conn):
    if req.target.startswith("/hang"):
        await asyncio.sleep(60)
    return OK
def fast(req, conn):
    if req.target.startswith("/hang"):
        return False
    conn.respond(OK)
    return True
async def main():
    srv = await serve(handle, fast=fast)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
import uvloop; uvloop.run(main())
"""
# The saturating closed loop runs in its own process so that it loads the sidecar, not the
# measuring client's event loop. argv: port, concurrency, seconds[, authority]; prints
# requests done.
_LOAD = r"""
import asyncio, sys, time
from localmesh.http import ConnectionPool
async def main():
    port, conc, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    host = sys.argv[4] if len(sys.argv) > 4 else "other.bench:8080"
    done, stop_at = 0, time.perf_counter() + secs
    async def worker():
        nonlocal done
        pool = ConnectionPool()
        conn = await pool.acquire("127.0.0.1", port, 5.0)
        try:
            while time.perf_counter() < stop_at:
                resp = await conn.send("GET", f"http://{host}/s", host, {}, b"")
                assert resp.status == 200, resp.status
                done += 1
        finally:
            conn.abort()
            await pool.close()
    await asyncio.gather(*(worker() for _ in range(conc)))
    print(done, flush=True)
import uvloop
uvloop.run(main())
"""
# The floor: a bare forwarding proxy on uvloop + asyncio.Protocol + httptools (parse the
# request into a header dict, re-encode it to a keep-alive upstream connection of its own,
# parse the response, re-encode it downstream) with none of the sidecar's work. Its CPU per
# request in the same run says what the sidecar's could be on this machine at best.
# argv: upstream ports; one listener each, whose ports it prints a line each.
_BARE = r"""
import asyncio, sys, httptools, uvloop
class Up(asyncio.Protocol):
    def __init__(self, down):
        self.down, self.body, self.t = down, [], None
        self.parser = httptools.HttpResponseParser(self)
    def connection_made(self, t):
        self.t = t
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_body(self, b):
        self.body.append(b)
    def on_message_complete(self):
        body, self.body = b"".join(self.body), []
        self.down.t.write(b"HTTP/1.1 %d OK\r\ncontent-type: text/plain\r\ncontent-length: %d"
                          b"\r\n\r\n%s" % (self.parser.get_status_code(), len(body), body))
class Proxy(asyncio.Protocol):
    def __init__(self, port):
        self.port, self.up, self.queued, self.h = port, None, b"", {}
        self.parser = httptools.HttpRequestParser(self)
    def connection_made(self, t):
        self.t = t
        asyncio.get_running_loop().create_task(self.connect())
    async def connect(self):
        loop = asyncio.get_running_loop()
        _, self.up = await loop.create_connection(lambda: Up(self), "127.0.0.1", self.port)
        if self.queued:
            self.up.t.write(self.queued)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_url(self, url):
        self.url = url
    def on_header(self, name, value):
        self.h[name.decode("latin-1").lower()] = value.decode("latin-1")
    def on_message_complete(self):
        h, self.h = self.h, {}
        data = ("GET /x HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                + "\r\n").encode("latin-1")
        if self.up is None:
            self.queued += data
        else:
            self.up.t.write(data)
async def main():
    for arg in sys.argv[1:]:
        srv = await asyncio.get_running_loop().create_server(
            lambda port=int(arg): Proxy(port), "127.0.0.1", 0)
        print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""
_TICKS = os.sysconf("SC_CLK_TCK")
SVC = "app.bench.svc.cluster.local"
OTHER = "other.bench.svc.cluster.local"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _runqueue_wait_s(pid: int) -> float:
    """Seconds ``pid`` was runnable but waiting for a CPU (/proc/<pid>/schedstat, field 2):
    on a shared machine, the part of any lateness no code in the process can remove."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


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
        return await self.python(_APP)

    async def bare_proxy(self, app_port: int) -> tuple[int, int]:
        """The floor proxy (``_BARE``) in front of ``app_port``: (pid, port)."""
        pid, ports = await self.bare_proxies(app_port)
        return pid, ports[0]

    async def bare_proxies(self, *upstreams: int) -> tuple[int, list[int]]:
        """One floor proxy process with a listener in front of each upstream port."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BARE, *map(str, upstreams), stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        return proc.pid, [int(await proc.stdout.readline()) for _ in upstreams]

    async def python(self, source: str, *args: str) -> tuple[int, int]:
        """A process running ``source`` that prints its port: (pid, port)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", source, *args, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        return proc.pid, int(await proc.stdout.readline())

    async def load(self, port: int, concurrency: int, seconds: float) -> asyncio.Task[int]:
        """Start the saturating closed loop; the task gives how many requests it completed."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _LOAD, str(port), str(concurrency), str(seconds),
            stdout=asyncio.subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)

        async def done() -> int:
            out, _ = await proc.communicate()
            assert proc.returncode == 0, proc.returncode
            return int(out)
        return asyncio.create_task(done())

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


def _service(name: str, pod: str, port: int) -> dict[str, Any]:
    return {"name": name, "namespace": "bench", "ports": [8080], "endpoints": [
        {"pod": pod, "namespace": "bench", "host": "127.0.0.1", "port": port,
         "labels": {"app": name}, "ready": True}]}


def _doc(pod: str, service: str, target_port: int, *, app_port: int = 0,
         timeout_ms: float = 0, faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # OTHER is the same app under another pod name: traffic to it is egress to peer
    # bench/other-1, which a delay rule with peers [bench/app-1] leaves alone.
    return {
        "version": int(time.time() * 1000) % 1_000_000_000,
        "node": {"pod": pod, "namespace": "bench", "service": service, "mode": "sidecar",
                 "app_port": app_port},
        "mesh": {"honor_app_envoy_headers": False, "sampling_percent": 1.0,
                 "access_log": {"enabled": True, "encoding": "TEXT", "format": ""},
                 "connect_timeout_ms": 1000, "otlp_endpoint": ""},
        "services": {SVC: _service("app", "app-1", target_port),
                     OTHER: _service("other", "other-1", target_port)},
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


async def _open_loop(port: int, rate: float, seconds: float, in_flight: int = 1) -> list[float]:
    """Latencies of ``rate`` GETs a second for ``seconds``, over connections opened beforehand:
    ``in_flight`` of them (as many as the loop will keep busy at once), each warmed by an
    undelayed request, so no measured request pays for a TCP connect and accept through
    a busy sidecar (a cost of its own, not a delay's overshoot)."""
    pool = ConnectionPool(max_idle_per_host=512)
    lat: list[float] = []
    warm = [pool.request("GET", f"http://127.0.0.1:{port}/w", {"host": "other.bench:8080"},
                         timeout=10) for _ in range(in_flight)]
    for resp in await asyncio.gather(*warm):
        assert resp.status == 200, resp.status

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


async def _overhead_sections(procs: Procs, app_pid: int, app: int, front_pid: int,
                             front: dict[str, int], quick: bool) -> list[tuple[str, str, str]]:
    """Per-hop latency, throughput, CPU per request and 504 precision."""
    rows: list[tuple[str, str, str]] = []
    n = 500 if quick else 2000
    secs = 1.5 if quick else 3.0
    _, leaf = await procs.sidecar("app", app)
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
        wait0, t0 = _runqueue_wait_s(front_pid), time.perf_counter()
        rps, count = await _throughput(front["outbound"], url, c, secs)
        wait_share = (_runqueue_wait_s(front_pid) - wait0) / (time.perf_counter() - t0)
        cpu_us = (_cpu_seconds(front_pid) - cpu0) / count * 1e6
        app_us = (_cpu_seconds(app_pid) - app0) / count * 1e6
        rows.append((f"throughput via 1 sidecar, c={c}", f"{rps:,.0f} req/s",
                     ("target ≥10,000 (c=32); " if c == 32 else "")
                     + f"the sidecar waited for a CPU {wait_share:.0%} of the phase"))
        rows.append((f"sidecar CPU per request, c={c}", f"{cpu_us:.1f} µs",
                     f"CPU-bound capacity {1e6 / cpu_us:,.0f} req/s; target ≤40 µs"))
        rows.append((f"app CPU per request, c={c} (yardstick)", f"{app_us:.1f} µs",
                     f"sidecar/app = {cpu_us / app_us:.1f} (a proxy does ≥2 apps' I/O)"))
    bare_pid, bare = await procs.bare_proxy(app)
    await _latencies(bare, url, 200)
    cpu0 = _cpu_seconds(bare_pid)
    rps, count = await _throughput(bare, url, 32, secs)
    bare_us = (_cpu_seconds(bare_pid) - cpu0) / count * 1e6
    rows.append(("floor: bare forwarding proxy, c=32", f"{rps:,.0f} req/s, {bare_us:.1f} µs",
                 "uvloop+httptools, no sidecar work: CPU per request at best on this box"))
    await procs.push(front["admin"], _doc("front-1", "front", app, timeout_ms=100))
    late = await _timeouts(front["outbound"], 50 if quick else 100)
    rows.append(("504 after 100 ms route timeout: late p50 / p99",
                 f"{_pct(late, .5):.2f} / {_pct(late, .99):.2f} ms", "target p99 ≤5 ms"))
    return rows


def _mark(ok: bool) -> str:
    return "OK" if ok else "MISS"


async def _delay_phase(procs: Procs, front: dict[str, int], front_pid: int, app: int,
                       delay_ms: float, secs: float,
                       loaded: bool) -> list[tuple[str, str, str]]:
    """One delay at an open-loop 200 req/s, alone or next to a saturating undelayed loop."""
    admin, outbound = front["admin"], front["outbound"]
    # peers: only egress to bench/app-1 (the measured traffic) is delayed; the saturating
    # loop calls bench/other-1 through the same outbound listener and is not held.
    rule = {"id": "bench/d", "action": "delay", "peers": ["bench/app-1"],
            "delay": {"latency_ms": delay_ms, "jitter_ms": 0, "correlation": 0}}
    await procs.push(admin, _doc("front-1", "front", app, faults=[rule]))
    load: asyncio.Task[int] | None = None
    load_secs = secs + delay_ms / 1000 + 0.6
    if loaded:
        load = await procs.load(outbound, 32, load_secs)
        await asyncio.sleep(0.3)  # let the closed loop reach saturation first
    before = await procs.stats(admin)
    wait0, t0 = _runqueue_wait_s(front_pid), time.perf_counter()
    # Requests in flight at once: each is held delay_ms, then crosses a busy sidecar.
    lat = await _open_loop(outbound, 200.0, secs, in_flight=int(200.0 * (delay_ms + 50) / 1000))
    wait_share = (_runqueue_wait_s(front_pid) - wait0) / (time.perf_counter() - t0)
    after = await procs.stats(admin)
    other = f"; other traffic {await load / load_secs:,.0f} req/s undelayed" if load else ""
    over_b, over_a = before["fault_hold_overshoot_us"], after["fault_hold_overshoot_us"]
    holds = over_a["count"] - over_b["count"]
    if not 0 < holds <= over_a["window"]:
        raise RuntimeError(f"{holds} holds do not fit the sidecar's {over_a['window']}-value ring")
    side = [v / 1000 for v in over_a["recent_us"][-holds:]]
    client = [ms - delay_ms for ms in lat]
    s50, s99, c50, c99 = _pct(side, .5), _pct(side, .99), _pct(client, .5), _pct(client, .99)
    never_shorter = min(side) >= 0 and min(client) >= 0
    label = f"delay {delay_ms:.0f} ms @200 req/s, {'+ c=32 load' if loaded else 'alone'}"
    return [
        (f"{label}: min hold sidecar / client",
         f"{delay_ms + min(side):.3f} / {delay_ms + min(client):.3f} ms",
         f"never shorter: {_mark(never_shorter)}; {holds} holds / {len(lat)} requests{other}"),
        (f"{label}: sidecar overshoot p50 / p99", f"{s50:.3f} / {s99:.3f} ms",
         f"target ≤0.6 / ≤1.5 ms: {_mark(s50 <= 0.6 and s99 <= 1.5)}; the sidecar waited "
         f"for a CPU {wait_share:.0%} of the phase"),
        (f"{label}: client overshoot p50 / p99", f"{c50:.3f} / {c99:.3f} ms",
         f"target p99 ≤10 ms: {_mark(c99 <= 10.0)}"),
    ]


async def _baseline_phase(procs: Procs, front: dict[str, int], app: int,
                          secs: float) -> tuple[str, str, str]:
    """The same open loop with no delay rule while the same closed loop saturates the
    sidecar: the latency any request has there, which the client overshoot includes."""
    await procs.push(front["admin"], _doc("front-1", "front", app))
    load_secs = secs + 0.6
    load = await procs.load(front["outbound"], 32, load_secs)
    await asyncio.sleep(0.3)
    lat = await _open_loop(front["outbound"], 200.0, secs)
    other = await load / load_secs
    return ("no delay @200 req/s, + c=32 load: latency p50 / p99",
            f"{_pct(lat, .5):.3f} / {_pct(lat, .99):.3f} ms",
            f"the saturated sidecar's own queueing, part of every client overshoot below; "
            f"other traffic {other:,.0f} req/s")


async def _delay_section(procs: Procs, front: dict[str, int], front_pid: int, app: int,
                         secs: float) -> list[tuple[str, str, str]]:
    """Delay accuracy, alone then with the sidecar saturated by other (undelayed) traffic."""
    rows: list[tuple[str, str, str]] = []
    await _latencies(front["outbound"], "http://app.bench:8080/x", 200)  # warm up
    for loaded in (False, True):
        if loaded:
            rows.append(await _baseline_phase(procs, front, app, secs))
        for delay_ms in (100.0, 1000.0):
            rows += await _delay_phase(procs, front, front_pid, app, delay_ms, secs, loaded)
    return rows


async def run(quick: bool, only: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs(Path(tmp))
        try:
            app_pid, app = await procs.app()
            front_pid, front = await procs.sidecar("front", 1)
            await procs.push(front["admin"], _doc("front-1", "front", app))
            if only in ("all", "overhead"):
                rows += await _overhead_sections(procs, app_pid, app, front_pid, front, quick)
            if only in ("all", "delay"):
                rows += await _delay_section(procs, front, front_pid, app, 1.5 if quick else 3.0)
        finally:
            await procs.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter phases")
    parser.add_argument("--only", choices=("all", "overhead", "delay"), default="all",
                        help="run one section: per-hop overhead/throughput/504, or delay accuracy")
    args = parser.parse_args()
    try:
        import uvloop
        rows = uvloop.run(run(args.quick, args.only))
    except ImportError:
        rows = asyncio.run(run(args.quick, args.only))
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
