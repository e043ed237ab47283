"""The safety control inside a real chaoslib run: whatever the outcome, the run's chaos goes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib.experiment import run_experiment

from tests.unit.test_actions_chaos import Cluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as served:
        yield served


APPLY: dict[str, Any] = {"type": "action", "name": "slow-pricing",
         "provider": {"type": "python", "module": "probes.chaos", "func": "apply_chaos",
                      "arguments": {"manifest": "delay-target.yaml"}}}
# allowed, but fails in the run: Chaos Mesh selects no pod
FAIL = {"type": "action", "name": "select-nobody",
        "provider": {"type": "python", "module": "probes.chaos", "func": "apply_chaos",
                     "arguments": {"manifest": "pod-failure-side-service.yaml",
                                   "selector": {"labelSelectors": {"app": "nobody"}}}}}


def experiment(target: Cluster, *method: dict[str, Any], **config: Any) -> dict[str, Any]:
    return {
        "version": "1.0.0", "title": "safety", "description": "safety control in a run",
        "configuration": {"kubeconfig": str(target.kubeconfig), **config},
        "controls": [{"name": "safety",
                      "provider": {"type": "python", "module": "probes.controls.safety"}}],
        "method": list(method),
    }


def test_a_failed_run_still_removes_the_runs_chaos(cluster: Cluster) -> None:
    """after_experiment_control removes every object labelled with the run id, whatever the
    outcome; the journal records what went."""
    journal = run_experiment(experiment(cluster, APPLY, FAIL))
    run = journal["run"]
    assert run[0]["status"] == "succeeded", run[0]
    assert run[0]["output"]["name"].startswith("delay-target-")
    assert run[1]["status"] == "failed"
    assert "no pod is selected" in run[1]["exception"][-1]
    assert cluster.chaos_names() == []
    removed = journal["meshchaos_safety"]["removed"]
    assert [r["name"] for r in removed] == [run[0]["output"]["name"]]
    assert cluster.xds.faults["shop/pricing-a"] == []


def test_a_forbidden_namespace_interrupts_the_run_before_anything_is_applied(
        cluster: Cluster) -> None:
    """The allowlist is checked before the method starts: nothing is ever created."""
    forbidden = {**APPLY, "provider": {**APPLY["provider"], "arguments": {
        "manifest": "delay-target.yaml", "namespace": "kube-system"}}}
    journal = run_experiment(experiment(cluster, APPLY, forbidden))
    assert journal["status"] == "interrupted"
    assert journal["run"] == []
    assert cluster.chaos_names() == []


def test_dry_run_prints_and_applies_nothing(cluster: Cluster, capsys: Any) -> None:
    journal = run_experiment(experiment(cluster, APPLY, dry_run=True))
    assert journal["run"][0]["output"]["dry_run"] is True
    assert "kind: NetworkChaos" in capsys.readouterr().out
    assert cluster.chaos_names() == []


def after_experiment_control(**_: Any) -> None:
    """Used as a control by the test below: Ctrl-C while the run writes its report."""
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_after_the_experiment_still_lets_the_run_write_its_journal(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """A Ctrl-C that lands once the experiment is over (an impatient second press, while
    the report is written) still removes the run's chaos, and no longer interrupts: what is
    left (journal, report, stopping the mesh) is what must not be cut short."""
    doc = experiment(cluster, APPLY)
    doc["controls"].append({"name": "ctrl-c", "provider": {
        "type": "python", "module": "tests.unit.test_safety_control_run"}})
    journal = run_experiment(doc)
    assert journal["status"] == "completed"
    assert cluster.chaos_names() == []
    assert "the run is ending: its journal and report are written first" in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_chaos_run_writes_its_journal_is_ignored_then_works_again() -> None:
    """chaos run writes its journal after the controls' cleanup; a KeyboardInterrupt inside
    that write leaves an empty file. For a moment after the cleanup, Ctrl-C is ignored; after
    that it interrupts as before, through the handler that was there."""
    from probes.controls.safety import _guard_journal_write

    before = signal.getsignal(signal.SIGINT)
    try:
        _guard_journal_write(grace_s=0.3)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, and ignores it
        time.sleep(0.3)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, before)
