"""Record the journals of this folder by running real ``chaos run`` on stand-in activities.

    .venv/bin/python tests/data/journals/record.py

Each scenario is an experiment whose activities live in ``standins.py``. The journals are
chaostoolkit-lib's own output (no report control: these are what the report control
receives); ``INDEX.json`` keeps, per journal, the exit code ``chaos run`` gave and the
verdict meshchaos must reach, which is the evidence that the exit code is not a verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MOD = "standins"
PASSED = {"type": "jsonpath", "path": "$.passed", "expect": True}


def _py(name: str, func: str, kind: str = "probe", tolerance: Any = None,
        **arguments: Any) -> dict[str, Any]:
    activity: dict[str, Any] = {"type": kind, "name": name, "provider": {
        "type": "python", "module": MOD, "func": func, "arguments": arguments}}
    if tolerance is not None:
        activity["tolerance"] = tolerance
    return activity


def _experiment(title: str, *, hypothesis: list[dict[str, Any]], method: list[dict[str, Any]],
                rollbacks: list[dict[str, Any]] | None = None,
                strategy: str = "default") -> dict[str, Any]:
    return {"version": "1.0.0", "title": title, "description": title, "tags": ["meshchaos"],
            "steady-state-hypothesis": {"title": "the chain holds", "probes": hypothesis},
            "method": method, "rollbacks": rollbacks or [],
            "runtime": {"rollbacks": {"strategy": "always"},
                        "hypothesis": {"strategy": strategy}}}


SLO = _py("chain-keeps-its-slo", "slo_ok", tolerance=PASSED)
DEADLINES = _py("deadlines-shrink-and-no-orphans", "deadlines", tolerance=PASSED)
INJECT = _py("inject-leaf-delay", "inject", kind="action")
EFFECT = _py("confirm-leaf-slowed", "effect", tolerance=PASSED)
REMOVE = _py("remove-leaf-delay", "remove", kind="action")

SCENARIOS: dict[str, tuple[dict[str, Any], str]] = {
    "pass": (_experiment("leaf delay, healthy chain", hypothesis=[SLO],
                         method=[INJECT, EFFECT], rollbacks=[REMOVE]), "PASS"),
    "fail-orphan-work": (_experiment("leaf delay, orphan work", hypothesis=[SLO, DEADLINES],
                                     method=[INJECT, EFFECT], rollbacks=[REMOVE]), "FAIL"),
    "inconclusive-injection-failed": (_experiment(
        "leaf delay, nothing selected", hypothesis=[SLO],
        method=[_py("inject-leaf-delay", "inject_not_selected", kind="action"), EFFECT],
        rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "inconclusive-not-all-injected": (_experiment(
        "leaf delay, not all injected", hypothesis=[SLO],
        method=[_py("inject-leaf-delay", "inject", kind="action", all_injected=False), EFFECT],
        rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "inconclusive-before-miss": (_experiment(
        "leaf delay, unhealthy before", hypothesis=[
            _py("chain-keeps-its-slo", "effect", tolerance=PASSED, seen=False)],
        method=[INJECT, EFFECT], rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "inconclusive-no-effect": (_experiment(
        "leaf delay, no effect", hypothesis=[SLO],
        method=[INJECT, _py("confirm-leaf-slowed", "effect", tolerance=PASSED, seen=False)],
        rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "inconclusive-probe-raised": (_experiment(
        "leaf delay, probe cannot measure", hypothesis=[
            SLO, _py("deadlines-shrink-and-no-orphans", "measure_fails", tolerance=PASSED)],
        method=[INJECT, EFFECT], rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "inconclusive-rollback-failed": (_experiment(
        "leaf delay, rollback fails", hypothesis=[SLO], method=[INJECT, EFFECT],
        rollbacks=[_py("remove-leaf-delay", "remove", kind="action", fail=True)]),
        "INCONCLUSIVE"),
    "interrupted-sigterm": (_experiment(
        "leaf delay, SIGTERM mid-activity", hypothesis=[SLO],
        method=[INJECT, _py("long-probe", "terminate_self"), EFFECT],
        rollbacks=[REMOVE]), "INCONCLUSIVE"),
    "fail-after-method-only": (_experiment(
        "leaf delay, hypothesis after the method only", hypothesis=[DEADLINES],
        method=[_py("baseline-slo", "slo_ok", tolerance=PASSED), INJECT, EFFECT],
        rollbacks=[REMOVE], strategy="after-method-only"), "FAIL"),
    "inconclusive-baseline-miss": (_experiment(
        "leaf delay, baseline misses", hypothesis=[DEADLINES],
        method=[_py("baseline-slo", "effect", tolerance=PASSED, seen=False), INJECT, EFFECT],
        rollbacks=[REMOVE], strategy="after-method-only"), "INCONCLUSIVE"),
    "interrupted-sigusr1": (_experiment(
        "leaf delay, operator abort", hypothesis=[SLO],
        method=[INJECT, _py("long-probe", "leave_gracefully"), EFFECT],
        rollbacks=[REMOVE]), "INCONCLUSIVE"),
}


def record(name: str, experiment: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"{name}.json"
        source.write_text(json.dumps(experiment, indent=2))
        journal = HERE / f"{name}.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[2])])}
        proc = subprocess.run(
            [sys.executable, "-m", "chaostoolkit", "--no-log-file", "run",
             "--journal-path", str(journal), str(source)],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=60, check=False)
        data = json.loads(journal.read_text())
        return {"exit_code": proc.returncode, "status": data["status"],
                "deviated": data["deviated"]}


def main() -> None:
    index = {}
    for name, (experiment, expected) in SCENARIOS.items():
        index[name] = {**record(name, experiment), "expected_verdict": expected}
        print(name, index[name])
    (HERE / "INDEX.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
