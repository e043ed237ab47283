"""The experiments are valid Chaos Toolkit experiments wired the meshchaos way.

chaostoolkit-lib 1.44's ``ensure_experiment_is_valid`` imports every python provider, so these
tests also prove the real probe, action and control modules are importable with the functions
and arguments the experiments name.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaoslib.experiment import ensure_experiment_is_valid
from chaoslib.hypothesis import within_tolerance

from fixtures.chain.defects import Defect
from probes.config import KEYS, env_name
from reports.model import method_probes

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.json"))
IDS = [p.stem for p in EXPERIMENTS]
# Every key of probes.config but run_id, which the safety control sets: chaoslib's
# load_configuration drops a --var whose key the experiment does not declare.
CONFIG_KEYS = set(KEYS) - {"run_id"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def activities(experiment: dict[str, Any]) -> list[dict[str, Any]]:
    return [*experiment["steady-state-hypothesis"]["probes"], *experiment["method"],
            *experiment.get("rollbacks", [])]


def deployments() -> set[str]:
    names = set()
    for path in [*(ROOT / "fixtures" / "k8s").glob("*.yaml"),
                 *(ROOT / "fixtures" / "broker" / "k8s").glob("*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Deployment":
                names.add(doc["metadata"]["name"])
    return names


def test_the_eleven_experiments_of_the_suite_exist() -> None:
    assert set(IDS) == {"timeout-cascade", "pod-kill-midchain", "partition-leaf",
                        "lossy-retry-budget", "sidecar-failure", "deadline-headers-audit",
                        "fault-delay-beyond-timeout", "fault-abort-side-hop",
                        "broker-partition", "consumer-kill-redelivery", "queue-backlog-deadline"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_experiment_is_valid_for_chaoslib(path: Path) -> None:
    ensure_experiment_is_valid(load(path))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_experiment_states_its_hypothesis_and_tags(path: Path) -> None:
    experiment = load(path)
    assert experiment["description"].startswith("Hypothesis")
    assert "meshchaos" in experiment["tags"] and len(experiment["tags"]) >= 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_configuration_defaults_to_the_local_target_and_declares_every_key(path: Path) -> None:
    """``--var`` overrides only keys the experiment declares (chaoslib load_configuration)."""
    config = load(path)["configuration"]
    assert set(config) == CONFIG_KEYS
    # each key reads its MESHCHAOS_<KEY> variable, so --var > environment > default holds
    assert {k: v["key"] for k, v in config.items()} == {k: env_name(k) for k in config}
    assert config["target"] == {"type": "env", "key": "MESHCHAOS_TARGET", "default": "local"}
    # the reference chain, and for the messaging experiments its messaging leg beside it
    dirs = config["meshchaos_manifests"]["default"].split(",")
    assert dirs[0] == "fixtures/k8s" and set(dirs[1:]) <= {"fixtures/broker/k8s"}
    assert all((ROOT / d).is_dir() for d in dirs)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_controls_start_the_mesh_then_safety_then_report(path: Path) -> None:
    controls = load(path)["controls"]
    assert [c["provider"]["module"] for c in controls] == [
        "probes.controls.localmesh", "probes.controls.safety", "probes.controls.report"]
    assert controls[2]["provider"]["arguments"]["experiment_name"] == path.stem


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_rollbacks_always_run_and_remove_this_runs_chaos(path: Path) -> None:
    """chaoslib 1.44 skips rollbacks of failed/interrupted runs unless the strategy is always."""
    experiment = load(path)
    assert experiment["runtime"]["rollbacks"]["strategy"] == "always"
    injects = [a for a in experiment["method"] if a["provider"].get("func") == "apply_chaos"]
    removes = [a for a in experiment["rollbacks"]
               if a["provider"].get("func") == "remove_run_chaos"]
    assert bool(injects) == bool(removes)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_every_python_activity_names_a_public_function_with_those_arguments(path: Path) -> None:
    for activity in activities(load(path)):
        provider = activity["provider"]
        module = importlib.import_module(provider["module"])
        if provider["module"].startswith("probes."):
            assert provider["func"] in module.__all__, provider
        params = inspect.signature(getattr(module, provider["func"])).parameters
        unknown = set(provider.get("arguments", {})) - set(params)
        assert not unknown, f"{activity['name']}: unknown arguments {unknown}"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_chaos_manifests_exist_and_carry_a_duration(path: Path) -> None:
    for activity in load(path)["method"]:
        manifest = activity["provider"].get("arguments", {}).get("manifest")
        if manifest:
            obj = yaml.safe_load((ROOT / "fixtures" / "chaos" / manifest).read_text())
            assert obj["apiVersion"] == "chaos-mesh.org/v1alpha1" and obj["spec"]["duration"]


def _as_runs(experiment: dict[str, Any]) -> dict[str, Any]:
    runs = [{"activity": a, "status": "succeeded",
             "output": {"applied": True, "injected_at": "now"} if a["type"] == "action" else {}}
            for a in experiment["method"]]
    return {"run": runs}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_faults_have_a_baseline_before_and_an_effect_probe_after(path: Path) -> None:
    """The verdict needs both, else the run is INCONCLUSIVE (reports/verdict.py rules 3 and 5)."""
    experiment = load(path)
    phases = [phase for phase, _ in method_probes(_as_runs(experiment))]
    assert "baseline" in phases
    faulted = any(a["type"] == "action" for a in experiment["method"])
    assert ("effect" in phases) == faulted
    # during-method-only where the hypothesis must span the fault (a kill is over at once,
    # but the messages it stranded are judged only after they were redelivered)
    assert experiment["runtime"]["hypothesis"]["strategy"] == DURING.get(path.stem,
                                                                         "after-method-only")


SLOW = {"requests": 8, "statuses": {"504": 8}, "latency_ms": {"p50": 1300.0, "p90": 1310.0,
                                                              "p99": 1320.0, "max": 1320.0}}
HEALTHY = {"requests": 8, "statuses": {"200": 8}, "latency_ms": {"p50": 20.0, "p90": 30.0,
                                                                 "p99": 40.0, "max": 45.0}}


# Their effect is not latency: pods going not Ready, no fault at all, calls flagged FI, a
# consumer replaced, messages missing their deadline.
NOT_LATENCY = ("sidecar-failure", "deadline-headers-audit", "fault-abort-side-hop",
               "consumer-kill-redelivery", "queue-backlog-deadline")
DURING = {"consumer-kill-redelivery": "during-method-only"}


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem not in NOT_LATENCY],
                         ids=[i for i in IDS if i not in NOT_LATENCY])
def test_effect_tolerances_tell_a_felt_fault_from_a_healthy_chain(path: Path) -> None:
    """The JSONPath filters of the effect probes must match a slow run and not a healthy one."""
    experiment = load(path)
    effects = [run["activity"] for phase, run in method_probes(_as_runs(experiment))
               if phase == "effect"]
    assert effects
    for activity in effects:
        tolerance = activity["tolerance"]
        assert within_tolerance(dict(tolerance), {"measurements": SLOW}) is True
        assert within_tolerance(dict(tolerance), {"measurements": HEALTHY}) is False


def test_sidecar_failure_effect_is_the_side_services_pods_going_not_ready() -> None:
    experiment = load(ROOT / "experiments" / "sidecar-failure.json")
    effect = next(run["activity"] for phase, run in method_probes(_as_runs(experiment))
                  if phase == "effect")
    assert effect["provider"]["func"] == "service_pods_ready"
    assert effect["provider"]["arguments"] == {"service": "${side_service}", "ready": False}


def test_fault_abort_effect_is_the_callers_lines_to_the_side_service_flagged_fi() -> None:
    """An abort is answered in the caller's sidecar (docs/fidelity.md §2.4): its outbound
    line ``503 FI`` is the evidence, read from the access log, not from the apps; the fault
    goes on the side service's own route and is put back in the rollbacks."""
    experiment = load(ROOT / "experiments" / "fault-abort-side-hop.json")
    effect = next(run["activity"] for phase, run in method_probes(_as_runs(experiment))
                  if phase == "effect")
    assert (effect["provider"]["module"], effect["provider"]["func"]) == (
        "probes.sidecalls", "flagged_calls")
    assert effect["provider"]["arguments"]["service"] == "${side_service}"
    assert effect["provider"]["arguments"]["flag"] == "FI"
    assert effect["tolerance"] == {"type": "jsonpath", "path": "$.passed", "expect": True}
    action = next(a for a in experiment["method"] if a["type"] == "action")
    assert action["provider"]["func"] == "apply_route_fault"
    assert action["provider"]["arguments"]["virtual_service"] == "${side_service}"
    assert action["provider"]["arguments"]["abort_status"] == 503
    assert [r["provider"]["func"] for r in experiment["rollbacks"]] == ["restore_route_faults"]


SERVICE_NAMES = ("shop", "frontend", "orders", "inventory", "pricing", "ratings")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_no_experiment_names_the_reference_chain_outside_its_defaults(path: Path) -> None:
    """Targets are configuration: an experiment runs unedited against any namespace. The
    chaos templates it applies are named by role too (delay-target.yaml, not
    leaf-delay-pricing.yaml). Only the ``meshchaos`` extension names reference hops: its
    twins are the reference chain's (CHAIN_DEFECT at chain_defect_hop), read by the tests
    and runbooks, never by a run."""
    doc = load(path)
    body = {k: v for k, v in doc.items() if k not in ("configuration", "extensions")}
    text = json.dumps(body)
    assert [n for n in SERVICE_NAMES if n in text] == []


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_each_experiment_names_the_twin_it_must_catch(path: Path) -> None:
    twin = next(e for e in load(path)["extensions"] if e["name"] == "meshchaos")["twin"]
    assert Defect(twin["chain_defect"]) is not Defect.NONE
    assert twin["chain_defect_hop"] in deployments()
