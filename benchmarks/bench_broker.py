"""The broker pod: what it costs the mesh's start, and what the sidecars add to a message.

Two measurements, each with its baseline side by side in the same run:

- **start to Ready**: ``LocalMesh.start()`` of the reference chain (fixtures/k8s) with and
  without the broker pod (fixtures/broker/k8s), runs alternating, each in a fresh interpreter
  (no import or schema cache from an earlier run), with the moment the broker pod turned
  Ready. Target (issue 17): ≤ 4 s to Ready with the broker.
- **publish → consume** at concurrency 1: a client pod (tests/data/amqp_client.py, aio-pika,
  publisher confirms, persistent messages, manual acks) publishes a message and waits for its
  delivery, through its sidecar and the broker's (two tcp_proxy passes each way) and, in
  alternating batches on the same kept-open kind of connection, straight to the broker's port.
  Target: ≤ 0.5 ms p50 added by the sidecars.

Wall times on a shared 2-core box depend on the neighbours' load: the load average is printed.
This script never fails on a target, it reports.

Usage: .venv/bin/python benchmarks/bench_broker.py [--runs N] [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tables import row  # noqa: E402

from localmesh.mesh import LocalMesh, MeshThread  # noqa: E402
from localmesh.supervisor.replicasets import is_pod_ready  # noqa: E402
from tests.data.amqp_client import write_client_manifests  # noqa: E402

CHAIN = ROOT / "fixtures" / "k8s"
BROKER = ROOT / "fixtures" / "broker" / "k8s"
NS = "shop"


async def one_start(with_broker: bool) -> dict[str, float]:
    """Start and stop one mesh; seconds until every pod is Ready (and the broker pod)."""
    marks: dict[str, float] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as state:
        manifests = [CHAIN, BROKER] if with_broker else [CHAIN]
        mesh = LocalMesh(manifests, Path(state))

        def watch(event: str, pod: dict[str, Any]) -> None:
            labels = pod["metadata"].get("labels") or {}
            if labels.get("app") == "broker" and is_pod_ready(pod) and "broker" not in marks:
                marks["broker"] = time.monotonic() - began

        mesh.store.subscribe(watch, group="", plural="pods")
        await mesh.start()
        marks["all_ready"] = time.monotonic() - began
        stopping = time.monotonic()
        await mesh.stop()
        marks["stop"] = time.monotonic() - stopping
    return marks


def cold_start(with_broker: bool) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--one"] + (["--broker"] if with_broker
                                                                 else []),
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"the measured start failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def roundtrip(port: int, query: str) -> list[float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/roundtrip?{query}",
                                    timeout=120) as resp:
            return [float(v) for v in json.loads(resp.read())["latencies_ms"]]
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"the client pod failed ({query}): {exc.read().decode()}") from None


def latencies(messages: int, batch: int) -> tuple[list[float], list[float]]:
    """Publish → consume latencies (ms) through the sidecars and direct, batches alternating."""
    with tempfile.TemporaryDirectory() as root:
        thread = MeshThread([write_client_manifests(Path(root) / "manifests"), BROKER],
                            Path(root) / "state")
        thread.start(timeout=60)
        try:
            assert thread.mesh.xds is not None
            for pod in thread.mesh.store.list("", "pods", NS):  # the broker's endpoint pushed
                thread.run(thread.mesh.xds.wait_synced(NS, pod["metadata"]["name"]))
            pods = {(p["metadata"].get("labels") or {}).get("app"): p
                    for p in thread.mesh.store.list("", "pods", NS)}
            client = int(pods["client"]["metadata"]["annotations"]["meshchaos.io/app-port"])
            broker = int(pods["broker"]["metadata"]["annotations"]["meshchaos.io/app-port"])
            direct = f"direct=127.0.0.1:{broker}"
            # Warm both paths (connections, channels, the broker's first queues).
            roundtrip(client, "n=50&keep=1")
            roundtrip(client, f"n=50&keep=1&{direct}")
            via, straight = [], []
            for _ in range(max(messages // batch, 1)):
                via += roundtrip(client, f"n={batch}&keep=1")
                straight += roundtrip(client, f"n={batch}&keep=1&{direct}")
            return via, straight
        finally:
            thread.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--one", action="store_true", help="(internal) one start, JSON out")
    parser.add_argument("--broker", action="store_true", help="(internal) with the broker")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one_start(args.broker))))
        return
    load = os.getloadavg()[0]
    without: list[dict[str, float]] = []
    with_broker: list[dict[str, float]] = []
    for _ in range(args.runs):
        without.append(cold_start(False))
        with_broker.append(cold_start(True))
    via, straight = latencies(args.messages, args.batch)
    print(f"broker pod ({args.runs} starts each, alternating; {len(via)} messages each way; "
          f"load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)\n")
    print("| start (s) | runs | min | median | max | target |")
    print("|---|---|---|---|---|---|")
    print(row("reference chain: all pods Ready", [r["all_ready"] for r in without], ""))
    print(row("chain + broker: all pods Ready", [r["all_ready"] for r in with_broker], "4.0"))
    print(row("chain + broker: broker pod Ready", [r["broker"] for r in with_broker
                                                  if "broker" in r], ""))
    print(row("chain + broker: LocalMesh.stop()", [r["stop"] for r in with_broker], ""))
    print()
    print("| publish → consume, c=1 (ms) | p50 | p90 | p99 | mean |")
    print("|---|---|---|---|---|")
    for name, values in (("direct to the broker", straight),
                         ("through both sidecars", via)):
        print(f"| {name} | {pct(values, 0.5):.3f} | {pct(values, 0.9):.3f} | "
              f"{pct(values, 0.99):.3f} | {statistics.fmean(values):.3f} |")
    added = pct(via, 0.5) - pct(straight, 0.5)
    print(f"\nadded by the sidecars at p50: {added:.3f} ms (target ≤ 0.5 ms)")


if __name__ == "__main__":
    main()
