"""The meshchaos controls under real ``chaos run`` (chaostoolkit 1.19 / chaostoolkit-lib 1.44).

Activities are the stand-ins of tests/data/journals/standins.py, which return what the real
probes and chaos actions return by contract; the controls are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chaoslib.exceptions import InterruptExecution

from probes.controls import localmesh
from probes.controls.report import apply_verdict
from reports.verdict import compute_verdict

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "data" / "journals"
PASSED = {"type": "jsonpath", "path": "$.passed", "expect": True}


def py(name: str, func: str, kind: str = "probe", module: str = "standins",
       tolerance: Any = None, **arguments: Any) -> dict[str, Any]:
    activity: dict[str, Any] = {"type": kind, "name": name, "provider": {
        "type": "python", "module": module, "func": func, "arguments": arguments}}
    if tolerance is not None:
        activity["tolerance"] = tolerance
    return activity


def experiment(method: list[dict[str, Any]], hypothesis: list[dict[str, Any]],
               controls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"version": "1.0.0", "title": "stand-in run", "description": "Hypothesis: x",
            "configuration": {"report_dir": "unset", "ingress_url": ""},
            "controls": controls if controls is not None else [
                {"name": "report", "provider": {"type": "python",
                                                "module": "probes.controls.report",
                                                "arguments": {"experiment_name": "stand-in"}}}],
            "steady-state-hypothesis": {"title": "holds", "probes": hypothesis},
            "method": method, "rollbacks": [py("remove", "remove", kind="action")],
            "runtime": {"rollbacks": {"strategy": "always"}}}


def chaos_run(tmp_path: Path, doc: dict[str, Any], *extra: str
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    source = tmp_path / "experiment.json"
    source.write_text(json.dumps(doc))
    journal = tmp_path / "journal.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDINS), str(tmp_path),
                                                        str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "chaostoolkit", "--no-log-file", "run",
                           "--journal-path", str(journal), "--var",
                           f"report_dir={tmp_path / 'reports'}", *extra, str(source)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
                          check=False)
    return proc, json.loads(journal.read_text())


SLO = py("slo", "slo_ok", tolerance=PASSED)
INJECT = py("inject", "inject", kind="action")
EFFECT = py("effect", "effect", tolerance=PASSED)


def test_report_control_makes_an_unproven_run_exit_non_zero(tmp_path: Path) -> None:
    """chaos run exits 0 on a failed injection (INDEX.json); with the control it exits 1."""
    doc = experiment([py("inject", "inject_not_selected", kind="action"), EFFECT], [SLO])
    proc, journal = chaos_run(tmp_path, doc)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert journal["status"] == "failed" and journal["deviated"] is False
    block = journal["meshchaos"]
    assert block["verdict"] == "INCONCLUSIVE" and block["chaostoolkit_status"] == "completed"
    assert "no pod is selected" in block["reason"]
    report = Path(block["report_dir"])
    assert report.parent == tmp_path / "reports" and report.name.startswith("stand-in-")
    assert sorted(p.name for p in report.iterdir()) == ["journal.json", "junit.xml",
                                                        "report.html", "report.md"]
    assert "meshchaos verdict: INCONCLUSIVE: stand-in run: " in proc.stdout
    assert str(report / "report.html") in proc.stdout


def test_report_control_leaves_a_pass_at_exit_zero(tmp_path: Path) -> None:
    proc, journal = chaos_run(tmp_path, experiment([INJECT, EFFECT], [SLO]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert journal["status"] == "completed" and journal["meshchaos"]["verdict"] == "PASS"


def test_report_control_marks_a_fail_deviated(tmp_path: Path) -> None:
    deadlines = py("deadlines", "deadlines", tolerance=PASSED)
    proc, journal = chaos_run(tmp_path, experiment([INJECT, EFFECT], [SLO, deadlines]))
    assert proc.returncode == 1
    assert journal["deviated"] is True and journal["meshchaos"]["verdict"] == "FAIL"
    saved = json.loads((Path(journal["meshchaos"]["report_dir"]) / "journal.json").read_text())
    assert saved["meshchaos"]["verdict"] == "FAIL"


def test_configuration_changed_by_a_control_hook_reaches_the_activities(tmp_path: Path) -> None:
    """chaoslib 1.44 hands controls the configuration dict it copies for each activity."""
    (tmp_path / "setcfg.py").write_text(
        "def before_experiment_control(context, configuration=None, **_):\n"
        "    configuration['ingress_url'] = 'http://127.0.0.1:1/from-control'\n")
    (tmp_path / "echo.py").write_text(
        "def ingress(configuration=None):\n    return configuration.get('ingress_url')\n")
    doc = experiment([py("echo", "ingress", module="echo")], [SLO],
                     controls=[{"name": "setcfg", "provider": {"type": "python",
                                                               "module": "setcfg"}}])
    _, journal = chaos_run(tmp_path, doc)
    assert journal["run"][0]["output"] == "http://127.0.0.1:1/from-control"


def test_apply_verdict_is_idempotent_for_meshchaos_report() -> None:
    """A journal adjusted by the control gets the same verdict when judged again."""
    journal = json.loads((STANDINS / "interrupted-sigterm.json").read_text())
    verdict = compute_verdict(journal)
    apply_verdict(journal, verdict)
    assert journal["status"] == "failed"
    assert compute_verdict(journal).outcome is verdict.outcome


def test_local_mesh_control_starts_nothing_on_the_kubernetes_target() -> None:
    config = {"target": "kubernetes", "ingress_url": "http://gateway"}
    localmesh.before_experiment_control({}, configuration=config)
    assert config == {"target": "kubernetes", "ingress_url": "http://gateway"}


def test_cluster_kubeconfig_is_exported_for_the_run_and_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chaostoolkit-kubernetes reads KUBECONFIG, not the experiment's configuration."""
    kubeconfig = tmp_path / "cluster.yaml"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("KUBECONFIG", "/elsewhere")
    localmesh.before_experiment_control(
        {}, configuration={"target": "kubernetes", "kubeconfig": str(kubeconfig)})
    assert os.environ["KUBECONFIG"] == str(kubeconfig)
    localmesh.cleanup_control()
    assert os.environ["KUBECONFIG"] == "/elsewhere"


