"""Read a Chaos Toolkit journal into the rows a report shows.

A journal (chaostoolkit-lib 1.44) holds ``steady_states.{before,after,during}`` with the
runs of the hypothesis probes, ``run`` with the method's runs and ``rollbacks``. Each
meshchaos probe's output is the dict of ``probes/results.py``: ``passed``, ``reason``,
``checks`` [{name, passed, expected, observed, hop, rule, evidence}] and ``traces``.
A probe whose output has no checks (a plain HTTP probe, say) becomes one row judged by
its tolerance, so every probe of the hypothesis shows up in the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaoslib.hypothesis import within_tolerance

from reports.errors import JournalError

__all__ = ["HYPOTHESIS_PHASES", "CheckRow", "ProbeRun", "activity_runs", "all_runs",
           "ensure_journal", "exception_line", "is_injection", "load_journal", "method_probes",
           "probe_runs", "tolerance_met"]

# Phases whose probes carry the hypothesis under the fault (a miss there is a FAIL).
HYPOTHESIS_PHASES = ("during", "after")

# Keys chaoslib always writes; a file without them is not a journal.
_REQUIRED = ("status", "experiment")
_WRAPPER = "chaoslib.exceptions.ActivityFailed:"
_CHAOS_KEYS = frozenset({"applied", "injected", "all_injected", "conditions", "status", "kind"})


@dataclass(frozen=True)
class CheckRow:
    """One check of one probe, as a report row."""

    probe: str
    phase: str
    name: str
    passed: bool
    expected: Any = None
    observed: Any = None
    hop: str | None = None
    rule: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    status: str = ""  # held | failed | not judged (probes.results.Check.verdict)
    counts: Mapping[str, int] = field(default_factory=dict)
    basis: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def result(self) -> str:
        """What a report prints: pass, FAIL, or not judged (the rule had nothing to look at)."""
        if self.status == "not judged":
            return "not judged"
        return "pass" if self.passed else "FAIL"

    @property
    def tally(self) -> str:
        """``evaluated 5 / held 5 / failed 0 / not judged 0 (sidecar)``, or '' without counts."""
        if not self.counts:
            return ""
        basis = f" ({'+'.join(self.basis)})" if self.basis else ""
        return (f"evaluated {self.counts.get('evaluated', 0)} / held {self.counts.get('held', 0)}"
                f" / failed {self.counts.get('failed', 0)} / not judged "
                f"{self.counts.get('not_judged', 0)}{basis}")


@dataclass(frozen=True)
class ProbeRun:
    """One run of a hypothesis probe: its status, its checks, its reason, its traces."""

    name: str
    phase: str
    status: str
    tolerance_met: bool | None
    reason: str
    checks: tuple[CheckRow, ...]
    traces: tuple[Mapping[str, Any], ...] = ()
    exception: str | None = None
    inconclusive: str | None = None  # the probe judged nothing its hypothesis rests on

    @property
    def passed(self) -> bool:
        return self.status == "succeeded" and self.tolerance_met is not False

    @property
    def raised(self) -> bool:
        """True when the probe could not measure (it raised; chaoslib marked it failed)."""
        return self.status != "succeeded"


def load_journal(path: Path) -> dict[str, Any]:
    """Read a journal file; raise :class:`JournalError` naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise JournalError(f"journal '{path}' does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JournalError(f"journal '{path}' is unreadable: {exc}") from exc
    ensure_journal(data, source=str(path))
    return data  # type: ignore[no-any-return]


def ensure_journal(data: Any, *, source: str = "journal") -> None:
    """Raise :class:`JournalError` unless ``data`` has the keys chaoslib writes."""
    if not isinstance(data, dict):
        raise JournalError(f"{source} is not a JSON object (got {type(data).__name__})")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise JournalError(f"{source} is not a Chaos Toolkit journal: missing key(s) "
                           f"{', '.join(repr(k) for k in missing)}")


def exception_line(run: Mapping[str, Any]) -> str | None:
    """The last line of a run's recorded exception (chaoslib stores the formatted traceback)."""
    lines = run.get("exception")
    if not lines:
        return None
    if isinstance(lines, str):
        lines = [lines]
    text = "".join(str(x) for x in lines).strip()
    if not text:
        return None
    last = text.splitlines()[-1].strip()
    # chaoslib wraps every provider error as ActivityFailed: the wrapped one is the news.
    return last.removeprefix(_WRAPPER).strip() or last


def activity_runs(journal: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The runs of ``journal[key]`` (``run`` or ``rollbacks``), flattened and typed."""
    return [r for r in _flatten(journal.get(key) or []) if isinstance(r, Mapping)]


def all_runs(journal: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every recorded run: hypothesis probes of each phase, method, rollbacks."""
    states = journal.get("steady_states") or {}
    runs = [run for _, state in _phase_states(states) for run in state.get("probes") or []
            if isinstance(run, Mapping)]
    return runs + activity_runs(journal, "run") + activity_runs(journal, "rollbacks")


def probe_runs(journal: Mapping[str, Any]) -> list[ProbeRun]:
    """Every judged probe run: hypothesis probes and method probes with a tolerance.

    Phases, in report order: ``baseline`` (a method probe with a tolerance before the
    first fault injection: the steady state the fault starts from),
    ``before``/``during``/``after`` (the hypothesis) and ``effect`` (a method probe
    after the injection, or run in the background: proof the fault was felt).
    """
    states = journal.get("steady_states") or {}
    runs = [_probe_run(run, phase) for phase, state in _phase_states(states)
            for run in state.get("probes") or [] if isinstance(run, Mapping)]
    method = [_probe_run({**run, "tolerance_met": tolerance_met(run)}, phase)
              for phase, run in method_probes(journal)]
    return ([p for p in method if p.phase == "baseline"] + runs
            + [p for p in method if p.phase == "effect"])


def method_probes(journal: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Method probes with a tolerance, each tagged ``baseline`` or ``effect``."""
    tagged: list[tuple[str, Mapping[str, Any]]] = []
    injected = False
    for run in activity_runs(journal, "run"):
        activity = run.get("activity") or {}
        if activity.get("type") == "action" and is_injection(run):
            injected = True
        elif activity.get("type") == "probe" and "tolerance" in activity:
            effect = injected or bool(activity.get("background"))
            tagged.append(("effect" if effect else "baseline", run))
    return tagged


def tolerance_met(run: Mapping[str, Any]) -> bool:
    """Judge a method probe's output by its tolerance, as chaoslib does for the hypothesis.

    chaoslib records no ``tolerance_met`` for method probes, so the report judges them.
    A ``probe``-type tolerance would run an activity while reporting: it counts as unmet.
    """
    if run.get("status") != "succeeded":
        return False
    tolerance = (run.get("activity") or {}).get("tolerance")
    if isinstance(tolerance, Mapping) and tolerance.get("type") == "probe":
        return False
    try:
        return bool(within_tolerance(tolerance, run.get("output")))
    except Exception:  # noqa: BLE001 - a malformed tolerance is an unmet one, never a crash
        return False


def is_injection(run: Mapping[str, Any]) -> bool:
    """A method action that applies a fault: ``probes.chaos.apply_*`` or a chaos-shaped output."""
    provider = (run.get("activity") or {}).get("provider") or {}
    if provider.get("module") == "probes.chaos" and str(provider.get("func", "")).startswith(
            "apply"):
        return True
    output = run.get("output")
    return isinstance(output, Mapping) and bool(_CHAOS_KEYS & set(output))


def _phase_states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    before = states.get("before")
    if isinstance(before, Mapping):
        yield "before", before
    for state in states.get("during") or []:
        if isinstance(state, Mapping):
            yield "during", state
    after = states.get("after")
    if isinstance(after, Mapping):
        yield "after", after


def _flatten(items: Sequence[Any]) -> Iterator[Any]:
    # Background activities may be recorded as nested lists of runs.
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _probe_run(run: Mapping[str, Any], phase: str) -> ProbeRun:
    activity = run.get("activity") or {}
    name = str(activity.get("name", "unnamed probe"))
    output = run.get("output")
    status = str(run.get("status", "failed"))
    tolerance_met = run.get("tolerance_met")
    error = exception_line(run)
    checks = _checks(name, phase, output)
    if not checks:
        checks = (_tolerance_row(name, phase, activity, output, status, tolerance_met, error),)
    traces = tuple(t for t in (output or {}).get("traces") or [] if isinstance(t, Mapping)) \
        if isinstance(output, Mapping) else ()
    inconclusive = output.get("inconclusive") if isinstance(output, Mapping) else None
    return ProbeRun(name=name, phase=phase, status=status,
                    tolerance_met=None if tolerance_met is None else bool(tolerance_met),
                    reason=_reason(output, error, tolerance_met), checks=checks,
                    traces=traces, exception=error,
                    inconclusive=str(inconclusive) if inconclusive else None)


def _checks(probe: str, phase: str, output: Any) -> tuple[CheckRow, ...]:
    if not isinstance(output, Mapping):
        return ()
    rows = []
    for check in output.get("checks") or []:
        if not isinstance(check, Mapping):
            continue
        evidence = check.get("evidence")
        rows.append(CheckRow(
            probe=probe, phase=phase, name=str(check.get("name", "check")),
            passed=bool(check.get("passed")), expected=check.get("expected"),
            observed=check.get("observed"), hop=check.get("hop"),
            rule=str(check.get("rule") or ""),
            evidence=evidence if isinstance(evidence, Mapping) else {},
            status=str(check.get("status") or ""),
            counts={str(k): int(v) for k, v in (check.get("counts") or {}).items()
                    if isinstance(v, int)},
            basis=tuple(str(b) for b in check.get("basis") or ()),
            notes=tuple(str(n) for n in check.get("notes") or ())))
    return tuple(rows)


def _tolerance_row(probe: str, phase: str, activity: Mapping[str, Any], output: Any,
                   status: str, tolerance_met: Any, error: str | None) -> CheckRow:
    passed = status == "succeeded" and tolerance_met is not False
    observed: Any = error if error else _short(output)
    return CheckRow(probe=probe, phase=phase, name="tolerance", passed=passed,
                    expected=activity.get("tolerance"), observed=observed)


def _reason(output: Any, error: str | None, tolerance_met: Any) -> str:
    if error:
        return f"could not measure: {error}"
    if isinstance(output, Mapping) and output.get("reason"):
        return str(output["reason"])
    if tolerance_met is False:
        return f"tolerance not met by {_short(output)}"
    return "ok"


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
