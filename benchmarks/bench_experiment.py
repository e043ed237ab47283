"""Where the time of one ``chaos run`` goes: the suite's own overhead against the probes.

Runs ``chaos run experiments/timeout-cascade.json`` (or ``--experiment``) N times, each in
a fresh state dir on a fresh local mesh (the local-mesh control starts it), and prints one
row per run plus the median:

- ``total``: wall time from launching ``chaos`` to its exit;
- ``to run``: launch → the journal's ``start`` (interpreter, chaostoolkit, validation);
- ``mesh→Ready``: the mesh's own start → every pod Ready (``mesh.log`` of the state dir);
- ``to 1st activity``: launch → the first activity's start (everything before the probes);
- ``probes``: the sum of the journal's probe durations (method, hypothesis, rollbacks);
- ``actions``: the sum of its action durations (chaos applied and removed);
- ``after``: the journal's ``end`` → exit (verdict, report, mesh teardown, exit);
- ``overhead`` = total - probes - actions: what is not an activity (Chaos Toolkit's own
  start included);
- ``evidence``: the time the evidence probes spent reading evidence (their
  ``measurements.evidence_s``: the wait for settled traces, logs, mesh config);
- ``suite`` = (journal start → first activity) + evidence + after: the suite's own
  overhead as issue 6 counts it (mesh start, evidence, report).

Targets (issue 6): total ≤ 10 s, suite overhead ≤ 2 s. Wall numbers on a shared 2-core box are
noisy, so each row also gives the CPU seconds of ``chaos`` and everything it started
(children reaped), and the 1-minute load average when the run began.

Usage: .venv/bin/python benchmarks/bench_experiment.py [--runs N] [--experiment PATH]
       [--reuse] (start one mesh with ``meshchaos up --detach`` first and let every run
       reuse it: shows what the in-process mesh costs the probes)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOTAL_TARGET_S = 10.0
OVERHEAD_TARGET_S = 2.0
_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


@dataclass
class Run:
    """One measured ``chaos run`` (seconds)."""

    total: float
    to_run: float
    mesh_ready: float | None
    to_first: float
    probes: float
    actions: float
    after: float
    evidence: float
    cpu: float
    load: float
    verdict: str

    @property
    def overhead(self) -> float:
        return self.total - self.probes - self.actions

    @property
    def suite(self) -> float:
        return (self.to_first - self.to_run) + self.evidence + self.after


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _activities(journal: dict[str, Any]) -> list[dict[str, Any]]:
    runs = list(journal.get("run") or [])
    for state in (journal.get("steady_states") or {}).values():
        # "during" (a during-method-only hypothesis) is a list of states, one per iteration
        for one in state if isinstance(state, list) else [state]:
            runs += list((one or {}).get("probes") or [])
    runs += list(journal.get("rollbacks") or [])
    return runs


def _evidence_s(activities: list[dict[str, Any]]) -> float:
    total = 0.0
    for activity in activities:
        output = activity.get("output")
        if isinstance(output, dict):
            total += float((output.get("measurements") or {}).get("evidence_s") or 0.0)
    return total


def _mesh_ready(state_dir: Path) -> float | None:
    """Start → Ready of the mesh, from the first line of its log and its 'mesh up' line."""
    try:
        lines = (state_dir / "mesh.log").read_text().splitlines()
    except OSError:
        return None  # a reused mesh logs elsewhere
    up = [line for line in lines if " mesh up in " in line]
    if not lines or not up:
        return None
    first = datetime.strptime(lines[0][:23], _LOG_TIME)
    ready = datetime.strptime(up[0][:23], _LOG_TIME)
    return (ready - first).total_seconds()


def one_run(experiment: Path, state_dir: Path | None) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as tmp:
        work = Path(tmp)
        state = state_dir or work / "state"
        journal_path = work / "journal.json"
        env = {**os.environ, "MESHCHAOS_STATE_DIR": str(state),
               "MESHCHAOS_REPORT_DIR": str(work / "reports")}
        load = os.getloadavg()[0]
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launched = time.time()
        proc = subprocess.run([str(Path(sys.executable).with_name("chaos")), "--no-log-file",
                               "run", "--journal-path", str(journal_path), str(experiment)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        exited = time.time()
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not journal_path.is_file():
            raise SystemExit(f"chaos run wrote no journal (exit {proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        journal = json.loads(journal_path.read_text())
        activities = _activities(journal)
        kinds = [(a["activity"].get("type"), float(a.get("duration") or 0)) for a in activities]
        first = min(_epoch(a["start"]) for a in activities) if activities else exited
        mesh_ready = None if state_dir is not None else _mesh_ready(state)
    return Run(total=exited - launched, to_run=_epoch(journal["start"]) - launched,
               mesh_ready=mesh_ready, to_first=first - launched,
               probes=sum(d for t, d in kinds if t == "probe"),
               actions=sum(d for t, d in kinds if t == "action"),
               after=exited - _epoch(journal["end"]), evidence=_evidence_s(activities),
               cpu=(cpu_after.ru_utime + cpu_after.ru_stime)
               - (cpu_before.ru_utime + cpu_before.ru_stime),
               load=load, verdict=str((journal.get("meshchaos") or {}).get("verdict")))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(label: str, run: Run) -> str:
    cells = [run.total, run.to_run, run.mesh_ready, run.to_first, run.probes, run.actions,
             run.after, run.overhead, run.evidence, run.suite, run.cpu]
    return (f"| {label} | " + " | ".join(_fmt(c) for c in cells)
            + f" | {run.load:.2f} | {run.verdict} |")


def _median(runs: list[Run]) -> Run:
    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    fields = ("total", "to_run", "mesh_ready", "to_first", "probes", "actions", "after",
              "evidence", "cpu", "load")
    values = {f: med([getattr(r, f) for r in runs]) for f in fields}
    return Run(**values, verdict="")  # type: ignore[arg-type]


def _start_shared_mesh(state: Path) -> None:
    up = subprocess.run([sys.executable, "-m", "meshchaos.cli", "up", "--detach",
                         "--state-dir", str(state)], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
    if up.returncode != 0:
        raise SystemExit(f"meshchaos up failed:\n{up.stdout}\n{up.stderr}")


def _stop_shared_mesh(state: Path) -> None:
    subprocess.run([sys.executable, "-m", "meshchaos.cli", "down", "--state-dir", str(state)],
                   cwd=ROOT, capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--experiment", type=Path,
                        default=ROOT / "experiments" / "timeout-cascade.json")
    parser.add_argument("--reuse", action="store_true",
                        help="every run reuses one mesh started by `meshchaos up --detach`")
    args = parser.parse_args()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-experiment-mesh-") as shared:
        state = Path(shared) / "state" if args.reuse else None
        if state is not None:
            _start_shared_mesh(state)
        try:
            runs = [one_run(args.experiment.resolve(), state) for _ in range(args.runs)]
        finally:
            if state is not None:
                _stop_shared_mesh(state)
    mode = "one reused mesh (meshchaos up --detach)" if args.reuse else "a fresh mesh per run"
    print(f"chaos run {args.experiment.name}: {args.runs} runs, {mode} (seconds)\n")
    print("| run | total | to run | mesh→Ready | to 1st activity | probes | actions | after "
          "| overhead | evidence | suite | CPU | load | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for number, run in enumerate(runs, 1):
        print(_row(str(number), run))
    print(_row("median", _median(runs)))
    suites = sorted(r.suite for r in runs)
    print(f"\nsuite overhead per run (mesh start + evidence + report): min {suites[0]:.2f}, "
          f"median {statistics.median(suites):.2f}, max {suites[-1]:.2f} s")
    print(f"\ntargets: total ≤ {TOTAL_TARGET_S:.0f} s, suite overhead (mesh start + evidence + "
          f"report) ≤ {OVERHEAD_TARGET_S:.0f} s; CPU = chaos and every process it started")


if __name__ == "__main__":
    main()