def test_a_missing_cluster_kubeconfig_interrupts_the_run(tmp_path: Path) -> None:
    with pytest.raises(InterruptExecution, match="does not exist"):
        localmesh.before_experiment_control(
            {}, configuration={"target": "kubernetes", "kubeconfig": str(tmp_path / "no")})


@pytest.mark.parametrize(("config", "expected"), [
    pytest.param({}, {}, id="no-defect"),
    pytest.param({"chain_defect": "none", "chain_defect_hop": "orders"}, {}, id="none"),
    pytest.param({"chain_defect": "no-cancel", "chain_defect_hop": "inventory"},
                 {("shop", "inventory"): {"CHAIN_DEFECT": "no-cancel"}}, id="twin"),
    pytest.param({"chain_defect": "no-cancel", "chain_defect_hop": "inventory",
                  "namespace": "shop2"},
                 {("shop2", "inventory"): {"CHAIN_DEFECT": "no-cancel"}}, id="namespace"),
    pytest.param({"chain_defect": "add-elapsed", "chain_defect_hop": "inventory",
                  "chain_defect_env": "CHAIN_WORK_BEFORE=40; CHAIN_MARGIN_MS=5"},
                 {("shop", "inventory"): {"CHAIN_DEFECT": "add-elapsed",
                                          "CHAIN_WORK_BEFORE": "40", "CHAIN_MARGIN_MS": "5"}},
                 id="hop-env"),
])
def test_chain_defect_becomes_the_mesh_env_override(config: dict[str, Any],
                                                    expected: dict[Any, Any]) -> None:
    assert localmesh.mesh_env_overrides(config) == expected


def test_a_hop_env_entry_without_a_value_interrupts_the_run() -> None:
    with pytest.raises(InterruptExecution, match="'CHAIN_WORK_BEFORE' is not KEY=VALUE"):
        localmesh.mesh_env_overrides({"chain_defect": "add-elapsed",
                                      "chain_defect_hop": "inventory",
                                      "chain_defect_env": "CHAIN_WORK_BEFORE"})


def test_chain_defect_without_a_hop_interrupts_the_run() -> None:
    with pytest.raises(InterruptExecution, match="chain_defect_hop"):
        localmesh.mesh_env_overrides({"chain_defect": "no-cancel"})


def test_missing_manifests_interrupt_the_run_before_any_process_starts(
        tmp_path: Path) -> None:
    config = {"target": "local", "meshchaos_state_dir": str(tmp_path / "state"),
              "meshchaos_manifests": str(tmp_path / "nope")}
    with pytest.raises(InterruptExecution, match="missing path"):
        localmesh.before_experiment_control({}, configuration=config)
    assert "ingress_url" not in config


def test_configure_control_launches_no_mesh_on_the_kubernetes_target(tmp_path: Path) -> None:
    config = {"target": "kubernetes", "meshchaos_state_dir": str(tmp_path / "state")}
    localmesh.configure_control(configuration=config)
    assert localmesh._launched is None
    assert not (tmp_path / "state").exists()


def test_configure_control_leaves_missing_manifests_to_the_before_hook(tmp_path: Path) -> None:
    """chaoslib swallows what configure_control raises: the refusal must come from
    before_experiment_control, which stops the run, and nothing may have started."""
    config = {"target": "local", "meshchaos_state_dir": str(tmp_path / "state"),
              "meshchaos_manifests": str(tmp_path / "nope")}
    localmesh.configure_control(configuration=config)
    assert localmesh._launched is None
    with pytest.raises(InterruptExecution, match="missing path"):
        localmesh.before_experiment_control({}, configuration=config)
    assert not (tmp_path / "state" / "mesh.pid").exists()


def test_a_mesh_launched_for_a_run_that_never_started_is_stopped_at_cleanup(
        tmp_path: Path) -> None:
    """configure_control starts the mesh early; a run that ends before its experiment (say,
    another control interrupted it) still stops that mesh in cleanup_control."""
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n"
                                       "  name: shop\n")
    config = {"target": "local", "meshchaos_state_dir": str(tmp_path / "state"),
              "meshchaos_manifests": str(manifests)}
    localmesh.configure_control(configuration=config)
    assert localmesh._launched is not None
    daemon = localmesh._launched[1]
    assert daemon.proc is not None
    localmesh.cleanup_control()
    assert daemon.proc.returncode is not None
    assert localmesh._launched is None
    assert not (tmp_path / "state" / "mesh.pid").exists()
