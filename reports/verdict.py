"""The suite's own verdict from a journal: PASS, FAIL or INCONCLUSIVE.

Chaos Toolkit's status is not a verdict to trust (chaostoolkit-lib 1.44): a failed
injection action, a before-hypothesis miss or a SIGTERM during a python activity can all
end ``completed`` with exit code 0. So the verdict is computed from the journal alone,
by rules applied in order, the first that matches deciding:

1. the run was ``interrupted``/``aborted``, a signal interrupted an activity (recorded by
   chaoslib as a failed activity), or it was a dry run → INCONCLUSIVE;
2. the experiment has no steady-state hypothesis → INCONCLUSIVE;
3. the steady state did not hold *before* the fault (the before-hypothesis, or a
   *baseline* probe: a method probe with a tolerance placed before the first injection,
   for experiments whose hypothesis runs ``after-method-only`` because some of its probes
   need the fault to measure anything) → INCONCLUSIVE (nothing was proven);
4. a method action failed, or an injection's output does not confirm the Chaos Mesh
   condition ``AllInjected`` → INCONCLUSIVE;
5. a fault was injected but no *effect* probe (a method probe with a tolerance after the
   injection, or in the background) confirmed it had an effect → INCONCLUSIVE;
6. a hypothesis probe raised ("could not measure"), or judged nothing that its hypothesis
   rests on (its output's ``inconclusive``: a rule with no evidence to evaluate, e.g. no
   hop received a budget, is never a pass) → INCONCLUSIVE;
7. the hypothesis was not checked after the method → INCONCLUSIVE;
8. the steady state did not hold during or after the fault → FAIL, with the probe's reason;
9. a rollback failed → INCONCLUSIVE (the fault may still be in place);
10. otherwise → PASS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reports.model import (
    HYPOTHESIS_PHASES,
    CheckRow,
    ProbeRun,
    activity_runs,
    all_runs,
    ensure_journal,
    exception_line,
    is_injection,
    method_probes,
    probe_runs,
    tolerance_met,
)

__all__ = ["Outcome", "Verdict", "compute_verdict", "injection_confirmed"]

_CONDITION = "AllInjected"
_INTERRUPT = "InterruptExecution"


class Outcome(StrEnum):
    """The three verdicts; only PASS lets ``chaos run`` exit 0."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class Verdict:
    """What a report says: the outcome, why, and every probe run behind it."""

    outcome: Outcome
    reason: str
    title: str
    status: str
    deviated: bool
    probes: tuple[ProbeRun, ...]
    notes: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def checks(self) -> tuple[CheckRow, ...]:
        return tuple(row for probe in self.probes for row in probe.checks)

    @property
    def failed_checks(self) -> tuple[CheckRow, ...]:
        return tuple(row for row in self.checks if row.result == "FAIL")

    @property
    def unjudged_checks(self) -> tuple[CheckRow, ...]:
        return tuple(row for row in self.checks if row.result == "not judged")

    def line(self) -> str:
        """The one-line verdict printed at the end of a run."""
        return f"meshchaos verdict: {self.outcome.value}: {self.title}: {self.reason}"


_Rule = Callable[[Mapping[str, Any], list[ProbeRun]], str | None]


def compute_verdict(journal: Mapping[str, Any]) -> Verdict:
    """Judge a Chaos Toolkit journal by the rules of this module's docstring."""
    ensure_journal(journal)
    probes = probe_runs(journal)
    outcome, reason = _judge(journal, probes)
    notes = tuple(_injection_notes(journal)) + tuple(_rollback_notes(journal))
    experiment = journal.get("experiment") or {}
    meta = {key: journal.get(key) for key in ("start", "end", "duration", "node", "platform")}
    return Verdict(outcome=outcome, reason=reason,
                   title=str(experiment.get("title", "untitled experiment")),
                   status=str(journal.get("status")), deviated=bool(journal.get("deviated")),
                   probes=tuple(probes), notes=notes, meta=meta)


