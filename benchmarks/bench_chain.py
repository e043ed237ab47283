"""Throughput of the whole reference chain on the local mesh, and what each process kind pays.

Starts fixtures/k8s (ingress gateway → frontend → orders → inventory → pricing, plus the
``ratings`` side call: five apps, five sidecars, one gateway) with ``meshchaos up --detach``,
so the mesh runs in processes of its own and the load generator here does not share their
GIL. Then drives closed-loop load through the ingress (each of ``c`` workers sends its next
``GET /`` as soon as the last one is answered, over a kept-alive connection) for a bounded
time per concurrency, and prints one table per level: requests/s, p50/p99 latency, the status
mix and the CPU each process kind spent per request (utime+stime of ``/proc/<pid>/stat``
over the measured window; the mesh process holds the API server and the trace store, which
receives every span). Issue 2's target is 1,200 requests/s at c=32 on this 2-core machine.

The manifests' simulated work (asyncio sleeps of about 22 ms per request end to end) bounds
c=1 by latency, not CPU; ``--no-work`` runs a copy of the manifests with that work set to 0 to
see the per-request cost alone. Wall-clock numbers depend on what else runs on the machine:
the load average is printed beside them; CPU per request is the steadier figure.

``--sampling 1`` runs it at Istio's default trace sampling (1 %) instead of the fixtures' 100 %
(which the probes need): unsampled requests export no span from the apps or the sidecars.

Usage: .venv/bin/python benchmarks/bench_chain.py [--duration S] [--concurrency 1 32] [--no-work]
       [--sampling PERCENT]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from localmesh.http.client import ConnectionPool
from localmesh.http.errors import HttpError
from localmesh.kubeconfig import auth_headers, ssl_context
from localmesh.statedir import read_endpoints
from probes.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS = 1200.0
TICK = os.sysconf("SC_CLK_TCK")
NS = DEFAULTS["namespace"]  # the reference chain of fixtures/k8s


@dataclass
class Level:
    """What one concurrency level measured."""

    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    cpu_s: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds
    main_s: dict[int, float] = field(default_factory=dict)  # pid -> its main thread's
    own_cpu_s: float = 0.0  # the load generator's
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def count(self) -> int:
        return len(self.latencies)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime of process ``pid``, or of its ``thread`` (0 when it is gone)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def process_kinds(api: str, mesh_pid: int, kubeconfig: Path) -> dict[str, dict[str, int]]:
    """Pid per process, by kind, from the pods' ``containerID`` (``localmesh://<pid>``)."""
    request = urllib.request.Request(f"{api}/api/v1/pods", headers=auth_headers(kubeconfig))
    with urllib.request.urlopen(request, timeout=10, context=ssl_context(kubeconfig)) as resp:
        pods = json.loads(resp.read())["items"]
    kinds: dict[str, dict[str, int]] = {"apps": {}, "sidecars": {}, "ingress": {},
                                        "mesh": {"mesh": mesh_pid}}
    for pod in pods:
        app = pod["metadata"]["labels"].get("app", pod["metadata"]["name"])
        for status in pod["status"].get("containerStatuses", []):
            match = re.fullmatch(r"localmesh://(\d+)", status.get("containerID", ""))
            if match is None:
                continue
            if app == "istio-ingressgateway":
                kind = "ingress"
            elif status["name"] == "istio-proxy":
                kind = "sidecars"
            else:
                kind = "apps"
            kinds[kind][app] = int(match.group(1))
    return kinds


async def worker(pool: ConnectionPool, url: str, stop_at: float, level: Level) -> None:
    clock = time.perf_counter  # uvloop's loop.time() has only ms resolution
    headers = {"host": "shop.example.com"}
    while (began := clock()) < stop_at:
        try:
            resp = await pool.request("GET", url, headers, timeout=10.0)
            status = resp.status
        except (HttpError, OSError, TimeoutError):
            status = 0  # no answer at all
        level.latencies.append(clock() - began)
        level.statuses[status] += 1


