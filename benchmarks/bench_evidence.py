"""How long the probes take to read back the evidence of 100 requests on the local mesh.

Starts the reference chain (fixtures/k8s) on a local mesh in a temporary state dir, sends
``--requests`` requests through the ingress (each with its own sampled trace context), then
times ``probes.evidence.collect`` twice:

- *first read*: right after the last answer, so it includes waiting until every trace has
  settled (probes/evidence/settle.py: each trace is read at least the export lag, 0.12 s,
  after its own answer; the apps and sidecars export in batches);
- *re-read*: the same requests again, everything already stored: the cost of collection
  itself (mesh config, trace API, istio-proxy logs of every pod, correlation).

Wall time is noisy on a shared machine, so the table also shows the CPU time of the whole
process for each read: the mesh runs in a thread of this process, so that includes the
trace store rendering its answers and the API server reading the logs.

Target (issue 5): collecting the evidence of 100 requests takes under 1 s.

    .venv/bin/python benchmarks/bench_evidence.py [--requests 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from localmesh.mesh import MeshThread
from probes.config import DEFAULTS
from probes.deadline import Deadline
from probes.evidence.collect import collect
from probes.evidence.request import REFERENCE_CHAIN
from probes.target import resolve_target
from probes.traffic import Load, send_load

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 1.0


def _timed_collect(configuration: dict[str, str],
                   sent: list) -> tuple[float, float, int, int]:  # type: ignore[type-arg]
    target = resolve_target(configuration)
    began, cpu = time.perf_counter(), time.process_time()
    got = collect(target, sent, REFERENCE_CHAIN, Deadline(30.0, "bench evidence"))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    if not got.settled:
        raise SystemExit("the traces did not settle: the numbers would not be comparable")
    spans = sum(len(r.spans) for r in got.requests)
    return elapsed, cpu, spans, got.log_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="meshchaos-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        mesh = MeshThread([ROOT / "fixtures" / "k8s"], state_dir)
        endpoints = mesh.start(timeout=60)
        try:
            configuration = {"target": "local", "meshchaos_state_dir": str(state_dir),
                             "namespace": DEFAULTS["namespace"]}
            first, again = [], []
            for round_ in range(args.repeat):
                load = Load(url=endpoints.ingress + "/", run_id=f"bench{round_}",
                            count=args.requests, rate=200.0, duration_s=30.0, concurrency=8)
                sent = send_load(load)
                first.append(_timed_collect(configuration, sent))
                again.append(_timed_collect(configuration, sent))
        finally:
            mesh.stop()

    def row(name: str, samples: list[tuple[float, float, int, int]]) -> str:
        median = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        spans = samples[-1][2]
        lines = samples[-1][3]
        verdict = "ok" if median < TARGET_S else "over"
        return (f"| {name} | {median:.3f} | {min(s[0] for s in samples):.3f} | {cpu:.3f} "
                f"| {spans} | {lines} | < {TARGET_S:g} s: {verdict} |")

    print(f"evidence of {args.requests} requests through the reference chain, "
          f"{args.repeat} rounds (median; load average {os.getloadavg()[0]:.1f})")
    print("| read | median s | min s | CPU s (median) | spans | log lines read | target |")
    print("|---|---|---|---|---|---|---|")
    print(row("first read (waits for spans)", first))
    print(row("re-read (collection only)", again))


if __name__ == "__main__":
    main()