def _judge(journal: Mapping[str, Any], probes: list[ProbeRun]) -> tuple[Outcome, str]:
    for rule in _INCONCLUSIVE_FIRST:
        reason = rule(journal, probes)
        if reason:
            return Outcome.INCONCLUSIVE, reason
    faulted = any(is_injection(r) for r in _method_actions(journal))
    failed = _steady_state_failure(probes, faulted)
    if failed:
        return Outcome.FAIL, failed
    rollback = _rollback_failure(journal, probes)
    if rollback:
        return Outcome.INCONCLUSIVE, rollback
    judged = [p for p in probes if p.phase in HYPOTHESIS_PHASES]
    count = sum(row.status != "not judged" for p in judged for row in p.checks)
    unjudged = sum(row.status == "not judged" for p in judged for row in p.checks)
    also = f" ({unjudged} not judged: no evidence for them)" if unjudged else ""
    return Outcome.PASS, (f"the steady state held{' under the fault' if faulted else ''}: "
                          f"{count} checks passed across {len({p.name for p in judged})} "
                          f"probes{also}")


def _interrupted(journal: Mapping[str, Any], _: list[ProbeRun]) -> str | None:
    status = journal.get("status")
    if status in ("interrupted", "aborted"):
        return f"the run was {status} before it could conclude"
    if (journal.get("experiment") or {}).get("dry"):
        return "the run was a dry run: nothing was injected or measured"
    for run in all_runs(journal):
        error = exception_line(run) or ""
        if _INTERRUPT in error:
            # chaoslib 1.44 wraps a SIGTERM raised inside a python activity as a failed
            # activity and carries on, ending "completed": the run was cut short all the same.
            return (f"the run was interrupted during '{_name(run)}' ({error}); chaoslib "
                    "recorded a failed activity and carried on")
    return None


def _no_hypothesis(journal: Mapping[str, Any], probes: list[ProbeRun]) -> str | None:
    hypothesis = (journal.get("experiment") or {}).get("steady-state-hypothesis") or {}
    if not hypothesis.get("probes"):
        return "the experiment has no steady-state hypothesis to judge"
    return None


def _before_missed(journal: Mapping[str, Any], probes: list[ProbeRun]) -> str | None:
    before = (journal.get("steady_states") or {}).get("before")
    missed = isinstance(before, Mapping) and before.get("steady_state_met") is False
    culprit = next((p for p in probes if p.phase in ("before", "baseline") and not p.passed),
                   None)
    if missed or culprit:
        why = f"{culprit.name}: {culprit.reason}" if culprit else "no probe recorded"
        return f"the steady state did not hold before the fault, so nothing was proven ({why})"
    return None


def _injection_failed(journal: Mapping[str, Any], _: list[ProbeRun]) -> str | None:
    for run in _method_actions(journal):
        name = _name(run)
        if run.get("status") != "succeeded":
            what = "fault injection" if is_injection(run) else "method action"
            return f"{what} '{name}' failed: {exception_line(run) or 'no error recorded'}"
        if is_injection(run) and not injection_confirmed(run.get("output")):
            return (f"fault '{name}' was not confirmed injected: its output does not show "
                    f"condition {_CONDITION}=True")
    return None


def _effect_unseen(journal: Mapping[str, Any], _: list[ProbeRun]) -> str | None:
    if not any(is_injection(r) for r in _method_actions(journal)):
        return None
    effects = [run for phase, run in method_probes(journal) if phase == "effect"]
    if not effects:
        return "a fault was injected but no effect probe confirmed it had an effect"
    for run in effects:
        if not tolerance_met(run):
            why = exception_line(run) or _output_reason(run.get("output"))
            return f"the fault had no observed effect: effect probe '{_name(run)}' saw {why}"
    return None


def _probe_raised(_: Mapping[str, Any], probes: list[ProbeRun]) -> str | None:
    culprit = next((p for p in probes if p.raised and p.phase != "effect"), None)
    if culprit:
        return f"probe '{culprit.name}' ({culprit.phase}) {culprit.reason}"
    unjudged = next((p for p in probes if p.inconclusive and p.phase in HYPOTHESIS_PHASES),
                    None)
    if unjudged:
        return (f"probe '{unjudged.name}' ({unjudged.phase}) judged nothing it rests on: "
                f"{unjudged.inconclusive}")
    return None


