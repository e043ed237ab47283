"""The suite's verdict from journals recorded with real ``chaos run`` (tests/data/journals).

chaostoolkit-lib 1.44 ends a failed injection, a before-hypothesis miss and a SIGTERM
inside a python activity as ``completed`` with exit code 0 (INDEX.json keeps the exit
codes it gave), so the verdict is computed from the journal, never from that status.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reports.errors import JournalError
from reports.model import load_journal
from reports.verdict import Outcome, compute_verdict, injection_confirmed

JOURNALS = Path(__file__).resolve().parents[1] / "data" / "journals"
INDEX: dict[str, dict[str, Any]] = json.loads((JOURNALS / "INDEX.json").read_text())


def journal(name: str) -> dict[str, Any]:
    return load_journal(JOURNALS / f"{name}.json")


@pytest.mark.parametrize("name", sorted(INDEX), ids=sorted(INDEX))
def test_every_recorded_journal_gets_the_verdict_its_scenario_calls_for(name: str) -> None:
    """Each recorded scenario names the verdict meshchaos must reach from its journal."""
    assert compute_verdict(journal(name)).outcome.value == INDEX[name]["expected_verdict"]


def test_chaostoolkit_exit_code_is_zero_for_runs_that_proved_nothing() -> None:
    """The premise: `chaos run` exits 0 on a failed injection, a before miss and SIGTERM."""
    for name in ("inconclusive-injection-failed", "inconclusive-before-miss",
                 "interrupted-sigterm"):
        assert INDEX[name]["exit_code"] == 0 and INDEX[name]["status"] == "completed", name


def test_healthy_run_passes_and_counts_the_checks_after_the_fault() -> None:
    verdict = compute_verdict(journal("pass"))
    assert verdict.outcome is Outcome.PASS
    assert "2 checks passed" in verdict.reason
    assert "injected: inject-leaf-delay" in verdict.notes


def test_orphan_work_fails_with_the_probe_reason_and_the_failing_hop() -> None:
    verdict = compute_verdict(journal("fail-orphan-work"))
    assert verdict.outcome is Outcome.FAIL
    assert "no-orphan-work at pricing" in verdict.reason
    failed = verdict.failed_checks
    assert [(c.name, c.hop, c.phase) for c in failed] == [("no-orphan-work", "pricing", "after")]


def test_failed_injection_is_inconclusive_and_quotes_the_chaos_error() -> None:
    """Chaos Mesh §5.1: no match → "no pod is selected"; nothing was injected, nothing proven."""
    verdict = compute_verdict(journal("inconclusive-injection-failed"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "'inject-leaf-delay' failed" in verdict.reason
    assert "no pod is selected" in verdict.reason
    assert "ActivityFailed" not in verdict.reason


def test_before_hypothesis_miss_is_inconclusive_not_pass() -> None:
    verdict = compute_verdict(journal("inconclusive-before-miss"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.reason.startswith("the steady state did not hold before the fault")


def test_injection_without_all_injected_condition_is_inconclusive() -> None:
    """Chaos Mesh §5.4: AllInjected = records ≠ nil ∧ all Injected; False proves no fault."""
    verdict = compute_verdict(journal("inconclusive-not-all-injected"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "AllInjected=True" in verdict.reason


def test_fault_without_observed_effect_is_inconclusive() -> None:
    verdict = compute_verdict(journal("inconclusive-no-effect"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no observed effect" in verdict.reason and "confirm-leaf-slowed" in verdict.reason


def test_probe_that_could_not_measure_under_the_fault_is_inconclusive_not_fail() -> None:
    verdict = compute_verdict(journal("inconclusive-probe-raised"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "(after) could not measure" in verdict.reason


def test_sigterm_inside_a_python_activity_is_seen_although_chaoslib_says_completed() -> None:
    verdict = compute_verdict(journal("interrupted-sigterm"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "interrupted during 'long-probe'" in verdict.reason


def test_interrupted_run_is_inconclusive() -> None:
    verdict = compute_verdict(journal("interrupted-sigusr1"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.reason == "the run was interrupted before it could conclude"


def test_failed_rollback_turns_a_pass_into_inconclusive() -> None:
    verdict = compute_verdict(journal("inconclusive-rollback-failed"))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "may still be in place" in verdict.reason


def test_baseline_probe_before_the_injection_stands_in_for_the_before_hypothesis() -> None:
    """Hypothesis strategy after-method-only: the method's first probe is the baseline."""
    verdict = compute_verdict(journal("inconclusive-baseline-miss"))
    assert INDEX["inconclusive-baseline-miss"]["deviated"] is True  # chaoslib says deviated
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "did not hold before the fault" in verdict.reason and "baseline-slo" in verdict.reason
    phases = [p.phase for p in verdict.probes]
    assert phases[0] == "baseline" and phases[-1] == "effect"


