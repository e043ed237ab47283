"""How fast the local mesh starts, and how fast a killed pod serves again.

Measures, for the reference chain of fixtures/k8s (5 services + the ingress gateway):
- ``LocalMesh.start()`` until every pod is Ready (manifests, validation, fork server,
  pods, readiness), with the moment the API server was up; each run in a fresh
  interpreter with the mesh's modules imported (no cache from an earlier run);
- ``meshchaos up --detach`` wall time, as a user sees it (interpreter start included);
- pod-kill (delete, grace 0) of the frontend until its replacement answers through the
  ingress with its new name, and until the replacement is Ready in the API.

Targets (docs: "all pods Ready within 1.5 s of up", "a killed pod serves again within
0.5 s") are printed beside the numbers; this script never fails on them, it reports.
Wall times on a shared 2-core box depend on the neighbours' load, so the CPU seconds the
start cost (the mesh process, its fork servers and every pod process, until Ready) are
printed too, with the load average.

Usage: .venv/bin/python benchmarks/bench_mesh_start.py [--runs N] [--manifests DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tables import row

from localmesh.daemon import descendants
from localmesh.mesh import LocalMesh
from localmesh.statedir import StateDir
from localmesh.supervisor.replicasets import is_pod_ready
from probes.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
NS = DEFAULTS["namespace"]  # the reference chain of fixtures/k8s
KILLED = "frontend"


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these live processes, with their reaped children's."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


async def one_start(manifests: Path) -> dict[str, float]:
    """Start and stop one mesh; return the timings of interest (seconds)."""
    marks: dict[str, float] = {}
    began = time.monotonic()

    def progress(line: str) -> None:
        if line.startswith("API server"):
            marks["api_up"] = time.monotonic() - began

    cpu_began = time.process_time()
    with tempfile.TemporaryDirectory() as state:
        mesh = LocalMesh([manifests], Path(state), progress=progress)
        endpoints = await mesh.start()
        marks["all_ready"] = time.monotonic() - began
        assert mesh.supervisor is not None
        marks["cpu"] = time.process_time() - cpu_began + tree_cpu(mesh.supervisor.all_pids())
        try:
            marks.update(await pod_kill(mesh, endpoints.ingress))
        finally:
            stopping = time.monotonic()
            await mesh.stop()
            marks["stop"] = time.monotonic() - stopping
    return marks


async def pod_kill(mesh: LocalMesh, ingress: str) -> dict[str, float]:
    """Delete the frontend pod (grace 0, as Chaos Mesh pod-kill); time the replacement."""
    store = mesh.store
    (old,) = [p for p in store.list("", "pods", NS, label_selector=f"app={KILLED}")]
    old_name = old["metadata"]["name"]
    await asyncio.to_thread(_get, ingress + "/")  # warm connections first
    began = time.monotonic()
    store.delete("", "pods", NS, old_name, grace_period_seconds=0)
    marks: dict[str, float] = {}
    deadline = began + 10
    while time.monotonic() < deadline and len(marks) < 2:
        pods = [p for p in store.list("", "pods", NS, label_selector=f"app={KILLED}")
                if p["metadata"]["name"] != old_name]
        if "replacement_ready" not in marks and pods and is_pod_ready(pods[0]):
            marks["replacement_ready"] = time.monotonic() - began
        if "replacement_serving" not in marks and pods:
            status, body = await asyncio.to_thread(_get, ingress + "/")
            if status == 200 and json.loads(body).get("pod") == pods[0]["metadata"]["name"]:
                marks["replacement_serving"] = time.monotonic() - began
        await asyncio.sleep(0.005)
    return marks


def cold_start(manifests: Path) -> dict[str, Any]:
    """One start in a fresh interpreter: no schema or import cache from a previous run."""
    proc = subprocess.run([sys.executable, __file__, "--one", "--manifests", str(manifests)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"the measured start failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cli_up(manifests: Path) -> tuple[float, float]:
    """``meshchaos up --detach`` until it returns (every pod Ready): wall and CPU seconds
    (the command, the daemon it started, its fork servers and pods)."""
    with tempfile.TemporaryDirectory() as state:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        up = subprocess.run([sys.executable, "-m", "meshchaos.cli", "up", "--detach",
                             "--manifests", str(manifests), "--state-dir", state],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon = StateDir(Path(state)).owner_pid()
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if daemon is not None:
            cpu += tree_cpu([daemon, *descendants(daemon)])
        subprocess.run([sys.executable, "-m", "meshchaos.cli", "down", "--state-dir", state],
                       cwd=ROOT, capture_output=True, timeout=60)
    if up.returncode != 0:
        raise SystemExit(f"meshchaos up failed:\n{up.stdout}\n{up.stderr}")
    return took, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--manifests", type=Path, default=ROOT / "fixtures" / "k8s")
    parser.add_argument("--one", action="store_true",
                        help="(internal) measure one start in this process, print JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(one_start(args.manifests))))
        return
    load = os.getloadavg()[0]
    results = [cold_start(args.manifests) for _ in range(args.runs)]
    cli = [cli_up(args.manifests) for _ in range(args.runs)]

    def col(key: str) -> list[float]:
        return [r[key] for r in results if key in r]

    print(f"local mesh start-up, {args.manifests} ({args.runs} runs, seconds; load average "
          f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)\n")
    print("| metric | runs | min | median | max | target |")
    print("|---|---|---|---|---|---|")
    print(row("LocalMesh.start(): API server up", col("api_up"), ""))
    print(row("LocalMesh.start(): all pods Ready", col("all_ready"), "1.5"))
    print(row("LocalMesh.start(): CPU until Ready (mesh, fork servers, pods)", col("cpu"),
              ""))
    print(row("`meshchaos up --detach` wall time", [wall for wall, _ in cli], ""))
    print(row("`meshchaos up --detach` CPU until Ready (command, daemon, pods)",
              [cpu for _, cpu in cli], ""))
    print(row(f"pod-kill {KILLED}: replacement Ready", col("replacement_ready"), ""))
    print(row(f"pod-kill {KILLED}: replacement serving via ingress",
              col("replacement_serving"), "0.5"))
    print(row("LocalMesh.stop()", col("stop"), ""))


if __name__ == "__main__":
    main()
