"""Every experiment on the local mesh: the correct chain must PASS, the twin aimed at the
experiment's bug must FAIL (the twin comes from the experiment's ``meshchaos`` extension).

Each run is a real ``chaos run`` from the repository root with its own state dir and report
dir, so the local-mesh control starts (and stops) a mesh of its own; the run is bounded and
its process group is killed if it overruns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from localmesh.mesh import MeshThread
from localmesh.statedir import StateDir
from probes.controls import localmesh
from reports.verdict import Outcome

from .conftest import alive, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.json"))
IDS = [p.stem for p in EXPERIMENTS]
RUN_TIMEOUT_S = 105.0  # under the per-test timeout of 120 s


def twins_of(path: Path) -> list[dict[str, str]]:
    """The twins an experiment is aimed at (its ``meshchaos`` extension's ``twins``)."""
    doc = json.loads(path.read_text())
    ext = next(e for e in doc["extensions"] if e["name"] == "meshchaos")
    return list(ext["twins"])


# Every defective twin of fixtures/chain, the experiment aimed at its bug and the hop the
# failure reason must name. The table is the contract; the experiments' ``twins`` must match.
TWIN_TABLE = [
    ("drop-traceparent", "orders", "pod-kill-midchain"),
    ("reuse-parent", "orders", "deadline-headers-audit"),
    ("drop-tracestate", "orders", "timeout-cascade"),
    ("drop-b3", "orders", "timeout-cascade"),
    ("drop-request-id", "orders", "deadline-headers-audit"),
    ("ignore-budget", "orders", "deadline-headers-audit"),
    ("ignore-budget", "inventory", "timeout-cascade"),
    ("ignore-budget", "inventory", "partition-leaf"),
    ("add-elapsed", "inventory", "deadline-headers-audit"),
    ("no-cancel", "orders", "timeout-cascade"),
    ("cancel-self-only", "orders", "timeout-cascade"),
    ("app-retries", "orders", "lossy-retry-budget"),
    ("app-retries", "orders", "sidecar-failure"),
    ("no-cancel", "inventory", "fault-delay-beyond-timeout"),
    ("ignore-budget", "inventory", "fault-delay-beyond-timeout"),
    ("no-fallback", "orders", "fault-abort-side-hop"),
    ("grpc-drop-metadata", "inventory", "timeout-cascade"),
    ("grpc-fresh-deadline", "inventory", "deadline-headers-audit"),
    ("grpc-retry-unavailable", "inventory", "partition-leaf"),
    ("amqp-drop-trace-headers", "pricing", "broker-partition"),
    ("amqp-new-trace", "shipping", "consumer-kill-redelivery"),
    ("amqp-ack-before-work", "shipping", "consumer-kill-redelivery"),
    ("amqp-not-idempotent", "shipping", "consumer-kill-redelivery"),
    ("amqp-process-expired", "shipping", "queue-backlog-deadline"),
]
TWIN_IDS = [f"{d}@{h}-{e}" for d, h, e in TWIN_TABLE]


def test_the_twin_table_names_every_twin_and_matches_the_experiments() -> None:
    from fixtures.chain.defects import Defect

    assert {d for d, _, _ in TWIN_TABLE} == {d.value for d in Defect} - {"none"}
    declared = {(t["chain_defect"], t["chain_defect_hop"], p.stem)
                for p in EXPERIMENTS for t in twins_of(p)}
    assert declared == set(TWIN_TABLE)


def run_experiment(path: Path, tmp_path: Path, **env: str) -> tuple[Outcome, str, int]:
    """``chaos run`` one experiment on a fresh local mesh; return verdict, summary, exit code."""
    environ = {**os.environ, "MESHCHAOS_STATE_DIR": str(tmp_path / "state"),
               "MESHCHAOS_REPORT_DIR": str(tmp_path / "reports"), **env}
    outcome, summary, _, code = run_chaos([str(path)], tmp_path, environ,
                                          timeout_s=RUN_TIMEOUT_S, name=path.name)
    return outcome, summary, code


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_experiment_passes_on_the_correct_chain(path: Path, tmp_path: Path) -> None:
    outcome, summary, code = run_experiment(path, tmp_path)
    assert outcome is Outcome.PASS, summary
    assert code == 0


def test_a_pod_kill_of_the_grpc_server_is_felt_in_the_mesh_and_covered_by_retries(
        tmp_path: Path) -> None:
    """pod-kill-midchain aimed at pricing, the gRPC server: orders' retries of inventory hide
    the kill from the client, and the effect probe finds it in inventory's sidecar lines
    (503 UC/UH towards pricing, mesh_effect_on), so the run is judged, not INCONCLUSIVE."""
    outcome, summary, code = run_experiment(ROOT / "experiments" / "pod-kill-midchain.json",
                                            tmp_path, MESHCHAOS_TARGET_SERVICE="pricing")
    assert outcome is Outcome.PASS, summary
    assert code == 0


@pytest.mark.parametrize(("defect", "hop", "experiment"), TWIN_TABLE, ids=TWIN_IDS)
def test_experiment_fails_on_the_twin_aimed_at_its_bug_and_names_its_hop(
        defect: str, hop: str, experiment: str, tmp_path: Path) -> None:
    path = ROOT / "experiments" / f"{experiment}.json"
    twin = next(t for t in twins_of(path)
                if (t["chain_defect"], t["chain_defect_hop"]) == (defect, hop))
    outcome, summary, code = run_experiment(
        path, tmp_path, MESHCHAOS_CHAIN_DEFECT=defect, MESHCHAOS_CHAIN_DEFECT_HOP=hop,
        MESHCHAOS_CHAIN_DEFECT_ENV=twin.get("chain_defect_env", ""))
    assert outcome is Outcome.FAIL, summary
    assert code == 1
    reason = summary.split("\n", 1)[0]
    assert f"@ {hop}" in reason or f"at {hop}" in reason or f"{hop}:" in reason \
        or f"hop {hop}" in reason, summary


def test_local_mesh_control_reuses_a_live_mesh_and_leaves_it_running(tmp_path: Path) -> None:
    """A mesh started by `meshchaos up` (here a MeshThread) is reused, never stopped."""
    thread = MeshThread([ROOT / "fixtures" / "k8s"], tmp_path / "state")
    endpoints = thread.start(timeout=60)
    previous = os.environ.get("KUBECONFIG")
    try:
        config: dict[str, Any] = {"target": "local",
                                  "meshchaos_state_dir": str(tmp_path / "state")}
        localmesh.before_experiment_control({}, configuration=config)
        assert config["ingress_url"] == endpoints.ingress
        assert config["traces_url"] == endpoints.traces
        assert Path(config["kubeconfig"]).is_file()
        assert os.environ["KUBECONFIG"] == config["kubeconfig"]
        localmesh.cleanup_control()
        pid = StateDir(tmp_path / "state").live_pid()
        assert pid is not None and alive(pid)
        assert os.environ.get("KUBECONFIG") == previous
    finally:
        thread.stop()


def test_local_mesh_control_refuses_a_twin_on_a_live_correct_mesh(tmp_path: Path) -> None:
    thread = MeshThread([ROOT / "fixtures" / "k8s"], tmp_path / "state")
    thread.start(timeout=60)
    try:
        config = {"target": "local", "meshchaos_state_dir": str(tmp_path / "state"),
                  "chain_defect": "no-cancel", "chain_defect_hop": "inventory"}
        from chaoslib.exceptions import InterruptExecution

        with pytest.raises(InterruptExecution) as refused:
            localmesh.before_experiment_control({}, configuration=config)
        message = str(refused.value)
        assert "a live mesh runs from state dir" in message
        assert "deployment env ['shop/inventory']" in message and "meshchaos down" in message
    finally:
        thread.stop()