def test_after_method_only_run_with_a_healthy_baseline_fails_on_the_hypothesis() -> None:
    verdict = compute_verdict(journal("fail-after-method-only"))
    assert verdict.outcome is Outcome.FAIL and "no-orphan-work" in verdict.reason


def test_injection_without_any_effect_probe_is_inconclusive() -> None:
    data = copy.deepcopy(journal("pass"))
    data["run"] = [r for r in data["run"] if r["activity"]["type"] == "action"]
    verdict = compute_verdict(data)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "no effect probe" in verdict.reason


def test_a_failed_apply_chaos_action_is_named_a_fault_injection() -> None:
    data = copy.deepcopy(journal("inconclusive-injection-failed"))
    data["run"][0]["activity"]["provider"].update(module="probes.chaos", func="apply_chaos")
    assert "fault injection 'inject-leaf-delay' failed" in compute_verdict(data).reason


def test_fault_free_experiment_needs_no_effect_probe() -> None:
    data = copy.deepcopy(journal("pass"))
    data["run"] = []
    assert compute_verdict(data).outcome is Outcome.PASS


def test_experiment_without_hypothesis_is_inconclusive() -> None:
    data = copy.deepcopy(journal("pass"))
    data["experiment"]["steady-state-hypothesis"] = {"title": "none", "probes": []}
    assert compute_verdict(data).outcome is Outcome.INCONCLUSIVE


def test_hypothesis_checked_only_during_the_method_is_judged_from_those_runs() -> None:
    """Strategy during-method-only leaves steady_states.after empty; during holds the runs."""
    data = copy.deepcopy(journal("fail-orphan-work"))
    states = data["steady_states"]
    states["during"], states["after"] = [states["after"]], None
    verdict = compute_verdict(data)
    assert verdict.outcome is Outcome.FAIL and "(during the fault)" in verdict.reason


def test_missing_after_hypothesis_is_inconclusive() -> None:
    data = copy.deepcopy(journal("pass"))
    data["steady_states"]["after"] = None
    assert "never checked after the fault" in compute_verdict(data).reason


def test_dry_run_is_inconclusive() -> None:
    data = copy.deepcopy(journal("pass"))
    data["experiment"]["dry"] = "actions"
    assert "dry run" in compute_verdict(data).reason


@pytest.mark.parametrize(("output", "confirmed"), [
    pytest.param({"status": {"conditions": [{"type": "AllInjected", "status": "True"}]}}, True,
                 id="chaos-object"),
    pytest.param({"conditions": {"AllInjected": True}}, True, id="condition-map"),
    pytest.param({"injected": True}, True, id="injected-flag"),
    pytest.param({"applied": True, "injected_at": "2026-11-26T17:40:00+00:00",
                  "dry_run": False, "records": []}, True, id="apply-chaos-result"),
    pytest.param({"applied": False, "injected_at": None, "dry_run": True}, False,
                 id="apply-chaos-dry-run"),
    pytest.param([{"injected": True}, {"injected": False}], False, id="one-of-two-not"),
    pytest.param([], False, id="empty-list"),
    pytest.param(None, False, id="no-output"),
    pytest.param({"status": {"conditions": [{"type": "Selected", "status": "True"}]}}, False,
                 id="only-selected"),
])
def test_injection_is_confirmed_only_by_all_injected_true(output: Any, confirmed: bool) -> None:
    """Chaos Mesh §5.4 conditions[]: status is the string "True"/"False"."""
    assert injection_confirmed(output) is confirmed


def test_a_file_that_is_not_a_journal_is_refused_by_name(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"title": "x"}')
    with pytest.raises(JournalError, match=r"not a Chaos Toolkit journal: missing key\(s\) 'st"):
        load_journal(bogus)
    with pytest.raises(JournalError, match="does not exist"):
        load_journal(tmp_path / "absent.json")
