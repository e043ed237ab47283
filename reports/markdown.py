"""The Markdown summary for chat and tickets: verdict first, checks by hop, then failures."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reports.model import CheckRow
from reports.verdict import Outcome, Verdict

__all__ = ["group_by_hop", "render_markdown"]

_ICON = {Outcome.PASS: "✅", Outcome.FAIL: "❌", Outcome.INCONCLUSIVE: "⚠️"}
_CELL_LIMIT = 120
_NO_HOP = "(whole chain)"


def render_markdown(verdict: Verdict) -> str:
    """Return the Markdown report of a verdict."""
    lines = [f"# {_ICON[verdict.outcome]} {verdict.outcome.value}: {verdict.title}", "",
             f"**Verdict:** {verdict.outcome.value} — {verdict.reason}", "",
             f"Chaos Toolkit status: `{verdict.status}`, deviated: `{verdict.deviated}`"
             f"{_duration(verdict)}", ""]
    lines += _checks_table(verdict.checks)
    lines += _failures(verdict)
    if verdict.notes:
        lines += ["## Run notes", ""] + [f"- {note}" for note in verdict.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def group_by_hop(rows: Iterable[CheckRow]) -> dict[str, list[CheckRow]]:
    """Rows grouped by hop, in first-seen order; checks without a hop go last."""
    groups: dict[str, list[CheckRow]] = {}
    for row in rows:
        groups.setdefault(row.hop or _NO_HOP, []).append(row)
    if _NO_HOP in groups:
        groups[_NO_HOP] = groups.pop(_NO_HOP)
    return groups


def _checks_table(rows: tuple[CheckRow, ...]) -> list[str]:
    if not rows:
        return ["## Checks by hop", "", "No probe recorded a check.", ""]
    out = ["## Checks by hop", "",
           "| hop | phase | probe | check | result | judged | expected | observed |",
           "|---|---|---|---|---|---|---|---|"]
    for hop, group in group_by_hop(rows).items():
        for row in group:
            result = "**FAIL**" if row.result == "FAIL" else row.result
            observed = "; ".join([str(row.observed), *row.notes]) if row.notes else row.observed
            out.append(f"| {_cell(hop)} | {row.phase} | {_cell(row.probe)} | {_cell(row.name)} | "
                       f"{result} | {_cell(row.tally)} | {_cell(row.expected)} | "
                       f"{_cell(observed)} |")
    return [*out, ""]


def _failures(verdict: Verdict) -> list[str]:
    out = ["## What failed and why", ""]
    if verdict.outcome is Outcome.PASS:
        return [*out, "Nothing failed.", ""]
    if verdict.outcome is Outcome.INCONCLUSIVE:
        out += [f"- The run proved nothing: {verdict.reason}", ""]
    for row in verdict.failed_checks:
        where = f" at **{row.hop}**" if row.hop else ""
        out.append(f"- **{row.probe} / {row.name}**{where} ({row.phase}): expected "
                   f"{_cell(row.expected)}, observed {_cell(row.observed)}"
                   + (f" — rule: {row.rule}" if row.rule else ""))
        out += [f"  - evidence: `{_cell(ref)}`" for ref in _evidence(row)]
    for probe in verdict.probes:
        if not probe.passed:
            out.append(f"- probe **{probe.name}** ({probe.phase}): {probe.reason}")
    return [*out, ""]


def _evidence(row: CheckRow, limit: int = 3) -> list[str]:
    refs = [f"trace {t}" for t in row.evidence.get("trace_ids") or []]
    refs += [str(line) for line in row.evidence.get("log_lines") or []]
    return refs[:limit]


def _duration(verdict: Verdict) -> str:
    duration = verdict.meta.get("duration")
    return f", duration: {float(duration):.1f} s" if isinstance(duration, int | float) else ""


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= _CELL_LIMIT else text[: _CELL_LIMIT - 1] + "…"