def _after_missing(journal: Mapping[str, Any], _: list[ProbeRun]) -> str | None:
    states = journal.get("steady_states") or {}
    # during-method-only runs judge the hypothesis while the method runs, never after it.
    if not isinstance(states.get("after"), Mapping) and not states.get("during"):
        return "the steady state was never checked after the fault"
    return None


_INCONCLUSIVE_FIRST: tuple[_Rule, ...] = (
    _interrupted, _no_hypothesis, _before_missed, _injection_failed, _effect_unseen,
    _probe_raised, _after_missing,
)


def _steady_state_failure(probes: list[ProbeRun], faulted: bool) -> str | None:
    culprits = [p for p in probes if p.phase in HYPOTHESIS_PHASES and not p.passed]
    if not culprits:
        return None
    first = culprits[0]
    more = f" (+{len(culprits) - 1} more failing probe runs)" if len(culprits) > 1 else ""
    when = f" ({first.phase} the fault)" if faulted else ""
    return f"the steady state did not hold{when}: {first.reason}{more}"


def _rollback_failure(journal: Mapping[str, Any], _: list[ProbeRun]) -> str | None:
    for run in activity_runs(journal, "rollbacks"):
        if run.get("status") != "succeeded":
            return (f"rollback '{_name(run)}' failed, the fault may still be in place: "
                    f"{exception_line(run) or 'no error recorded'}")
    return None


def injection_confirmed(output: Any) -> bool:
    """True when an injection's output shows Chaos Mesh's ``AllInjected`` condition True.

    Accepted shapes: the result of ``probes.chaos.apply_chaos`` (it returns only once
    Chaos Mesh reported ``AllInjected=True``: ``applied: true`` with ``injected_at`` set,
    never a dry run), the chaos object itself (``status.conditions`` list of
    ``{type, status}``), a dict with ``conditions`` as that list or as ``{type: bool}``,
    a dict with ``injected: true``, or a list of any of these (all must confirm).
    """
    if isinstance(output, list):
        return bool(output) and all(injection_confirmed(item) for item in output)
    if not isinstance(output, Mapping) or output.get("dry_run") is True:
        return False
    if output.get("injected") is True or output.get("all_injected") is True:
        return True
    if output.get("applied") is True and output.get("injected_at"):
        return True
    conditions = output.get("conditions")
    if conditions is None and isinstance(output.get("status"), Mapping):
        conditions = output["status"].get("conditions")
    return _condition_true(conditions)


def _condition_true(conditions: Any) -> bool:
    if isinstance(conditions, Mapping):
        value = conditions.get(_CONDITION)
        return value is True or str(value) == "True"
    if isinstance(conditions, list):
        return any(isinstance(c, Mapping) and c.get("type") == _CONDITION
                   and str(c.get("status")) == "True" for c in conditions)
    return False


def _injection_notes(journal: Mapping[str, Any]) -> list[str]:
    notes: list[str] = []
    for r in _method_actions(journal):
        if r.get("status") == "succeeded" and is_injection(r) \
                and injection_confirmed(r.get("output")):
            notes.append(f"injected: {_name(r)}")
            notes += [f"{_name(r)}: {n}" for n in _output_notes(r.get("output"))]
    return notes


def _output_notes(output: Any) -> list[str]:
    """The notes an injection action returned (``probes.chaos.apply_chaos``'s ``notes``:
    e.g. HTTPChaos's Istio limit on a cluster, docs/fidelity.md §5.5), once each."""
    outputs = output if isinstance(output, list) else [output]
    found: list[str] = []
    for item in outputs:
        if isinstance(item, Mapping) and isinstance(item.get("notes"), list):
            found += [str(n) for n in item["notes"] if str(n) not in found]
    return found


def _rollback_notes(journal: Mapping[str, Any]) -> list[str]:
    return [f"rollback {_name(r)}: {r.get('status')}" for r in activity_runs(journal, "rollbacks")]


def _method_actions(journal: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in activity_runs(journal, "run")
            if (r.get("activity") or {}).get("type") == "action"]


def _name(run: Mapping[str, Any]) -> str:
    return str((run.get("activity") or {}).get("name", "unnamed activity"))


def _output_reason(output: Any) -> str:
    if isinstance(output, Mapping) and output.get("reason"):
        return str(output["reason"])
    return repr(output)[:200]