async def drive(url: str, concurrency: int, duration: float, warmup: float,
                kinds: dict[str, dict[str, int]]) -> Level:
    """Warm up, then measure ``duration`` seconds of closed-loop load at ``concurrency``."""
    pool = ConnectionPool(max_idle_per_host=concurrency)
    clock = time.perf_counter
    try:
        await asyncio.gather(*(worker(pool, url, clock() + warmup, Level(concurrency))
                               for _ in range(concurrency)))
        level = Level(concurrency)
        pids = {pid for procs in kinds.values() for pid in procs.values()}
        before = {pid: cpu_seconds(pid) for pid in pids}
        before_main = {pid: cpu_seconds(pid, pid) for pid in pids}
        own = time.process_time()
        began = clock()
        await asyncio.gather(*(worker(pool, url, began + duration, level)
                               for _ in range(concurrency)))
        level.seconds = clock() - began
        level.cpu_s = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        level.main_s = {pid: cpu_seconds(pid, pid) - before_main[pid] for pid in pids}
        level.own_cpu_s = time.process_time() - own
        level.loadavg = os.getloadavg()
    finally:
        await pool.close()
    return level


def report(level: Level, kinds: dict[str, dict[str, int]]) -> str:
    n = max(level.count, 1)
    lat = sorted(level.latencies) or [0.0]
    rps = level.count / level.seconds if level.seconds else 0.0
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    mix = ", ".join(f"{code or 'no answer'}: {count}" for code, count in
                    sorted(level.statuses.items()))
    verdict = "met" if rps >= TARGET_RPS else "MISSED"
    lines = [
        f"## concurrency {level.concurrency}: {level.count} requests in {level.seconds:.1f} s "
        f"(load average {level.loadavg[0]:.2f} {level.loadavg[1]:.2f} {level.loadavg[2]:.2f})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| throughput | {rps:,.0f} req/s (target {TARGET_RPS:,.0f}: {verdict}) |",
        f"| latency p50 / p99 | {p50:.2f} / {p99:.2f} ms |",
        f"| status mix | {mix} |",
    ]
    total = 0.0
    for kind, procs in kinds.items():
        each = {name: level.cpu_s.get(pid, 0.0) / n * 1e6 for name, pid in procs.items()}
        total += sum(each.values())
        detail = ", ".join(f"{name} {us:.0f}" for name, us in each.items()) if len(each) > 1 else ""
        lines.append(f"| CPU µs per request: {kind} | {sum(each.values()):.0f}"
                     f"{f' ({detail})' if detail else ''} |")
        if kind == "apps":  # the event loop runs in the main thread; span export in another
            off = sum(level.cpu_s.get(pid, 0.0) - level.main_s.get(pid, 0.0)
                      for pid in procs.values()) / n * 1e6
            lines.append(f"| … of which the apps' other threads (span export) | {off:.0f} |")
    lines.append(f"| CPU µs per request: all of the mesh | {total:.0f} "
                 f"(bound on 2 free cores: {2e6 / total if total else 0:,.0f} req/s) |")
    lines.append(f"| CPU µs per request: this load generator | {level.own_cpu_s / n * 1e6:.0f} |")
    return "\n".join(lines)


def variant(manifests: Path, into: Path, *, no_work: bool, sampling: float | None) -> Path:
    """A copy of ``manifests`` with CHAIN_WORK_* set to 0 and/or another trace sampling %."""
    target = into / "k8s"
    shutil.copytree(manifests, target)
    for path in target.glob("*.yaml"):
        text = path.read_text()
        if no_work:
            text = re.sub(r"(- name: CHAIN_WORK_(?:BEFORE|AFTER)\n\s+value: )\"[^\"]*\"",
                          r'\1"0"', text)
        if sampling is not None:
            # Both knobs: the mesh config's default and the Telemetry resource that overrides it.
            text = re.sub(r"(\n\s+(?:sampling|randomSamplingPercentage): )[0-9.]+",
                          rf"\g<1>{sampling:g}", text)
        # local-cwd is relative to the manifest: keep pointing at the repository root
        text = text.replace('meshchaos.io/local-cwd: "../.."', f'meshchaos.io/local-cwd: "{ROOT}"')
        path.write_text(text)
    return target


# Run the chain the way the fork server does: packages imported first (pkgutil, as
# localmesh.supervisor.forkserver preloads a tree), then ``-m fixtures.chain``. Prints the
# perf_counter (CLOCK_MONOTONIC, shared by processes) at which __main__ starts.
_PRELOADED_START = """
import importlib, pkgutil, runpy, sys, time
import fixtures.chain as tree
for info in pkgutil.walk_packages(tree.__path__, prefix="fixtures.chain."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
sys.stderr.write(f"{time.perf_counter()!r}\\n"); sys.stderr.flush()
sys.argv = ["fixtures.chain"]
runpy.run_module("fixtures.chain", run_name="__main__", alter_sys=True)
"""


def one_start(preloaded: bool, root: Path) -> float:
    """Seconds from spawn (cold) or from __main__ (preloaded) until the hop prints its port."""
    env = {**os.environ, "PORT": "0", "CHAIN_HOST": "127.0.0.1", "OTEL_SERVICE_NAME": "bench",
           "CHAIN_CALLS": "seq:http://orders:8080/orders", "HTTP_PROXY": "http://127.0.0.1:9",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    argv = ([sys.executable, "-c", _PRELOADED_START] if preloaded
            else [sys.executable, "-m", "fixtures.chain"])
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        if preloaded:
            began = float(proc.stderr.readline())
        line = proc.stdout.readline()
        ready = time.perf_counter()
        if not line:
            raise SystemExit(f"the chain did not start: {proc.stderr.read()}")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    return ready - began


def start_times(runs: int, root: Path) -> str:
    rows = ["| app start, until it prints its port | min | median | max |", "|---|---|---|---|"]
    for label, preloaded in (("fresh interpreter (`python -m fixtures.chain`)", False),
                             ("modules preloaded as by the fork server: __main__ → ready",
                              True)):
        times = sorted(one_start(preloaded, root) * 1000 for _ in range(runs))
        rows.append(f"| {label} | {times[0]:.1f} ms | {statistics.median(times):.1f} ms "
                    f"| {times[-1]:.1f} ms |")
    return "\n".join(rows)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshchaos.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured s per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s before each")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 32],
                        help="levels to measure (none: only the start-up)")
    parser.add_argument("--manifests", type=Path, default=ROOT / "fixtures" / "k8s")
    parser.add_argument("--no-work", action="store_true", help="set CHAIN_WORK_* to 0")
    parser.add_argument("--sampling", type=float, default=None,
                        help="trace sampling %% of the mesh config (fixtures: 100, what the "
                             "probes need; Istio's default: 1)")
    parser.add_argument("--start-runs", type=int, default=5,
                        help="app start-up measurements (0: skip)")
    parser.add_argument("--chain-root", type=Path, default=ROOT,
                        help="time the start-up of the fixtures/ found here (an older checkout, "
                             "to compare); the load always runs this checkout's chain")
    args = parser.parse_args()
    if args.start_runs:
        print(start_times(args.start_runs, args.chain_root), "\n", flush=True)
    if not args.concurrency:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        manifests = (variant(args.manifests, Path(tmp), no_work=args.no_work,
                             sampling=args.sampling)
                     if args.no_work or args.sampling is not None else args.manifests)
        state = Path(tmp) / "state"
        up = cli("up", "--detach", "--manifests", str(manifests), "--state-dir", str(state))
        if up.returncode != 0:
            raise SystemExit(f"meshchaos up failed:\n{up.stdout}\n{up.stderr}")
        try:
            endpoints = read_endpoints(state)
            kinds = process_kinds(endpoints.api, endpoints.pid, state / "kubeconfig")
            print(f"# reference chain through the ingress ({manifests}"
                  f"{', no simulated work' if args.no_work else ''}"
                  f"{'' if args.sampling is None else f', sampling {args.sampling:g} %'}); "
                  f"pids {kinds}\n")
            runner = asyncio.run
            with contextlib.suppress(ImportError):
                import uvloop
                runner = uvloop.run
            for c in args.concurrency:
                level = runner(drive(endpoints.ingress + "/", c, args.duration, args.warmup,
                                     kinds))
                print(report(level, kinds), "\n", flush=True)
            medians = statistics.median(os.getloadavg())
            print(f"load average at the end: {os.getloadavg()} (median {medians:.2f})")
        finally:
            cli("down", "--state-dir", str(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
